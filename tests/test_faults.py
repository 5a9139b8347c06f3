"""Sweeps that survive kills, Ctrl-C and bad input without losing or duplicating a result."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

import rechar.models as models
from rechar.errors import UserError
from rechar.exporters import export
from rechar.exporters.graph import check_external_data, check_inputs_match
from rechar.results.store import COUNTERS_LOG, POINTS_LOG, PROFILES_LOG, load_points, read_manifest

SWEEP = ["-m", "ncf,din", "-b", "ort-cpu,torch", "--batch-sizes", "1,2,3", "--scale", "tiny",
         "--min-iters", "3", "--min-seconds", "0.3", "--warmup-seconds", "0", "--quiet"]
EXPECTED_POINTS = 2 * 2 * 3


def with_ctrl_c() -> None:
    """Ctrl-C's default action in the child, as in a terminal: a shell's background job (a CI
    script started with &) ignores SIGINT, which children inherit and Python then leaves off."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def rechar(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rechar.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=with_ctrl_c, **kw)


def log_keys(run_dir: Path) -> Counter:
    lines = (run_dir / POINTS_LOG).read_text().splitlines() if (run_dir / POINTS_LOG).exists() else []
    return Counter((r["model"], r["backend"], r["batch"]) for r in map(json.loads, lines))


def check_complete(run_dir: Path) -> None:
    keys = log_keys(run_dir)  # every line parses
    assert len(keys) == EXPECTED_POINTS and set(keys.values()) == {1}, keys
    points = load_points(run_dir)
    assert len(points) == EXPECTED_POINTS and (points["status"] == "ok").all(), points[["model", "backend", "batch", "status", "error"]]
    assert len(pd.read_parquet(run_dir / "latencies.parquet")) == points["iterations"].sum()
    assert read_manifest(run_dir)["status"] == "complete"


# Where perf is installed, the default suite kills a sweep in the passes' test below (the same
# sweep with more work in it); here, one moment by default only without perf; the others with -m slow.
@pytest.mark.parametrize("seed", [pytest.param(0, marks=pytest.mark.slow if shutil.which("perf") else []),
                                  pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume(tmp_path, seed):
    exports = tmp_path / "exports"
    export("ncf", "tiny", out=exports), export("din", "tiny", out=exports)  # as a user's cache would be
    run_dir = tmp_path / "run"
    delay = random.Random(seed).uniform(2.0, 9.0)
    proc = rechar("run", *SWEEP, "--exports", str(exports), "--out", str(run_dir))
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = log_keys(run_dir)
    assert set(before.values()) <= {1}
    if (run_dir / "manifest.json").exists():
        resumed = rechar("run", "--resume", str(run_dir), "--quiet")
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    else:  # killed before the run folder existed: start again
        assert subprocess.run([sys.executable, "-m", "rechar.cli", "run", *SWEEP, "--exports", str(exports),
                               "--out", str(run_dir)], capture_output=True).returncode == 0
    check_complete(run_dir)
    after = log_keys(run_dir)
    assert all(after[k] == 1 for k in before)  # finished points were kept, not measured again


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    proc = rechar("run", *SWEEP, "--exports", str(tmp_path / "exports"), "--out", str(run_dir), start_new_session=True)
    deadline = time.monotonic() + 120
    while not log_keys(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"resume with: rechar run --resume {run_dir}" in err and "Traceback" not in err
    assert read_manifest(run_dir)["status"] == "interrupted"
    kept = log_keys(run_dir)
    assert kept and set(kept.values()) == {1}
    load_points(run_dir)  # tables parse
    resumed = rechar("run", "--resume", str(run_dir), "--quiet")
    assert resumed.wait(timeout=300) == 0
    check_complete(run_dir)


def test_resume_refuses_a_folder_that_is_not_a_run(run_cli, tmp_path):
    code, _, err = run_cli("run", "--resume", str(tmp_path))
    assert code == 2 and err.strip() == f"error: {tmp_path} is not a run folder (no manifest.json)"


def test_a_new_run_refuses_an_existing_run_folder(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "1", "--scale", "tiny", "--exports",
            str(tmp_path / "e"), "--out", str(run_dir), "--min-iters", "1", "--min-seconds", "0", "--quiet"]
    assert run_cli(*args)[0] == 0
    code, _, err = run_cli(*args)
    assert code == 2 and "already holds a run; continue it with --resume" in err
    assert len(load_points(run_dir)) == 1  # the first run is untouched


def test_unwritable_run_folder(run_cli, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run_cli("run", "-m", "ncf", "-b", "ort-cpu", "--scale", "tiny", "--exports", str(tmp_path / "e"),
                           "--out", str(tmp_path / "file" / "run"))
    assert code == 2 and "cannot create run folder" in err and err.count("\n") == 1


def test_corrupt_onnx_is_detected_and_exported_again(tmp_path):
    first = export("ncf", "tiny", out=tmp_path)
    data = bytearray(first.onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    first.onnx_path.write_bytes(bytes(data))
    messages = []
    again = export("ncf", "tiny", out=tmp_path, log=messages.append, verify_files=True)
    assert not again.cached and any("do not match their recorded sha256" in m for m in messages)
    first.onnx_path.unlink()  # missing: the cache is not valid, it is exported again
    assert not export("ncf", "tiny", out=tmp_path).cached


def test_onnx_whose_inputs_do_not_match_the_model(tiny_exports):
    din_inputs = models.get("din", scale="tiny").make_inputs(2)
    with pytest.raises(UserError, match=r"takes inputs \['user', 'item'\], but the model feeds \['profile'"):
        check_inputs_match(tiny_exports["ncf"].onnx_path, din_inputs)
    shorter = models.get("din", scale="tiny", overrides={"seq_len": 6}).make_inputs(2)
    with pytest.raises(UserError, match=r"input 'history' is int64 \['batch', 8\], but the model feeds int64 \[2, 6\]"):
        check_inputs_match(tiny_exports["din"].onnx_path, shorter)
    check_inputs_match(tiny_exports["din"].onnx_path, din_inputs)  # the right model passes


def _external_model(folder: Path, location: str) -> Path:
    weight = onnx.numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])], [weight])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "secret.bin", tmp_path / "model" / "link.bin")
    path = _external_model(tmp_path / "model", location)
    with pytest.raises(UserError, match="refusing external data location .* outside the model's folder"):
        check_external_data(path)


