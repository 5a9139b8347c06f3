"""Comparisons a user can trust: contention measured per point, noisy points flagged and
re-measured, repeated interleaved rounds with intervals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from rechar.stacks import BACKENDS
from rechar.measure.timing import TimingOptions
from rechar.results.store import POINTS_LOG, load_points, load_rounds, read_point_log
from rechar.sweep import RunOptions, resume_sweep, run_sweep

TESTS_DIR = Path(__file__).parent
# Windows of at least 0.5 s: /proc/stat counts in 10 ms ticks (rechar.measure.contention).
TIMED = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.5)


def _options(tmp_path, **kw):
    values = dict(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 4], scale="tiny", threads=1,
                  exports_dir=str(tmp_path / "exports"), timing=TIMED)
    values.update(kw)
    return RunOptions(**values)


@pytest.fixture
def burning(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RECHAR_EXTRA_BACKENDS", "burning=fault_backends:BurningBackend")
    monkeypatch.setenv("RECHAR_TEST_BURN_BATCHES", "2,4")
    (tmp_path / "burn").mkdir()
    monkeypatch.setenv("RECHAR_TEST_BURN_DIR", str(tmp_path / "burn"))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setitem(BACKENDS, "burning", "fault_backends:BurningBackend")


def test_points_timed_beside_a_competing_load_are_flagged_and_only_they(tmp_path, burning, run_cli):
    run_dir = run_sweep(_options(tmp_path, backends=["burning"], batch_sizes=[1, 2, 4, 8]), tmp_path / "run")
    points = load_points(run_dir).set_index("batch")
    assert points.loc[[2, 4], "noisy"].tolist() == [True, True], points[["noisy", "others_cpu_share"]]
    assert points.loc[[1, 8], "noisy"].tolist() == [False, False], points[["noisy", "others_cpu_share"]]
    assert (points.loc[[2, 4], "others_cpu_share"] > 0.3).all()
    assert points.loc[2, "noise"].startswith("round 0: other processes used")
    # show, analyze and the report say so
    code, out, _ = run_cli("show", str(run_dir))
    assert code == 0 and "NOISY" in out and "noisy (the machine was busy" in out
    code, out, _ = run_cli("analyze", str(run_dir))
    assert code == 0 and "noisy points" in out
    code, _, err = run_cli("report", str(run_dir), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert "timed while the machine was busy" in html and "<b>noisy</b>" in html


def test_noisy_points_are_measured_again_and_the_quiet_attempt_is_used(tmp_path, burning):
    run_dir = run_sweep(_options(tmp_path, backends=["burning"], batch_sizes=[1, 2, 4], remeasure_noisy=2),
                        tmp_path / "run")
    rounds = load_rounds(run_dir)
    attempts = rounds.groupby("batch")["attempt"].apply(sorted).to_dict()
    assert attempts == {1: [0], 2: [0, 1], 4: [0, 1]}  # the second try was quiet: no third
    first = rounds[rounds["attempt"] == 0].set_index("batch")
    assert first.loc[[2, 4], "noisy"].tolist() == [True, True]
    used = rounds[rounds["used"]].set_index("batch")
    assert used["attempt"].to_dict() == {1: 0, 2: 1, 4: 1} and not used["noisy"].any()
    points = load_points(run_dir)
    assert not points["noisy"].any() and len(points) == 3


def test_a_finished_run_resumed_with_remeasure_noisy_measures_its_noisy_rounds_again(tmp_path, burning, run_cli):
    run_dir = run_sweep(_options(tmp_path, backends=["burning"], batch_sizes=[1, 2, 4]), tmp_path / "run")
    assert load_points(run_dir).set_index("batch")["noisy"].to_dict() == {1: False, 2: True, 4: True}
    code, out, err = run_cli("run", "--resume", str(run_dir), "--remeasure-noisy", "2", "--quiet")
    assert code == 0, err
    rounds = load_rounds(run_dir)
    assert rounds.groupby("batch")["attempt"].apply(sorted).to_dict() == {1: [0], 2: [0, 1], 4: [0, 1]}
    assert not load_points(run_dir)["noisy"].any()  # the quiet attempts are used; the noisy ones kept
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["options"]["remeasure_noisy"] == 2 and manifest["status"] == "complete"


def test_rounds_interleave_and_give_intervals(tmp_path):
    options = _options(tmp_path, backends=["torch", "ort-cpu"], rounds=3,
                       timing=TimingOptions(warmup_iters=2, warmup_seconds=0, min_iters=20, min_seconds=0))
    run_dir = run_sweep(options, tmp_path / "run")
    records = read_point_log(run_dir)
    assert len(records) == 2 * 2 * 3
    order = [(r["round"], r["backend"]) for r in sorted(records, key=lambda r: r["started"])]
    assert [o[0] for o in order] == sorted(o[0] for o in order)  # every round before the next
    assert order[:4] == [(0, "torch"), (0, "torch"), (0, "ort-cpu"), (0, "ort-cpu")]
    points = load_points(run_dir)
    assert len(points) == 4 and (points["rounds"] == 3).all() and (points["ci_method"] == "rounds").all()
    rounds = load_rounds(run_dir)
    for point in points.itertuples():
        mine = rounds[(rounds.backend == point.backend) & (rounds.batch == point.batch)]
        assert sorted(mine["round"]) == [0, 1, 2]
        assert point.p50_us == pytest.approx(float(mine["p50_us"].prod() ** (1 / 3)))
        # the 95% interval over the three rounds, by scipy's t distribution on the log p50s
        logs = np.log(mine["p50_us"].to_numpy())
        low, high = scipy_stats.t.interval(0.95, 2, loc=logs.mean(), scale=logs.std(ddof=1) / np.sqrt(3))
        assert (point.p50_ci_low_us, point.p50_ci_high_us) == pytest.approx((np.exp(low), np.exp(high)))


@pytest.mark.slow  # three rounds, interrupted and resumed: 30 s (resume itself: tests/test_faults.py)
def test_resume_mid_round_measures_each_round_once(tmp_path):
    options = _options(tmp_path, backends=["torch", "ort-cpu"], rounds=3,
                       timing=TimingOptions(warmup_iters=2, warmup_seconds=0, min_iters=5, min_seconds=0))
    run_dir = run_sweep(options, tmp_path / "run")
    lines = (run_dir / POINTS_LOG).read_text().splitlines()
    kept = [line for line in lines if not (json.loads(line)["round"] == 2 or
                                           (json.loads(line)["round"] == 1 and json.loads(line)["backend"] == "ort-cpu"))]
    assert len(kept) == 6
    (run_dir / POINTS_LOG).write_text("".join(line + "\n" for line in kept))
    resume_sweep(run_dir)
    keys = [(r["backend"], r["batch"], r["round"], r["attempt"])
            for r in map(json.loads, (run_dir / POINTS_LOG).read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 12


def test_bad_round_and_noise_options_are_one_line_errors(run_cli):
    for args, message in [(["--rounds", "0"], "--rounds"), (["--remeasure-noisy", "-1"], "--remeasure-noisy"),
                          (["--noisy-others", "0"], "--noisy-others"), (["--noisy-steal", "1.5"], "--noisy-steal")]:
        code, _, err = run_cli("run", "-m", "ncf", "--scale", "tiny", *args)
        assert code == 2 and message in err and "Traceback" not in err


def test_contention_arithmetic():
    from rechar.measure.contention import TICKS_PER_SECOND, NoiseThresholds, Reading, between

    start = Reading(wall=10.0, busy_ticks=0, steal_ticks=0, cpus=2, own_cpu=5.0, own_involuntary=3)
    end = Reading(wall=11.0, busy_ticks=int(1.5 * TICKS_PER_SECOND), steal_ticks=int(0.2 * TICKS_PER_SECOND),
                  cpus=2, own_cpu=6.0, own_involuntary=10)
    w = between(start, end, NoiseThresholds())
    # 2 CPU-seconds of capacity: others took 1.5 - 1.0 = 0.5 (25%), steal 0.2 (10%)
    assert w["others_cpu_share"] == pytest.approx(0.25) and w["steal_share"] == pytest.approx(0.10)
    assert w["involuntary_switches"] == 7 and w["noisy"] is True
    assert "other processes used 25%" in w["noise"] and "stole 10%" in w["noise"]
    quiet = between(start, end, NoiseThresholds(others_share=0.3, steal_share=0.2))
    assert quiet["noisy"] is False and quiet["noise"] is None
    short = Reading(10.1, 10, 0, 2, 5.05, 3)  # a 0.1 s window: too short to tell
    assert between(start, short, NoiseThresholds())["noisy"] is None
