"""Corrections to a run's records (annotations.json): applied on read by the analysis, listed by
the report, never written into the logs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from rechar.analysis import analyze
from rechar.analysis.ops import load_ops, profile_time_basis, read_profiles
from rechar.errors import UserError
from rechar.report import write_report
from rechar.analysis.corrections import corrections
from rechar.results.annotations import ANNOTATIONS, apply_to_records, matches, read_annotations
from rechar.results.store import load_points, load_rounds
from rechar.serving.trials import load_trials

REPO = Path(__file__).parent.parent
H200_RUN = REPO / "reports" / "runs" / "gpu-h200" / "gpu"  # a committed run folder (no traces)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def h200_run(tmp_path):
    run_dir = tmp_path / "gpu"
    shutil.copytree(H200_RUN, run_dir, ignore=shutil.ignore_patterns("logs", "specs"))
    return run_dir


def test_the_analysis_reads_corrected_values_and_the_logs_stay_raw(h200_run, tmp_path):
    before_points = load_points(h200_run).set_index(["model", "backend", "batch"])
    before_ops = load_ops(h200_run)
    raw = {name: _digest(h200_run / name) for name in ("points.jsonl", "profiles.jsonl")}
    (h200_run / ANNOTATIONS).write_text(json.dumps([
        {"match": {"log": "points", "model": "ncf", "backend": "torch-cuda", "batch": [1, 16]},
         "set": {"noisy": True, "noise": "a GPU job of another user ran alongside (seen in its scheduler log)"},
         "why": "the machine was shared while NCF was timed on torch-cuda at batch 1 and 16"},
        {"match": {"log": "profiles", "model": "ncf", "backend": "torch-cuda", "batch": 1},
         "set": {"iterations": 10},
         "why": "the profiler ran 10 iterations, not the 5 recorded"},
        {"match": {"log": "profiles", "model": "wnd", "backend": "ort-cuda"},
         "set": {"time_basis": "host+device"},
         "why": "a planted correction: these five profiles read as device-inclusive"},
        {"match": {"log": "points", "model": "din"}, "set": {"noisy": True}, "why": "no DIN point in this run"},
    ]))
    points = load_points(h200_run).set_index(["model", "backend", "batch"])
    # the two NCF torch-cuda points at batch 1 and 16 read as noisy, with the note; others as before
    assert points.loc[("ncf", "torch-cuda", 1), "noisy"] is True and points.loc[("ncf", "torch-cuda", 16), "noisy"] is True
    assert "another user" in points.loc[("ncf", "torch-cuda", 1), "noise"]
    changed = [k for k in points.index if points.loc[k, "noisy"] != before_points.loc[k, "noisy"]]
    assert sorted(changed) == [("ncf", "torch-cuda", 1), ("ncf", "torch-cuda", 16)]
    assert (points["p50_us"].fillna(-1) == before_points["p50_us"].fillna(-1)).all()
    assert load_rounds(h200_run).query("model == 'ncf' and backend == 'torch-cuda' and batch == 1")["noisy"].eq(True).all()
    # per-iteration op times of the re-counted profile halve (5 -> 10 iterations): 5312.684 µs in all
    ops = load_ops(h200_run)
    point = lambda o: o.query("model == 'ncf' and backend == 'torch-cuda' and batch == 1")["self_us_per_iter"].sum()
    assert point(before_ops) == pytest.approx(5312.684 / 5) and point(ops) == pytest.approx(5312.684 / 10)
    assert len(ops) == len(before_ops)
    basis = profile_time_basis(h200_run).set_index(["backend", "time_basis"])["points"]
    assert basis[("ort-cuda", "host+device")] == 5 and basis[("ort-cuda", "host")] == 20  # of 25 ort-cuda profiles
    # the logs are byte for byte as written
    assert {name: _digest(h200_run / name) for name in raw} == raw
    fixes = corrections(h200_run)
    assert fixes["records"].tolist() == [2, 1, 5, 0]  # the DIN one matches nothing: shown, so a typo is seen
    assert fixes.loc[0, "match"] == 'model="ncf", backend="torch-cuda", batch=[1, 16]'
    assert fixes.loc[1, "set"] == "iterations=10"
    tables = analyze([h200_run])
    assert tables["corrections"]["why"].tolist()[1] == "the profiler ran 10 iterations, not the 5 recorded"
    html = write_report([h200_run], tmp_path / "r.html").read_text()
    assert "Corrections applied to run" in html and "annotations.json" in html
    assert "the profiler ran 10 iterations, not the 5 recorded" in html and "iterations=10" in html


def test_the_committed_h200_run_carries_its_correction_as_an_annotation():
    """The H200 run's ort-cuda profiles: the records read host-side through the annotation."""
    fixes = corrections(H200_RUN)
    assert set(fixes["log"]) == {"profiles"} and fixes["records"].sum() == 25, fixes
    profiles = [r for r in read_profiles(H200_RUN) if r["backend"] == "ort-cuda"]
    assert len(profiles) == 25 and {r["time_basis"] for r in profiles} == {"host"}


