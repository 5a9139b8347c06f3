"""Backends, the correctness gate, the timing statistics, the results store, and faults."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow.parquet as pq
import pytest

import rechar.models as models
from rechar.errors import UserError
from rechar.exporters import export
from rechar.stacks import BACKENDS, BackendOptions, backend_class, select_backends
from rechar.measure.timing import TimingOptions, summarize, time_call
from rechar.results.store import LATENCIES, POINT_COLUMNS, POINTS, load_points, read_manifest, read_point_log
from rechar.measure.gate import GATE_ATOL
from rechar.sweep import RunOptions, run_sweep

FAST = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0)
CPU_BACKENDS = ["torch", "torch-compile", "ort-cpu", "openvino", "tf", "tf-xla"]
CUDA_BACKENDS = ["torch-cuda", "torch-compile-cuda", "ort-cuda", "ort-cuda-graph", "ort-trt"]
TESTS_DIR = Path(__file__).parent
#: Models whose interaction concatenates more tensors than ONNX Runtime's CUDA graph capture takes.
CUDA_GRAPH_REFUSED = {"dlrm-rmc2", "mt-wnd"}


def _available(name):
    reason = backend_class(name).unavailable_reason()
    if reason:
        pytest.skip(f"{name} unavailable here: {reason}")


#: The compiling CPU stacks take 5-15 s a model: by default they are checked on one model of each
#: family (as tests/test_profiles.py profiles them), on every model with -m slow; every sweep's
#: parity gate checks whatever model it times in any case.
COMPILED_BY_DEFAULT = {"dlrm-rmc1", "dlrm-dcnv2", "din", "dien", "hstu"}


def _stack_model_pairs():
    for name in models.names():
        for backend in CPU_BACKENDS + CUDA_BACKENDS:
            slow = backend in ("torch-compile", "tf-xla") and name not in COMPILED_BY_DEFAULT
            yield pytest.param(name, backend, id=f"{name}-{backend}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize(("name", "backend"), list(_stack_model_pairs()))
def test_backend_matches_eager_pytorch(tiny_exports, backend, name):
    _available(backend)
    model = models.get(name, scale="tiny")
    reference = models.get(name, scale="tiny")  # the same weights, left on the CPU (torch-cuda moves model)
    b = backend_class(backend)(BackendOptions(threads=1))
    if backend == "ort-cuda-graph":
        try:  # the capture is tried at load: only the models known to exceed ORT's limits may be refused
            b.load(model, tiny_exports[name])
        except RuntimeError as e:
            assert name in CUDA_GRAPH_REFUSED and str(e).startswith(
                "ONNX Runtime cannot capture this graph as a CUDA graph: ") and "\n" not in str(e), (name, e)
            return
    else:
        b.load(model, tiny_exports[name])
    try:
        for batch in (5,) if "compile" in backend else (1, 16, 37):  # a compile per batch size
            # (ort-cuda-graph: a captured graph per batch size; each pool batch copied into its inputs)
            pool = [model.make_inputs(batch, seed=5, member=i) for i in range(3)]
            call = b.prepare(pool)
            for feed in pool + pool[:1]:  # each batch in turn, then back to the first
                np.testing.assert_allclose(b.outputs(call()), reference.predict(feed), atol=GATE_ATOL)
    finally:
        b.close()


class _CaptureSession:
    """An ONNX Runtime session stand-in whose ``fail_at``-th run fails as a refused capture does."""

    def __init__(self, fail_at: int | None):
        self.fail_at, self.runs = fail_at, 0

    def run(self):
        self.runs += 1
        if self.runs == self.fail_at:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA Concat supports at most 32 inputs during CUDA "
                               "Graph capture\nStacktrace: ...")


def test_cuda_graph_refusal_is_found_at_load_by_trying_the_capture(tiny_exports):
    """The capture is tried at load (a regular run, the capture, a replay), and ONNX Runtime's
    failure becomes one line; a graph it captures passes (on the GPU: test_backend_matches_eager_pytorch)."""
    from rechar.stacks.ort_backend import CAPTURE_PROBE_RUNS, _check_cuda_graph_capture, _probe_inputs

    inputs = _probe_inputs(tiny_exports["dlrm-rmc2"])
    assert {k: v.shape[0] for k, v in inputs.items()} == {k: 1 for k in inputs}  # batch 1 of the model's inputs
    sessions = []

    def probe(fail_at):
        sessions.append(_CaptureSession(fail_at))
        _check_cuda_graph_capture(lambda: sessions[-1], lambda session, feed: session.run, inputs)

    probe(None)
    assert sessions[-1].runs == CAPTURE_PROBE_RUNS == 3
    for fail_at in (2, 3):  # the capture itself, or its first replay
        with pytest.raises(RuntimeError) as refused:
            probe(fail_at)
        assert str(refused.value) == ("ONNX Runtime cannot capture this graph as a CUDA graph: RuntimeError: "
                                      "[ONNXRuntimeError] : 1 : FAIL : CUDA Concat supports at most 32 inputs during "
                                      "CUDA Graph capture")
    with pytest.raises(RuntimeError, match="cannot capture this graph as a CUDA graph: RuntimeError: no CUDA provider"):
        _check_cuda_graph_capture(lambda: (_ for _ in ()).throw(RuntimeError("no CUDA provider")), None, inputs)


def test_time_call_honours_warmup_and_minimums():
    calls = []
    lat = time_call(lambda: calls.append(1), TimingOptions(warmup_iters=7, warmup_seconds=0, min_iters=20, min_seconds=0))
    assert lat.size == 20 and len(calls) == 27 and (lat > 0).all()
    lat = time_call(lambda: None, TimingOptions(warmup_iters=0, warmup_seconds=0, min_iters=1, min_seconds=0.05, max_iters=10**9))
    assert lat.size > 100  # ran for at least 50 ms


class _SlowCalls:
    """A clock that only the call advances, by one second a call: a point whose calls take 1 s."""

    def __init__(self):
        self.now_ns, self.calls = 0, 0

    def perf_counter_ns(self):
        return self.now_ns

    def call(self):
        self.calls += 1
        self.now_ns += 1_000_000_000


@pytest.mark.parametrize("budget, warmups, timed", [
    (None, 10, 50),  # no budget: every minimum holds
    (5.0, 5, 10),  # warm-up stops at the 5th second (after >= 2 calls); timing at 5 s would leave 5, so 10
    (20.0, 10, 20),  # warm-up's 10 calls fit; timing stops at 20 s, below the 50 calls asked
    (100.0, 10, 50),  # a budget wider than the minimums changes nothing
    (0.5, 2, 10),  # the floors: 2 warm-up calls, 10 timed ones
])
def test_time_budget_bounds_slow_points(monkeypatch, budget, warmups, timed):
    import rechar.measure.timing as timing

    clock = _SlowCalls()
    monkeypatch.setattr(timing, "time", clock)
    options = TimingOptions(warmup_iters=10, warmup_seconds=0.2, min_iters=50, min_seconds=0.5, max_seconds=budget)
    timing.warm_up(clock.call, options)
    assert clock.calls == warmups
    lat = timing.timed_loop(clock.call, options)
    assert lat.size == timed and (lat == 1_000_000_000).all()


def test_time_budget_below_the_minimum_is_refused():
    with pytest.raises(UserError, match=r"time budget per point \(0.5 s\) is below its minimum timed seconds \(1 s\)"):
        TimingOptions(min_seconds=1.0, max_seconds=0.5).validate()


@pytest.mark.parametrize("requested, call_seconds, budget, want", [
    (20, 10.0, 30.0, 3),  # 3 calls fill the budget
    (20, 2.0, 30.0, 15),
    (20, 0.005, 30.0, 20),  # fast points: as requested
    (20, 100.0, 30.0, 3),  # never fewer than 3
    (2, 100.0, 30.0, 2),  # nor more than requested
    (20, 10.0, None, 20),  # no budget (runs from before it)
    (20, None, 30.0, 20),  # latency unknown
])
def test_profile_pass_fits_the_time_budget(requested, call_seconds, budget, want):
    from rechar.sweep.worker import profile_iterations

    assert profile_iterations(requested, call_seconds, budget) == want


def test_runs_from_before_the_budget_resume_without_one():
    from rechar.sweep.options import RunOptions

    old = RunOptions.from_dict({"timing": {"warmup_iters": 10, "warmup_seconds": 0.2, "min_iters": 50, "min_seconds": 1.0}})
    assert old.timing.max_seconds is None
    assert RunOptions.from_dict({"timing": {"max_seconds": 12.0}}).timing.max_seconds == 12.0
    assert RunOptions().timing.max_seconds == 30.0


def test_summarize():
    lat_ns = np.arange(1, 101, dtype=np.int64) * 1000  # 1..100 us
    s = summarize(lat_ns, batch=10)
    assert s["iterations"] == 100 and s["min_us"] == 1 and s["max_us"] == 100
    assert s["p50_us"] == pytest.approx(50.5) and s["p99_us"] == pytest.approx(99.01)
    assert s["mean_us"] == pytest.approx(50.5) and s["std_us"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["throughput_sps"] == pytest.approx(10 / 50.5e-6)
    assert s["timed_seconds"] == pytest.approx(5050e-6)


def _sweep(tmp_path, **kw):
    opts = dict(models=["ncf"], backends=["ort-cpu"], batch_sizes=[1, 4], scale="tiny", timing=FAST,
                exports_dir=str(tmp_path / "exports"), threads=1)
    opts.update(kw)
    return run_sweep(RunOptions(**opts), tmp_path / "run")


def test_results_round_trip_and_schema(tmp_path):
    run_dir = _sweep(tmp_path, backends=["torch", "ort-cpu"], batch_sizes=[1, 4, 9])
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["schema_version"] == 2
    assert manifest["options"]["batch_sizes"] == [1, 4, 9] and manifest["configs"]["ncf"]["mlp"] == [256, 256, 128, 64]
    assert {"cpu", "logical_cores", "memory_bytes", "gpus"} <= set(manifest["host"])
    assert {"python", "torch", "onnxruntime", "rechar"} <= set(manifest["software"])
    points = load_points(run_dir)
    assert list(points.columns) == POINT_COLUMNS + ["host"]
    assert len(points) == 6 and (points["status"] == "ok").all()
    assert (points["p50_us"] <= points["p99_us"]).all() and (points["min_us"] <= points["p50_us"]).all()
    assert (points["iterations"] >= 5).all()
    assert (points["inputs"] == "fresh").all() and (points["pool_batches"] >= 2).all()
    assert (points["pool_distinct_rows"] > 0).all() and (points["cache_bytes"] > 0).all()
    # the same seed gives the same inputs in every backend
    assert points.groupby("batch")["input_hash"].nunique().eq(1).all()
    latencies = pd.read_parquet(run_dir / LATENCIES)
    counts = latencies.groupby(["backend", "batch"]).size()
    for r in points.itertuples():
        assert counts[(r.backend, r.batch)] == r.iterations
        lat = latencies[(latencies.backend == r.backend) & (latencies.batch == r.batch)]["latency_us"]
        assert np.median(lat) == pytest.approx(r.p50_us)
    for name in (POINTS, LATENCIES):
        assert pq.read_schema(run_dir / name).metadata[b"rechar.schema_version"] == b"2"
    assert json.loads(points.loc[0, "settings"])["threads"] == 1


def test_peak_rss_is_the_workers_own(tmp_path):
    """A worker spawned by a sweep that holds 1.5 GB reports its own peak, not the sweep's (Linux
    carries ru_maxrss over exec, so that figure would read at least 1.5 GB)."""
    held = np.ones(1_500_000_000 // 8)  # touched: resident in this (the sweep's) process
    run_dir = _sweep(tmp_path, batch_sizes=[4])
    [point] = load_points(run_dir).to_dict("records")
    assert held[-1] == 1.0
    assert 50e6 < point["peak_rss_bytes"] < 1.2e9  # ONNX Runtime, numpy and a tiny model, far below 1.5 GB


def test_an_added_pass_builds_pytorchs_weights_only_where_the_stack_runs_them(tmp_path, monkeypatch):
    """A pass added to a run (here a profile, as for counters and the simulation) needs PyTorch's
    weights on torch only, and there rebuilds them with the export's recorded calibration: the
    model is never run outside the stack (minutes under Valgrind). The worker runs in-process."""
    from rechar.results.store import PROFILES_LOG, read_log
    from rechar.sweep import worker

    run_dir = _sweep(tmp_path, backends=["ort-cpu", "torch"], batch_sizes=[4])
    built = []
    real_get = models.get
    monkeypatch.setattr(models.RecModel, "predict", lambda *a, **k: pytest.fail("the model ran outside the stack"))
    monkeypatch.setattr(models, "get", lambda *a, **k: built.append(k.get("calibration")) or real_get(*a, **k))
    for backend in ("ort-cpu", "torch"):
        spec = worker.WorkerSpec.read(str(run_dir / "specs" / f"ncf__{backend}.json"))
        spec.mode, spec.profile_iters, spec.parent_pid = "profile", 2, 0
        worker.run(spec)
    assert len(built) == 1 and built[0]["scale"] > 0  # torch's, from the export's record; none for ort-cpu
    profiled = {(r["backend"], r["status"]) for r in read_log(run_dir, PROFILES_LOG)}
    assert profiled == {("ort-cpu", "ok"), ("torch", "ok")}


def test_inputs_are_the_same_across_runs(tmp_path):
    a = load_points(_sweep(tmp_path / "a"))
    b = load_points(_sweep(tmp_path / "b"))
    assert list(a["input_hash"]) == list(b["input_hash"])
    hashes = read_manifest(tmp_path / "a" / "run")["input_hashes"]
    assert hashes == read_manifest(tmp_path / "b" / "run")["input_hashes"]
    assert set(hashes["ncf"]) == {"1", "4"} and all(len(h) == 16 for h in hashes["ncf"].values())
    c = load_points(_sweep(tmp_path / "c", seed=1))
    assert list(a["input_hash"]) != list(c["input_hash"])


def test_newer_schema_is_refused(tmp_path):
    run_dir = _sweep(tmp_path, batch_sizes=[1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="newer rechar"):
        load_points(run_dir)


def test_gate_catches_a_perturbed_model(tmp_path):
    exports = tmp_path / "exports"
    export("ncf", "tiny", out=exports)  # as the sweep's cache holds it
    onnx_path = exports / "ncf" / "tiny" / "model.onnx"
    graph = onnx.load(str(onnx_path))
    bias = next(t for t in graph.graph.initializer if t.name == "predict_layer.bias")
    value = onnx.numpy_helper.to_array(bias) + 0.5
    bias.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), bias.name))
    onnx.save(graph, str(onnx_path))
    # Record the new hash, as a tampered export would, so that the cache trusts it and the run
    # reaches the gate with a model that really differs from PyTorch.
    manifest_path = onnx_path.parent / "export.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    manifest["sizes"]["model.onnx"] = onnx_path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    # every stack that runs the ONNX export is caught
    onnx_backends = [b for b in ("ort-cpu", "openvino", "tf-xla") if not backend_class(b).unavailable_reason()]
    points = load_points(_sweep(tmp_path, exports_dir=str(exports), backends=[*onnx_backends, "torch"]))
    onnx_points = points[points.backend.isin(onnx_backends)]
    assert set(onnx_points["backend"]) == set(onnx_backends) and (onnx_points["status"] == "invalid").all()
    assert (onnx_points["max_abs_error"] > 0.01).all() and onnx_points["p50_us"].isna().all()
    assert onnx_points["error"].str.contains("differ from eager PyTorch").all()
    assert (points[points.backend == "torch"]["status"] == "ok").all()


def test_gate_catches_a_compiler_that_computes_something_else(tmp_path, fault_backends):
    """torch.compile compiles the eager model itself: a compiled artefact whose weights differ
    (as a miscompile would) is caught by the gate."""
    points = load_points(_sweep(tmp_path, backends=["perturbed-compile"], batch_sizes=[4]))
    assert list(points["status"]) == ["invalid"] and points["max_abs_error"].iloc[0] > 0.01


@pytest.mark.slow  # two compiles of a model: 25 s
def test_compiled_stack_records_compile_time_and_reuses_its_cache(tmp_path):
    exports = str(tmp_path / "exports")
    first = load_points(_sweep(tmp_path / "a", backends=["torch-compile"], batch_sizes=[4], exports_dir=exports))
    second = load_points(_sweep(tmp_path / "b", backends=["torch-compile"], batch_sizes=[4], exports_dir=exports))
    assert list(first["compile_cache_hit"]) == [False] and list(second["compile_cache_hit"]) == [True]
    assert (first["compile_seconds"] > 0).all() and (second["compile_seconds"] > 0).all()
    # compiling is never part of a latency: every timed call is far shorter than the compile
    assert (first["max_us"] / 1e6 < first["compile_seconds"]).all()


@pytest.fixture
def fault_backends(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    extra = {n: f"fault_backends:{c}" for n, c in
             [("crashing", "CrashingBackend"), ("raising", "RaisingBackend"), ("hanging", "HangingBackend"),
              ("perturbed-compile", "PerturbedCompileBackend")]}
    monkeypatch.setenv("RECHAR_EXTRA_BACKENDS", ",".join(f"{k}={v}" for k, v in extra.items()))
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    for k, v in extra.items():
        monkeypatch.setitem(BACKENDS, k, v)


def test_a_crashing_worker_is_recorded_and_the_sweep_goes_on(tmp_path, fault_backends):
    run_dir = _sweep(tmp_path, backends=["crashing", "ort-cpu"], batch_sizes=[1, 4, 8])
    points = load_points(run_dir).set_index(["backend", "batch"])
    assert points.loc[("crashing", 1), "status"] == "ok"  # finished before the crash: kept
    for batch in (4, 8):
        assert points.loc[("crashing", batch), "status"] == "failed"
        assert "signal SIGSEGV" in points.loc[("crashing", batch), "error"]
    assert (points.loc["ort-cpu", "status"] == "ok").all()
    assert read_manifest(run_dir)["status"] == "complete"


def test_a_framework_exception_fails_one_point(tmp_path, fault_backends):
    points = load_points(_sweep(tmp_path, backends=["raising"], batch_sizes=[1, 4, 8])).set_index("batch")
    assert list(points["status"]) == ["ok", "failed", "ok"]
    assert points.loc[4, "error"] == "RuntimeError: out of memory while allocating 1 PB"


def test_a_hung_worker_times_out(tmp_path, fault_backends):
    points = load_points(_sweep(tmp_path, backends=["hanging", "ort-cpu"], batch_sizes=[1], timeout=15))
    by_backend = points.set_index("backend")
    assert by_backend.loc["hanging", "status"] == "timeout"
    assert "no point finished within the 15 s timeout" in by_backend.loc["hanging", "error"]
    assert by_backend.loc["ort-cpu", "status"] == "ok"
    assert len(read_point_log(tmp_path / "run")) == 2


def test_unavailable_backends(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorflow" else real(n, *a))
    with pytest.raises(UserError, match=r"backend tf is not available: TensorFlow is not installed \(pip install"):
        select_backends(["tf"])
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="backend torch-cuda is not available: no CUDA device"):
        select_backends(["torch-cuda"])
    with pytest.raises(UserError, match="backend ort-cuda is not available"):
        select_backends(["ort-cuda"])
    chosen, skipped = select_backends([])  # the default set
    assert chosen == ["torch", "ort-cpu"]
    assert set(skipped) == set(BACKENDS) - {"torch", "ort-cpu"} and all(skipped.values())
    assert "opt-in" in skipped["torch-compile"] and "no CUDA device" in skipped["torch-compile-cuda"]
    chosen, skipped = select_backends(["all"])
    assert chosen == [b for b in ("torch", "torch-compile", "ort-cpu", "openvino") if b in chosen]
    assert {"torch", "ort-cpu", "torch-compile"} <= set(chosen)
    assert {"torch-cuda", "ort-cuda", "tf", "tf-xla"} <= set(skipped) and "opt-in" not in " ".join(skipped.values())
    with pytest.raises(UserError, match="unknown backend 'mxnet'"):
        select_backends(["mxnet"])


def test_unavailable_compiled_stacks_say_why(monkeypatch, run_cli):
    import importlib.util
    import shutil

    real_which, real_find = shutil.which, importlib.util.find_spec
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name in ("g++", "c++") else real_which(name, *a, **kw))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real_find(n, *a))
    for backend, message in [("torch-compile", "no C++ compiler"), ("openvino", "OpenVINO is not installed")]:
        with pytest.raises(UserError, match=re.escape(f"backend {backend} is not available: {message}")):
            select_backends([backend])
        code, out, err = run_cli("run", "-b", backend, "-m", "ncf", "--scale", "tiny")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_run_cli_end_to_end_and_errors(run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("run", "-m", "ncf", "-b", "ort-cpu", "--batch-sizes", "2,3", "--scale", "tiny",
                                "--exports", str(tmp_path / "e"), "--out", str(out), "--min-iters", "3",
                                "--min-seconds", "0", "--warmup-seconds", "0", "--quiet")
    assert code == 0, err
    assert "ort-cpu" in stdout and f"results: {out}" in stdout
    code, stdout, _ = run_cli("show", str(out))
    assert code == 0 and "ncf" in stdout and "ok" in stdout
    for args, message in [
        (["run", "-b", "torch-cuda", "-m", "ncf"], "backend torch-cuda is not available"),
        (["run", "--batch-sizes", "0"], "batch sizes must be positive"),
        (["run", "--batch-sizes", "-1"], "batch sizes must be positive"),
        (["run", "--batch-sizes", "abc"], "not a comma-separated list of integers"),
        (["run", "--batch-sizes", ""], "batch sizes must be positive"),
        (["run", "-m", "bert"], "unknown model 'bert'"),
        (["show", str(tmp_path)], "is not a run folder"),
    ]:
        if "torch-cuda" in args and not backend_class("torch-cuda").unavailable_reason():
            continue  # a GPU is present: that backend is available
        code, _, err = run_cli(*args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_prefault_makes_mapped_weights_resident(tmp_path):
    """Weights a framework memory-maps from the export folder (ONNX Runtime's external data) are
    made resident before timing; mappings of files elsewhere are left alone."""
    import psutil

    from rechar.memory import prefault_mappings

    (tmp_path / "export").mkdir()
    (tmp_path / "other").mkdir()
    size = 64 << 20
    for folder in ("export", "other"):
        np.ones(size // 8).tofile(tmp_path / folder / "model.onnx.data")
    weights = np.memmap(tmp_path / "export" / "model.onnx.data", dtype=np.float64, mode="r")
    elsewhere = np.memmap(tmp_path / "other" / "model.onnx.data", dtype=np.float64, mode="r")
    process = psutil.Process()
    before = process.memory_info().rss
    assert prefault_mappings(tmp_path / "export") == size
    grown = process.memory_info().rss - before
    assert 0.9 * size < grown < 1.5 * size  # the export's 64 MB came in, not the other file's
    assert weights[-1] == 1 and elsewhere[0] == 1