def test_external_data_inside_the_folder_is_accepted_and_missing_is_named(tmp_path):
    path = _external_model(tmp_path / "m", "weights.bin")
    with pytest.raises(UserError, match="external data file 'weights.bin' of tensor 'w' is missing"):
        check_external_data(path)
    (tmp_path / "m" / "weights.bin").write_bytes(np.ones((2, 2), np.float32).tobytes())
    check_external_data(path)


def test_a_crafted_export_fails_its_points_with_the_reason(tmp_path):
    """A tampered export (manifest hashes updated, data pointing outside) never reaches a runtime."""
    exports = tmp_path / "exports"
    result = export("ncf", "tiny", out=exports)
    graph = onnx.load(str(result.onnx_path))
    tensor = next(t for t in graph.graph.initializer if t.name == "predict_layer.bias")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../../../etc/hostname")
    onnx.save(graph, str(result.onnx_path))
    manifest = json.loads((result.path / "export.json").read_text())
    import hashlib

    manifest["files"]["model.onnx"] = hashlib.sha256(result.onnx_path.read_bytes()).hexdigest()
    manifest["sizes"]["model.onnx"] = result.onnx_path.stat().st_size
    (result.path / "export.json").write_text(json.dumps(manifest))
    from rechar.sweep import RunOptions, run_sweep
    from rechar.measure.timing import TimingOptions

    run_dir = run_sweep(RunOptions(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1], scale="tiny",
                                   exports_dir=str(exports), timing=TimingOptions(min_iters=1, min_seconds=0)),
                        tmp_path / "run")
    point = load_points(run_dir).iloc[0]
    assert point["status"] == "failed" and "resolves outside the model's folder" in point["error"]


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed on this machine")
@pytest.mark.parametrize("seed", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_sigkill_with_profile_and_counter_passes_then_resume(tmp_path, seed):
    """The passes after timing are resumable too: every point ends with exactly one timing, one
    profile and one counts record, whatever moment the sweep was killed at."""
    exports = tmp_path / "exports"
    export("ncf", "tiny", out=exports), export("din", "tiny", out=exports)
    run_dir = tmp_path / "run"
    passes = ["--profile", "--profile-iters", "3", "--counters", "--counter-seconds", "0.1"]
    proc = rechar("run", *SWEEP, *passes, "--exports", str(exports), "--out", str(run_dir))
    try:
        proc.wait(timeout=random.Random(seed).uniform(4.0, 14.0))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if (run_dir / "manifest.json").exists():
        resumed = rechar("run", "--resume", str(run_dir), "--quiet")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    else:
        assert subprocess.run([sys.executable, "-m", "rechar.cli", "run", *SWEEP, *passes, "--exports", str(exports),
                               "--out", str(run_dir)], capture_output=True).returncode == 0
    check_complete(run_dir)
    for log in (PROFILES_LOG, COUNTERS_LOG):
        records = [json.loads(line) for line in (run_dir / log).read_text().splitlines()]
        keys = Counter((r["model"], r["backend"], r["batch"]) for r in records)
        assert len(keys) == EXPECTED_POINTS and set(keys.values()) == {1}, (log, keys)
        assert all(r["status"] == "ok" for r in records), log