def test_trials_of_a_serving_run_are_corrected_on_read(tmp_path):
    run_dir = tmp_path / "serve"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": "s", "kind": "serve", "schema_version": 2,
                                                       "host": {"hostname": "h"}}))
    base = {"run_id": "s", "model": "ncf", "backend": "torch", "offload": "", "policy": "b4x1", "status": "ok"}
    (run_dir / "trials.jsonl").write_text("".join(json.dumps({**base, "trial": t, "scenario": s, "p99_ms": p}) + "\n"
                                                  for t, s, p in [(0, "offline", None), (1, "server", 8.0)]))
    (run_dir / ANNOTATIONS).write_text(json.dumps([{"match": {"log": "trials", "policy": "b4x1", "trial": 1},
                                                    "set": {"p99_ms": 9.5}, "why": "re-read from LoadGen's log"}]))
    trials = load_trials(run_dir)
    assert trials["p99_ms"].tolist()[1] == 9.5 and pd.isna(trials["p99_ms"].tolist()[0])
    assert corrections(run_dir)["records"].tolist() == [1]


def test_matching_compares_numbers_as_numbers_and_lists_as_any_of():
    assert matches({"log": "points", "batch": 1, "backend": ["torch", "ort-cpu"]}, {"batch": 1.0, "backend": "ort-cpu"})
    assert not matches({"log": "points", "batch": 1}, {"batch": 2, "backend": "torch"})
    assert not matches({"log": "points", "noisy": 1}, {"noisy": True})  # a flag is not a number
    assert not matches({"log": "points", "precision": "int8"}, {"batch": 1})  # a field the record lacks
    records = [{"model": "ncf", "batch": 1, "p50_us": 5.0}, {"model": "ncf", "batch": 2, "p50_us": 6.0}]
    assert apply_to_records(records, Path("/nonexistent"), "points") is records  # no annotations: as read


@pytest.mark.parametrize("content, message", [
    ('{"match": {}}', "must hold a list of annotations"),
    ('[{"match": {"log": "points"}, "set": {"noisy": true}}]', "annotation 1 must have exactly the keys match, set and why"),
    ('[{"match": {"log": "latencies"}, "set": {"noisy": true}, "why": "x"}]', "match.log must be one of points, profiles, trials"),
    ('[{"match": {"log": "points"}, "set": {}, "why": "x"}]', "set must give at least one field"),
    ('[{"match": {"log": "points"}, "set": {"batch": 2}, "why": "x"}]', "set may not change batch"),
    ('[{"match": {"log": "points"}, "set": {"noisy": true}, "why": " "}]', "why must say what was wrong"),
    ('[{"match": ', "is unreadable"),
])
def test_bad_annotations_are_one_line_errors(tmp_path, run_cli, content, message):
    (tmp_path / ANNOTATIONS).write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_annotations(tmp_path)


def test_the_cli_reports_a_bad_annotation_in_one_line(h200_run, run_cli, tmp_path):
    (h200_run / ANNOTATIONS).write_text('[{"match": {"log": "points"}, "set": {"model": "x"}, "why": "x"}]')
    code, _, err = run_cli("report", str(h200_run), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "set may not change model" in err and len(err.strip().splitlines()) == 1


def test_a_taxonomy_change_recategorizes_a_runs_cached_operator_table(h200_run, monkeypatch):
    """ops.parquet caches the categories of the taxonomy that wrote it: when the taxonomy changes
    (a rule fixed after the run), reading the run categorizes its profiles again, in memory,
    and leaves the cached file as it was."""
    from rechar import taxonomy

    ops = load_ops(h200_run)  # written now, under today's taxonomy
    assert (ops["op_category"] == "fc").any()
    cached = _digest(h200_run / "ops.parquet")
    assert load_ops(h200_run).equals(ops)  # same taxonomy: the cache as written
    # a planted change of the table: FC ops become "other"
    monkeypatch.setattr(taxonomy, "OP_CATEGORY", {k: ("other" if v == "fc" else v)
                                                  for k, v in taxonomy.OP_CATEGORY.items()})
    again = load_ops(h200_run)
    assert not (again["op_category"] == "fc").any() and (again["op_category"] == "other").sum() > (
        ops["op_category"] == "other").sum()
    assert _digest(h200_run / "ops.parquet") == cached  # the committed cache is not rewritten
