"""Per-operator profiles: the trace parsers on hand-written and recorded traces, and each CPU
backend's profile() on real models."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import rechar.models as models
from rechar.stacks.ort_trace import (UNATTRIBUTED, device_view_refusal, kernel_fits, ort_device_ops, ort_node, ort_ops,
                                     ort_start_on_wall_clock)
from rechar.stacks.tf_trace import tf_ops
from rechar.stacks.torch_trace import torch_ops
from rechar.stacks import BackendOptions, backend_class
from rechar.stacks.base import PROFILE_COLUMNS
from rechar.measure.timing import TimingOptions, time_call

FIXTURES = Path(__file__).parent / "fixtures" / "traces"
RECORDED_ITERATIONS = 3  # fixtures/traces/record.py


def _rows(df):
    """{(native_op, node, layer): (calls, self_us rounded to 1e-6)}."""
    assert list(df.columns) == PROFILE_COLUMNS
    return {(r.native_op, r.node, r.layer): (r.calls, round(r.self_us, 6)) for r in df.itertuples()}


def _write_json(path, content):
    path.write_text(json.dumps(content))
    return path


def _recorded(name):
    return FIXTURES / f"dlrm-rmc1.{name}.gz"


@pytest.fixture(scope="module")
def recorded_graph():
    return json.loads((FIXTURES / "dlrm-rmc1.graph.json").read_text())


# --- PyTorch chrome trace -------------------------------------------------------------------------

def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur, "args": args}


def test_torch_self_time_layers_and_device_time(tmp_path):
    events = [
        {"ph": "M", "name": "thread_name", "pid": 7, "tid": 1, "args": {"name": "main"}},
        {"ph": "i", "s": "g", "name": "Iteration Start: PyTorch Profiler", "pid": "Traces", "tid": "t", "ts": 0},
        _x("Trace", "PyTorch Profiler (0)", -5, 300),
        _x("user_annotation", "ProfilerStep#1", -1, 200),  # not a module range: transparent
        _x("user_annotation", "rechar.module::mlp", 0, 100),
        _x("cpu_op", "profiler::_record_function_enter_new", 1, 1),  # bookkeeping: not an op
        _x("user_annotation", "rechar.module::mlp.0", 5, 55),
        _x("cpu_op", "aten::linear", 10, 40, **{"External id": 1}),
        _x("cpu_op", "aten::t", 12, 2, **{"External id": 2}),
        _x("cpu_op", "aten::transpose", 12.5, 1, **{"External id": 3}),
        _x("cpu_op", "aten::addmm", 20, 25, **{"External id": 4}),
        _x("cuda_runtime", "cudaLaunchKernel", 30, 3, **{"External id": 4, "correlation": 99}),  # stays in addmm
        _x("cpu_op", "aten::relu", 70, 10, **{"External id": 5}),
        _x("cpu_op", "aten::relu", 82, 3, **{"External id": 6}),
        _x("cpu_op", "aten::sigmoid", 110, 5, **{"External id": 7}),
        _x("cpu_op", "aten::addmm", 0, 10, tid=2, **{"External id": 8}),  # another thread, no module
        _x("kernel", "sgemm_128x64", 40, 7, tid=9, **{"External id": 4, "correlation": 99}),
        _x("gpu_memcpy", "Memcpy HtoD", 50, 2, tid=9, **{"External id": 123}),  # links to no op: dropped
        _x("gpu_user_annotation", "rechar.module::mlp.0", 40, 7, tid=9),
    ]
    path = _write_json(tmp_path / "t.json", {"schemaVersion": 1, "traceEvents": events})
    assert _rows(torch_ops(path)) == {
        ("aten::linear", "", "mlp.0"): (1, 13.0),  # 40 - t 2 - addmm 25
        ("aten::t", "", "mlp.0"): (1, 1.0),  # 2 - transpose 1
        ("aten::transpose", "", "mlp.0"): (1, 1.0),
        ("aten::addmm", "", "mlp.0"): (1, 32.0),  # 25 on the host + 7 of its kernel
        ("aten::relu", "", "mlp"): (2, 13.0),
        ("aten::sigmoid", "", ""): (1, 5.0),
        ("aten::addmm", "", ""): (1, 10.0),
    }


def test_torch_recorded_trace():
    ops = torch_ops(_recorded("torch_trace.json"))
    rows = _rows(ops)
    assert rows[("aten::addmm", "", "top_mlp.0")] == (3, 122.263)
    assert rows[("aten::cat", "", "interaction")] == (3, 21.212)
    assert rows[("aten::sigmoid", "", "")] == (3, 10.906)  # the model's own forward: top level
    assert {f"emb.tables.{i}" for i in range(8)} | {"bot_mlp.0", "top_mlp.4", "interaction"} <= set(ops.layer)
    embedding_bag = ops[ops.native_op == "aten::_embedding_bag"]
    assert len(embedding_bag) == 8 and (embedding_bag.calls == 3).all()
    assert ops.self_us.sum() == pytest.approx(2183.233)
    assert (ops.calls % RECORDED_ITERATIONS == 0).all()
    events = [e for e in json.loads(gzip.decompress(_recorded("torch_trace.json").read_bytes()))["traceEvents"]
              if e.get("cat") == "cpu_op"]
    assert ops.self_us.sum() <= max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)


# --- ONNX Runtime profile -------------------------------------------------------------------------

def _ort(name, ts, dur, op_name=None, cat="Node"):
    event = {"cat": cat, "pid": 1, "tid": 1, "ts": ts, "dur": dur, "ph": "X", "name": name, "args": {}}
    if op_name:
        event["args"] = {"op_name": op_name, "provider": "CPUExecutionProvider"}
    return event


def test_ort_node_names_map_back_to_onnx_nodes():
    nodes = {"/a/Gemm": "a.0", "/emb/Gather_3": "emb", "/emb/Gather_31": "emb", "node_linear_1": "mlp.2"}
    assert ort_node("/a/Gemm", nodes) == "/a/Gemm"
    assert ort_node("fused /a/Gemm", nodes) == "/a/Gemm"  # Gemm + activation -> FusedGemm
    assert ort_node("/emb/Gather_31/GatherSliceToSplitFusion", nodes) == "/emb/Gather_31"
    assert ort_node("/emb/Gather_3/GatherSliceToSplitFusion", nodes) == "/emb/Gather_3"
    assert ort_node("fused node_linear_12", nodes) == "fused node_linear_12"  # not node_linear_1's
    assert ort_node("Squeeze_token_2", nodes) == "Squeeze_token_2"  # made by ORT: no origin


def test_ort_keeps_the_last_runs_and_maps_fusions(tmp_path):
    modules = {"/a/Gemm": "a.0", "/b/Gemm": "b.0", "/emb/Gather_3": "emb", "/loop": "rnn"}
    events = [
        _ort("model_loading_uri", 0, 50, cat="Session"),
        _ort("session_initialization", 60, 100, cat="Session"),
        _ort("/a/Gemm_kernel_time", 200, 40, "Gemm"),  # outside any run
        _ort("model_run", 1000, 100, cat="Session"),  # warm-up: dropped with runs=2
        _ort("/a/Gemm_kernel_time", 1010, 500, "Gemm"),
        _ort("model_run", 2000, 100, cat="Session"),
        _ort("SequentialExecutor::Execute", 2001, 98, cat="Session"),
        _ort("/a/Gemm_fence_before", 2005, 1, "Gemm"),
        _ort("/a/Gemm_kernel_time", 2010, 10, "Gemm"),
        _ort("fused /b/Gemm_kernel_time", 2020, 8, "FusedGemm"),
        _ort("/emb/Gather_3/GatherSliceToSplitFusion_kernel_time", 2030, 6, "Split"),
        _ort("Squeeze_token_2_kernel_time", 2040, 2, "Squeeze"),
        _ort("/loop_kernel_time", 2050, 30, "Loop"),
        _ort("body/Add_kernel_time", 2060, 5, "Add"),  # a Loop body node: nested in the Loop's time
        _ort("model_run", 3000, 100, cat="Session"),
        _ort("/a/Gemm_kernel_time", 3010, 12, "Gemm"),
        _ort("fused /b/Gemm_kernel_time", 3030, 9, "FusedGemm"),
    ]
    path = _write_json(tmp_path / "ort.json", events)
    assert _rows(ort_ops(path, modules, runs=2)) == {
        ("Gemm", "/a/Gemm", "a.0"): (2, 22.0),
        ("FusedGemm", "/b/Gemm", "b.0"): (2, 17.0),
        ("Split", "/emb/Gather_3", "emb"): (1, 6.0),
        ("Squeeze", "Squeeze_token_2", ""): (1, 2.0),
        ("Loop", "/loop", "rnn"): (1, 25.0),
        ("Add", "body/Add", ""): (1, 5.0),
    }
    assert _rows(ort_ops(path, modules))[("Gemm", "/a/Gemm", "a.0")] == (3, 522.0)  # all runs
    with pytest.raises(ValueError, match="3 model runs in the trace, expected at least 4"):
        ort_ops(path, modules, runs=4)
    with pytest.raises(ValueError, match="no operator events"):
        ort_ops(_write_json(tmp_path / "empty.json", events[:2]), modules)


def test_ort_device_time_goes_to_the_node_that_launched_it(tmp_path):
    """Kernels (kineto/CUPTI trace, wall clock) go to the ORT node whose host span their launch
    call falls in, once the two clocks are aligned: the clocks' reading is off by 137 µs here, and
    node spans are only microseconds long, so only the searched shift attributes them right."""
    modules = {"/a/Gemm": "a.0", "/emb/Gather": "emb", "/loop": "rnn"}
    runs = []
    for k, t0 in enumerate([1000, 2000, 3000]):  # a warm-up run, then two profiled runs
        runs += [_ort("model_run", t0, 100, cat="Session"),
                 _ort("/emb/Gather_kernel_time", t0 + 10, 6, "Gather"),
                 _ort("fused /a/Gemm_kernel_time", t0 + 20, 8, "FusedGemm"),
                 _ort("/loop_kernel_time", t0 + 40, 30, "Loop"),
                 _ort("body/Add_kernel_time", t0 + 50, 4, "Add")]
    ort_path = _write_json(tmp_path / "ort.json", runs)
    base_ns, ort_start_wall_ns, error_us = 5_000_000_000, 5_000_900_000, 137.0
    wall = lambda ort_ts: (ort_start_wall_ns - base_ns) / 1000 + ort_ts + error_us  # where kineto saw it
    events, correlation = [], 0

    def launched(ort_ts, kernel_us, name="k"):
        nonlocal correlation
        correlation += 1
        events.append(_x("cuda_runtime", "cudaLaunchKernel", wall(ort_ts), 3, correlation=correlation))
        events.append(_x("kernel", name, wall(ort_ts) + 50, kernel_us, tid=9, correlation=correlation))

    for t0 in (2000, 3000):
        launched(t0 + 11, 40.0, "void onnxruntime::cuda::_GatherKernel<float>(long, long, ...)")  # Gather
        launched(t0 + 21, 100.0, "sm90_xmma_gemm_f32f32_tf32f32_f32_nt_n_tilesize64x64x32")  # Gemm: two kernels
        launched(t0 + 25, 20.0, "void cublasLt::splitKreduce_kernel<32, 16, int, float>(...)")
        launched(t0 + 41, 1.0, "void onnxruntime::cuda::LoopCondition(...)")  # the Loop's own kernel (not checked)
        launched(t0 + 51, 7.0, "void onnxruntime::cuda::_BinaryElementWise<float, float, float, OP_Add<float>>(...)")
    launched(2090, 5.0)  # after every node of the run: no node launched it
    events.append(_x("cuda_runtime", "cudaDeviceSynchronize", wall(2095), 4, correlation=999))  # no device work
    device_path = _write_json(tmp_path / "cupti.json", {"baseTimeNanoseconds": base_ns, "traceEvents": events})
    ops, info = ort_device_ops(ort_path, device_path, modules, 2, ort_start_wall_ns)
    assert _rows(ops) == {
        ("Gather", "/emb/Gather", "emb"): (2, 2 * (6 + 40.0)),
        ("FusedGemm", "/a/Gemm", "a.0"): (2, 2 * (8 + 120.0)),
        ("Loop", "/loop", "rnn"): (2, 2 * (26 + 1.0)),
        ("Add", "body/Add", ""): (2, 2 * (4 + 7.0)),
        (UNATTRIBUTED, "", ""): (1, 5.0),
    }
    assert info["device_us"] == 2 * 168 + 5
    assert info["attributed_share"] == pytest.approx(336 / 341)
    assert abs(info["clock_shift_us"] - error_us) <= 1.0
    # the independent checks: the shift agrees with the clocks' reading, and the 4 kernels per run
    # given to nodes of a checked type (Gather, FusedGemm x2, Add; not the Loop's) fit their op
    assert info["clock_agrees"] and info["kernel_name_share"] == 1.0 and info["kernel_names_checked"] == 8
    assert info["kernel_name_misfits"] is None and device_view_refusal(info) is None
    with pytest.raises(ValueError, match="no device activity"):
        ort_device_ops(ort_path, _write_json(tmp_path / "none.json", {"traceEvents": events[:1]}), modules, 2, 0)


def _alternating_runs(tmp_path, clock_error_us: float, period_us: float = 300.0, gather_launch_us: float = 25.0):
    """An ORT CUDA profile of two runs (after a warm-up) of 4 x (Gather, Gemm), one node every
    ``period_us``: each Gather's span is 20 µs but its kernel is launched ``gather_launch_us``
    after the span starts; each Gemm's span is 30 µs, its kernel launched 5 µs in. The kineto
    trace's clock is ``clock_error_us`` off the clocks' reading. Kernels last 10 µs each."""
    modules = {f"/emb/Gather_{i}": "emb" for i in range(4)} | {f"/mlp/Gemm_{i}": f"mlp.{i}" for i in range(4)}
    run_us = 8 * period_us + 100
    nodes, launches = [], []
    for t0 in (1000, 1000 + run_us, 1000 + 2 * run_us):
        nodes.append(_ort("model_run", t0, run_us - 50, cat="Session"))
        for i in range(4):
            g, m = t0 + 2 * i * period_us, t0 + (2 * i + 1) * period_us
            nodes += [_ort(f"/emb/Gather_{i}_kernel_time", g, 20, "Gather"), _ort(f"/mlp/Gemm_{i}_kernel_time", m, 30, "Gemm")]
            if t0 > 1000:  # the warm-up run was not recorded by kineto
                launches += [(g + gather_launch_us, "void onnxruntime::cuda::_GatherKernel<float>(...)"),
                             (m + 5, "ampere_sgemm_32x32_sliced1x4_tn")]
    ort_path = _write_json(tmp_path / "ort.json", nodes)
    events = []
    for correlation, (ort_ts, kernel) in enumerate(launches):
        wall = (ALTERNATING_ORT_START_NS - ALTERNATING_BASE_NS) / 1000 + ort_ts + clock_error_us
        events += [_x("cuda_runtime", "cudaLaunchKernel", wall, 3, correlation=correlation),
                   _x("kernel", kernel, wall + 20, 10.0, tid=9, correlation=correlation)]
    device_path = _write_json(tmp_path / "cupti_trace.json",
                              {"baseTimeNanoseconds": ALTERNATING_BASE_NS, "traceEvents": events})
    return ort_path, modules, ort_device_ops(ort_path, device_path, modules, 2, ALTERNATING_ORT_START_NS)[1]


ALTERNATING_BASE_NS, ALTERNATING_ORT_START_NS = 5_000_000_000, 5_000_900_000  # kineto's base, ORT's start (wall)


def test_ort_wrong_clock_shift_with_a_high_share_is_refused_by_the_independent_checks(tmp_path):
    """The Gathers' kernels are launched just after their (short) host spans end, so at the true
    alignment only the Gemms' half of the device time is matched; shifted by one node period
    (300 µs, either way) every Gemm kernel but the last (first) of a run falls inside a Gather's
    span and every Gather kernel but one inside a Gemm's: 14 of 16 kernels matched. The share
    picks that shift; the clocks' reading (off by 0 here) and the kernel names (gemm kernels on
    Gathers, gather kernels on Gemms) both refuse it."""
    *_, info = _alternating_runs(tmp_path, clock_error_us=0.0)
    assert info["attributed_share"] == pytest.approx(14 / 16)  # against 8 / 16 at the true alignment
    assert abs(info["clock_shift_us"]) == pytest.approx(300.0, abs=5.0)  # the middle of the best range
    assert not info["clock_agrees"] and info["kernel_name_share"] == 0.0 and info["kernel_names_checked"] == 14
    assert "Gather <- ampere_sgemm_32x32_sliced1x4_tn" in info["kernel_name_misfits"]
    refusal = device_view_refusal(info)
    assert "300 µs from the clocks' reading" in refusal and "only 0% of 14 checked kernels" in refusal
    assert "matched a node" not in refusal  # the share alone would have let it through


def test_ort_wrong_shift_within_the_clock_tolerance_is_refused_by_kernel_names(tmp_path):
    """Nodes 120 µs apart: the wrong shift (~120 µs) lies within the clocks' tolerance, so only the
    kernel names can tell; with the Gathers launching inside their spans the true shift wins and
    both checks pass."""
    *_, info = _alternating_runs(tmp_path, clock_error_us=0.0, period_us=120.0)
    assert abs(info["clock_shift_us"]) == pytest.approx(120.0, abs=5.0) and info["clock_agrees"]
    assert info["attributed_share"] == pytest.approx(14 / 16) and info["kernel_name_share"] == 0.0
    assert device_view_refusal(info).startswith("only 0% of 14 checked kernels fit their node's operator")
    *_, info = _alternating_runs(tmp_path, clock_error_us=40.0, period_us=120.0, gather_launch_us=5.0)
    assert info["clock_shift_us"] == pytest.approx(35.25) and info["attributed_share"] == 1.0  # middle of (25, 45]
    assert info["kernel_name_share"] == 1.0 and info["kernel_names_checked"] == 16
    assert device_view_refusal(info) is None


def test_ort_shift_far_from_the_clocks_reading_is_refused_even_when_names_fit(tmp_path):
    """The kineto clock 600 µs off the reading (a clock fault): the search still finds the right
    alignment and every kernel fits its node, but a shift that far from the reading is not
    trusted."""
    *_, info = _alternating_runs(tmp_path, clock_error_us=600.0, gather_launch_us=5.0)
    assert info["clock_shift_us"] == pytest.approx(595.0, abs=1.0) and info["kernel_name_share"] == 1.0
    assert not info["clock_agrees"]
    # every launch lies in its span for shifts in (585, 605]: the middle is taken
    assert device_view_refusal(info) == "the shift that matched most launches is 595 µs from the clocks' reading (tolerance 250 µs)"


def test_ort_cuda_profile_stays_host_side_when_the_attribution_is_refused(tmp_path):
    """The backend's view of the wrong-shift trace: the host-side ops, the checks and the refusal
    recorded with the profile; the right-shift trace keeps its device time."""
    from rechar.stacks.ort_backend import OrtCudaBackend

    backend = OrtCudaBackend(BackendOptions(threads=1))
    backend._clocks_now = (ALTERNATING_ORT_START_NS + 10**8, 10**15)  # ORT's start read on the wall clock
    ort_path, modules, _ = _alternating_runs(tmp_path, clock_error_us=0.0)
    result = backend._parse_profile(ort_path, modules, 2, ALTERNATING_ORT_START_NS, tmp_path)
    assert result.info["time_basis"] == "host" and not result.info["clock_agrees"]
    assert "checked kernels fit their node's operator" in result.info["device_trace_error"]
    assert result.ops["self_us"].sum() == pytest.approx(2 * 4 * (20 + 30))  # host spans only
    ort_path, modules, _ = _alternating_runs(tmp_path, clock_error_us=40.0, gather_launch_us=5.0)
    result = backend._parse_profile(ort_path, modules, 2, ALTERNATING_ORT_START_NS, tmp_path)
    assert result.info["time_basis"] == "host+device" and "device_trace_error" not in result.info
    assert result.ops["self_us"].sum() == pytest.approx(2 * 4 * (20 + 30) + 16 * 10.0)


def test_kernel_names_fit_their_operator():
    assert kernel_fits("Gemm", "sm90_xmma_gemm_f32f32_tf32f32_f32_nt_n_tilesize128x128x32_warpgroupsize1x1x1")
    assert kernel_fits("MatMul", "void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4>(...)")
    assert kernel_fits("FusedMatMul", "nvjet_tst_64x8_64x16_4x1_v_bz_TNT")
    assert kernel_fits("Gather", "void onnxruntime::cuda::_GatherKernel<float>(long, long, ...)")
    assert kernel_fits("Concat", "void onnxruntime::cuda::_ConcatKernel<float, ...>(...)")
    assert not kernel_fits("Gemm", "void onnxruntime::cuda::_GatherKernel<float>(...)")
    assert not kernel_fits("Gather", "ampere_sgemm_32x32_sliced1x4_tn")


def test_ort_profiling_start_is_placed_on_the_wall_clock():
    """ORT's Linux wheels report their profiling start on the wall clock (libstdc++'s
    high_resolution_clock); elsewhere it may be a steady clock: either lands on the wall clock."""
    wall_now, monotonic_now = 1_795_746_282_800_000_000, 22_736_905_131_980
    assert ort_start_on_wall_clock(wall_now - 5_000_000, wall_now, monotonic_now) == wall_now - 5_000_000
    assert ort_start_on_wall_clock(monotonic_now - 5_000_000, wall_now, monotonic_now) == wall_now - 5_000_000


def test_ort_recorded_trace(recorded_graph):
    path = _recorded("ort_trace.json")
    ops = ort_ops(path, recorded_graph["node_modules"], runs=RECORDED_ITERATIONS)
    rows = _rows(ops)
    assert rows[("FusedGemm", "/bot_mlp/bot_mlp.0/Gemm", "bot_mlp.0")] == (3, 28.0)  # Gemm+Relu fused
    assert rows[("FusedGemm", "/top_mlp/top_mlp.4/Gemm", "top_mlp.4")] == (3, 18.0)  # Gemm+Sigmoid fused
    assert rows[("Split", "/emb/Gather_7", "emb")] == (3, 31.0)  # the 8 index Gathers fused
    assert rows[("Gather", "/emb/tables.5/Gather", "emb.tables.5")] == (3, 28.0)
    assert set(ops[ops.layer == ""].native_op) == {"Squeeze"}  # inserted by the Split fusion
    assert ops.self_us.sum() == 611.0 and (ops.calls == 3).all()
    events = json.loads(gzip.decompress(path.read_bytes()))
    runs = sorted((e["ts"], e["dur"]) for e in events if e["name"] == "model_run")
    assert len(runs) == 2 + RECORDED_ITERATIONS  # warm-up runs are in the trace, not in the table
    assert ops.self_us.sum() <= sum(dur for _, dur in runs[-RECORDED_ITERATIONS:])
    assert (ort_ops(path, recorded_graph["node_modules"]).calls == 5).all()


# --- TensorFlow XSpace ----------------------------------------------------------------------------

def _xspace(tmp_path, lines):
    """An XSpace with plane /host:CPU holding ``lines`` ([(name, offset_us, duration_us)] each),
    and a device plane whose events must be ignored."""
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    space = xplane_pb2.XSpace()
    for plane_name, plane_lines in (("/host:CPU", lines), ("/device:GPU:0", [[("gpu/MatMul:MatMul", 0, 99)]])):
        plane = space.planes.add(name=plane_name)
        ids = {}
        for line_events in plane_lines:
            line = plane.lines.add()
            for name, offset_us, duration_us in line_events:
                if name not in ids:
                    ids[name] = len(ids) + 1
                    plane.event_metadata[ids[name]].id = ids[name]
                    plane.event_metadata[ids[name]].name = name
                line.events.add(metadata_id=ids[name], offset_ps=int(offset_us * 1e6),
                                duration_ps=int(duration_us * 1e6))
    path = tmp_path / "t.xplane.pb"
    path.write_bytes(space.SerializeToString())
    return path


def test_tf_scopes_fusions_nesting_and_runtime_events(tmp_path):
    scopes = {"mlp/mlp.0/Gemm": "/mlp/mlp.0/Gemm", "mlp/mlp.1/Relu": "/mlp/mlp.1/Relu",
              "emb/Gather": "/emb/Gather", "emb/Gather_1": "/emb/Gather_1"}
    modules = {"/mlp/mlp.0/Gemm": "mlp.0", "/mlp/mlp.1/Relu": "mlp.1", "/emb/Gather": "emb", "/emb/Gather_1": "emb.t1"}
    path = _xspace(tmp_path, [
        [("ExecutorState::Process", 0, 200),  # runtime events: skipped
         ("EagerLocalExecute: __inference_run_1", 0, 200),
         ("MemoryAllocation", 1, 0),
         ("mlp/mlp.1/Relu/Relu:_MklNativeFusedMatMul", 5, 30),  # MatMul+BiasAdd+Relu, under the Relu
         ("emb/Gather_1/GatherV2:GatherV2", 40, 4),  # scope emb/Gather_1, not emb/Gather
         ("call/PartitionedCall:PartitionedCall", 50, 50),  # a call with a nested op
         ("emb/Gather/GatherV2:GatherV2", 60, 20),
         ("mlp/mlp.1/Relu/Relu:_MklNativeFusedMatMul", 105, 10)],
        [("Func/run/input/_0:_Arg", 1, 2)],  # another thread; outside the scopes
    ])
    assert _rows(tf_ops(path, scopes, modules)) == {
        ("_MklNativeFusedMatMul", "/mlp/mlp.1/Relu", "mlp.1"): (2, 40.0),
        ("GatherV2", "/emb/Gather_1", "emb.t1"): (1, 4.0),
        ("PartitionedCall", "", ""): (1, 30.0),
        ("GatherV2", "/emb/Gather", "emb"): (1, 20.0),
        ("_Arg", "", ""): (1, 2.0),
    }
    with pytest.raises(ValueError, match="no operator events"):
        tf_ops(_xspace(tmp_path, [[("ExecutorState::Process", 0, 200)]]), scopes, modules)


def test_tf_recorded_trace(recorded_graph):
    pytest.importorskip("tensorflow")
    ops = tf_ops(_recorded("tf.xplane.pb"), recorded_graph["scope_to_node"], recorded_graph["node_modules"])
    rows = _rows(ops)
    assert rows[("_MklNativeFusedMatMul", "/bot_mlp/bot_mlp.1/Relu", "bot_mlp.1")] == (3, 68.382)
    assert rows[("_MklNativeFusedMatMul", "/Sigmoid", "")] == (3, 30.546)  # last Gemm + Sigmoid
    assert rows[("GatherV2", "/emb/tables.0/Gather", "emb.tables.0")] == (3, 47.961)
    assert rows[("ConcatV2", "/interaction/Concat", "interaction")] == (3, 8.141)
    assert ops.self_us.sum() == pytest.approx(655.611)
    assert (ops.calls % RECORDED_ITERATIONS == 0).all()


# --- profile() of each CPU backend on real models -----------------------------------------------

LAYERS = {"dlrm-rmc1": [{"bot_mlp.0", "bot_mlp.1"}, {"emb.tables.0"}, {"top_mlp.0", "top_mlp.1"}],
          "din": [{"attention", "attention.mlp.0", "attention.mlp.1"}, {"item_emb"}]}


def _backend(name, model, export):
    reason = backend_class(name).unavailable_reason()
    if reason:
        pytest.skip(f"{name} unavailable here: {reason}")
    backend = backend_class(name)(BackendOptions(threads=1))
    backend.load(model, export)
    return backend


@pytest.mark.parametrize("backend_name", ["torch", "ort-cpu", "tf"])
@pytest.mark.parametrize("model_name", ["dlrm-rmc1", "din"])
def test_profile_attributes_ops_to_layers(tiny_exports, tmp_path, backend_name, model_name):
    model = models.get(model_name, scale="tiny")
    backend = _backend(backend_name, model, tiny_exports[model_name])
    try:
        inputs, iterations = model.make_inputs(16), 10
        # Time first, as a run does: TF's executor stops tracing cheap ops at the default tracer
        # level after ~70 calls, which a profile straight after loading would not show.
        p50_us = float(np.median(time_call(backend.prepare([inputs]), TimingOptions(
            warmup_iters=20, warmup_seconds=0, min_iters=100, min_seconds=0)))) / 1e3
        result = backend.profile([inputs], iterations, tmp_path)
    finally:
        backend.close()
    ops = result.ops
    assert result.iterations == iterations and result.trace_path.parent == tmp_path and result.trace_path.exists()
    assert list(ops.columns) == PROFILE_COLUMNS and not ops.duplicated(["native_op", "node", "layer"]).any()
    for accepted in LAYERS[model_name]:  # fused ops may sit in the activation's module
        assert accepted & set(ops.layer), f"no op in {accepted}: {sorted(set(ops.layer))}"
    assert (ops.calls % iterations == 0).all(), ops[ops.calls % iterations != 0]  # every op runs once per call
    assert (ops.self_us >= 0).all()
    # Profilers add overhead and a shared machine adds outliers: this catches unit slips and
    # ops gone missing, not percent-level errors (the recorded traces pin those).
    per_call_us = ops.self_us.sum() / iterations
    assert 0.1 * p50_us < per_call_us < 10 * p50_us, (per_call_us, p50_us)


def test_torch_profile_leaves_no_hooks(tiny_exports, tmp_path):
    model = models.get("dlrm-rmc1", scale="tiny")
    backend = _backend("torch", model, tiny_exports["dlrm-rmc1"])
    try:
        backend.profile([model.make_inputs(4)], 2, tmp_path)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in backend.model.modules())
    finally:
        backend.close()


# --- compiled stacks: XLA's HLO, Inductor's kernel names, the fusion rule ---------------------------

HLO = """HloModule a_inference_run_87__.5, is_scheduled=true

%fused_computation.2 (param_0: f32[8,32], param_1: s32[8,3]) -> f32[8,3,32] {
  %param_0 = f32[8,32]{1,0} parameter(0)
  %gather.1 = f32[8,3,32]{2,1,0} gather(%param_0, %param_1), offset_dims={2}, metadata={op_type="GatherV2" op_name="emb/tables.0/Gather/GatherV2"}
  ROOT %bitcast = f32[8,3,32]{2,1,0} bitcast(%gather.1)
}

%wrapped_reduce_computation (param_0.31: f32[8,3,32], param_1.96: f32[]) -> f32[8,32] {
  %param_0.31 = f32[8,3,32]{2,1,0} parameter(0)
  ROOT %reduce-window.8 = f32[8,32]{1,0} reduce-window(%param_0.31, %param_1.96), window={size=1x3x1}
}

ENTRY %a_inference_run_87__.5 (arg0.1: s64[8,3]) -> f32[8,2] {
  %arg0.1 = s64[8,3]{1,0} parameter(0), metadata={op_name="XLA_Args"}
  %gather_bitcast_fusion.2 = f32[8,3,32]{2,1,0} fusion(%w, %arg0.1), kind=kLoop, calls=%fused_computation.2, metadata={op_type="GatherV2" op_name="emb/tables.0/Gather/GatherV2"}
  %wrapped_reduce = f32[8,32]{1,0} fusion(%gather_bitcast_fusion.2), kind=kLoop, calls=%wrapped_reduce_computation
  ROOT %dot.3 = (f32[8,2]{1,0}, f32[]) dot(%a, %b), lhs_contracting_dims={1}, metadata={op_type="MatMul" op_name="top_mlp/top_mlp.0/Gemm/MatMul"}
}
"""


def test_xla_instructions_map_hlo_back_to_tf_ops():
    from rechar.stacks.tf_trace import xla_instructions

    ins = xla_instructions(HLO)
    assert ins["dot.3"]["opcode"] == "dot" and ins["dot.3"]["op_name"] == "top_mlp/top_mlp.0/Gemm/MatMul"
    assert ins["gather_bitcast_fusion.2"]["members"] == [("GatherV2", "emb/tables.0/Gather/GatherV2")]
    # an instruction without metadata stands for its opcode (bitcasts and parameters compute nothing)
    assert ins["wrapped_reduce"]["members"] == [("xla::reduce-window", "")]
    assert "arg0.1" in ins and ins["arg0.1"]["op_type"] == ""


def test_tf_function_call_time_is_the_time_no_op_ran_anywhere():
    from rechar.stacks.tf_trace import covered

    ops = sorted([(0.0, 4.0), (2.0, 5.0), (7.0, 8.0), (9.5, 12.0)])  # on several threads, overlapping
    assert covered(ops, 0.0, 10.0) == pytest.approx(5.0 + 1.0 + 0.5)
    assert covered(ops, 3.0, 7.5) == pytest.approx(2.0 + 0.5)
    assert covered(ops, 12.0, 20.0) == 0.0 and covered([], 0.0, 1.0) == 0.0


def test_inductor_kernel_names_and_the_fusion_rule():
    from rechar.taxonomy import categorize, fused_attribution, inductor_kernel_ops

    assert inductor_kernel_ops("cpp_fused__embedding_bag__unsafe_view_arange_clone_select_0") == [
        "aten::_embedding_bag", "aten::_unsafe_view", "aten::arange", "aten::clone", "aten::select"]
    assert inductor_kernel_ops("cpp_fused__softmax_7") == ["aten::_softmax"]
    assert inductor_kernel_ops("aten::addmm") == []
    # the highest-ranked member category decides, in the layer of its first member
    members = [("aten::cat", "attention"), ("aten::embedding", "item_emb"), ("aten::mul", "attention")]
    assert fused_attribution("cpp_fused_cat_embedding_mul", members) == ("embedding", "item_emb")
    assert fused_attribution("Subgraph", [("Gemm", "top_mlp.2"), ("Relu", "top_mlp.3")]) == ("fc", "top_mlp.2")
    # decided by the kernel's name alone (the decomposed softmax): the layer most members ran in
    assert fused_attribution("cpp_fused__softmax_7", [("aten::exp", ""), ("aten::div", "")]) == ("softmax", "")
    # and the layer refines the category as for any op
    classes = {"attention": "ActivationUnit"}
    assert categorize("cpp_fused_relu_view", "", classes, [("aten::relu", "attention.mlp.1")]) == (
        "activation", "attention")
