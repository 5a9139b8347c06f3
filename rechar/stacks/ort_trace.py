"""Ops of an ONNX Runtime session's JSON profile (``enable_profiling``), and on the CUDA provider
the device kernels of the same calls, matched to the nodes that launched them."""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from rechar.stacks.tracing import TORCH_DEVICE_CATEGORIES, Span, nest, op_table, read_json

ORT_KERNEL_SUFFIX = "_kernel_time"


def ort_node(ort_name: str, onnx_nodes: dict[str, str]) -> str:
    """The ONNX node an ONNX Runtime node comes from.

    Graph optimisation keeps node names, except for the nodes it creates (seen with ORT 1.32):
    Gemm + activation becomes ``fused <gemm node>``, Gathers/Slices of one tensor become
    ``<one of them>/GatherSliceToSplitFusion`` — the replaced node's name, then ``/`` and the
    fusion. Those map back to that node (the longest ONNX node name before a ``/``). Nodes
    created from nothing, such as the ``Squeeze``, ``Squeeze_token_2``, ... that the Split
    fusion inserts, carry no trace of their origin: they keep ORT's name (and get no layer).
    """
    name = ort_name.removeprefix("fused ")
    if name in onnx_nodes:
        return name
    for cut in range(len(name) - 1, 0, -1):
        if name[cut] == "/" and name[:cut] in onnx_nodes:
            return name[:cut]
    return ort_name


def node_module(node: str, node_modules: dict[str, str]) -> str:
    """The module path of an ONNX node. A node that a rewrite of the exported graph created has
    no annotation of its own (dynamic quantization's ``<node>_quant`` and
    ``<tensor>_DequantizeLinear``, the Gemm rewrite's ``<node>/MatMul``): it takes that of the
    longest annotated node its name starts with, up to a ``/`` or ``_``."""
    if node_modules.get(node):
        return node_modules[node]
    for cut in range(len(node) - 1, 0, -1):
        if node[cut] in "/_" and node_modules.get(node[:cut]):
            return node_modules[node[:cut]]
    return ""


def _module_lookup(node_modules: dict[str, str]) -> Callable[[str], str]:
    return functools.cache(lambda node: node_module(node, node_modules))


def ort_ops(trace: str | Path, node_modules: dict[str, str], runs: int | None = None) -> pd.DataFrame:
    """Ops of an ONNX Runtime profile.

    Each ``Node`` event named ``<node>_kernel_time`` is one call of the (optimised) node, its
    type in ``args.op_name``; its ONNX node comes from ``ort_node`` and its layer from
    ``node_modules`` (ONNX node -> module path, ``rechar.exporters.node_modules``). Only node
    events inside the last ``runs`` ``model_run`` events count (all if None), which drops
    warm-up runs and session setup. Node events nest only under control-flow nodes (Loop, If,
    Scan), whose body nodes are reported too: self time subtracts them. On the CUDA provider
    the durations are host-side (PyPI builds record no GPU kernel events): ``ort_device_ops``
    adds the device time.
    """
    threads = _ort_node_spans(read_json(trace), node_modules, runs, trace)
    module = _module_lookup(node_modules)
    rows = [(s.name, s.node, module(s.node), s.self_us) for spans in threads.values() for s in spans]
    return op_table(rows, trace)


def _ort_node_spans(events: list[dict], node_modules: dict[str, str], runs: int | None,
                    trace: str | Path) -> dict[tuple, list[Span]]:
    """The node events of an ONNX Runtime profile inside its last ``runs`` model runs, per
    thread, nested (self times set)."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    if runs is not None:
        if len(windows) < runs:
            raise ValueError(f"{trace}: {len(windows)} model runs in the trace, expected at least {runs}")
        windows = windows[len(windows) - runs:]
    starts = [start for start, _ in windows]
    resolve = functools.cache(lambda name: ort_node(name, node_modules))
    threads: dict[tuple, list[Span]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(ORT_KERNEL_SUFFIX) or "op_name" not in event.get("args", {}):
            continue
        window = bisect.bisect_right(starts, event["ts"]) - 1
        if window < 0 or event["ts"] >= windows[window][1]:
            continue
        span = Span(event["ts"], event["dur"], event["args"]["op_name"], resolve(name.removesuffix(ORT_KERNEL_SUFFIX)))
        threads[event.get("pid"), event.get("tid")].append(span)
    for spans in threads.values():
        nest(spans)
    return threads


#: Kineto's categories of the host-side CUDA calls that carry the correlation id of the device
#: activity they started.
CUDA_LAUNCH_CATEGORIES = {"cuda_runtime", "cuda_driver"}
#: How far (µs) the alignment of ONNX Runtime's clock to kineto's is searched around the offset
#: read from the two clocks, and in what steps.
ALIGN_WINDOW_US, ALIGN_STEP_US = 2000.0, 0.5
#: The row of device time that no node's launch explains.
UNATTRIBUTED = "unattributed device time"
#: Below this share of its device time matched to nodes, an ORT CUDA profile stays host-side.
MIN_ATTRIBUTED_SHARE = 0.5
#: How far (µs) the chosen shift may lie from the clocks' reading. Both readings are of the wall
#: clock (ORT's start converted by ``ort_start_on_wall_clock``, kineto's base time); what
#: separates them is the clocks' read-out and kineto's conversion of its timestamps, microseconds
#: to tens of microseconds. A shift further off matched launches to nodes by the pattern of the
#: spans (a run repeats the same nodes), not by time: the share it maximises cannot tell.
CLOCK_TOLERANCE_US = 250.0
#: Below this share of the checked kernels named like their node's operator, the attribution is
#: taken to be wrong (a wrong shift hands gemm kernels to Gathers and gather kernels to Gemms).
MIN_KERNEL_NAME_SHARE = 0.8
#: ONNX operator types -> what the names of the CUDA kernels they launch contain (lower case).
#: cuBLAS names its GEMM/GEMV kernels after the routine ({ampere,sm90}_sgemm..., gemv2T_kernel,
#: gemmSN..., splitKreduce after a split-K GEMM, cutlass/xmma tensor-core kernels, nvjet on
#: Hopper; dot_kernel and reduce_1Block_kernel when a one-column GEMM becomes a dot product);
#: ONNX Runtime's own kernels are named after the op (_GatherKernel, _ConcatKernel,
#: _BinaryElementWise, _UnaryElementWise). Operator types not listed are not checked.
ORT_OP_KERNEL_NAMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(["Gemm", "FusedGemm", "MatMul", "FusedMatMul"],
                    ("gemm", "gemv", "cutlass", "xmma", "nvjet", "splitkreduce", "dot_kernel", "reduce_1block_kernel")),
    **dict.fromkeys(["Gather", "GatherElements", "GatherND"], ("gather", "index")),
    "Concat": ("concat",),
    **dict.fromkeys(["Add", "Sub", "Mul", "Div"], ("elementwise",)),
    **dict.fromkeys(["Relu", "Sigmoid", "Tanh"], ("elementwise", "relu", "sigmoid", "tanh")),
}


def ort_device_ops(ort_trace: str | Path, device_trace: str | Path, node_modules: dict[str, str],
                   runs: int | None, ort_start_wall_ns: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Ops of an ONNX Runtime profile on CUDA with the device time of each node's kernels.

    ``device_trace``: PyTorch's profiler trace (kineto, CUPTI) recorded over the same runs in the
    same process; it holds every kernel, copy and set with its correlation id, and the host-side
    runtime call (``cudaLaunchKernel``, ...) with the same id. A device activity belongs to the
    node whose host-side span its launch call falls in (the innermost, for control flow): ONNX
    Runtime launches a node's kernels from inside that node's event. The two traces use different
    clocks: ``ort_start_wall_ns`` is ONNX Runtime's profiling start on kineto's wall clock, good to
    some microseconds; the shift that puts the most launches inside node spans, searched within
    ``ALIGN_WINDOW_US`` of it, aligns them. A node's self_us is its host self time plus its
    device time, as ``torch_ops`` counts a torch-cuda op; device time launched outside any node is
    one ``UNATTRIBUTED`` row. Also returns: the device time in all, the share of it attributed,
    the shift chosen against the clocks' reading (µs), and two checks of that shift that do not
    rely on the share it maximises: whether it agrees with the clocks' reading
    (``clock_agrees``: within ``CLOCK_TOLERANCE_US``) and the share of kernels, among those
    attributed to nodes of a type in ``ORT_OP_KERNEL_NAMES``, named like their node's operator
    (``kernel_name_share``, None when no kernel could be checked; ``kernel_names_checked``;
    ``kernel_name_misfits``: a few misfits, "op <- kernel"). ``device_view_refusal`` judges them.
    """
    events = read_json(ort_trace)
    threads = _ort_node_spans(events, node_modules, runs, ort_trace)
    spans = sorted((s for ss in threads.values() for s in ss), key=lambda s: (s.start, -s.dur))
    device = read_json(device_trace)
    base_ns = int(device.get("baseTimeNanoseconds", 0))
    device_us: dict[Any, float] = defaultdict(float)
    launches: dict[Any, float] = {}
    kernels: dict[Any, str] = {}  # correlation -> kernel name (copies and sets have none to check)
    for event in device.get("traceEvents", []):
        if event.get("ph") != "X" or "dur" not in event:
            continue
        correlation = event.get("args", {}).get("correlation")
        if correlation is None:
            continue
        if event.get("cat") in TORCH_DEVICE_CATEGORIES:
            device_us[correlation] += event["dur"]
            if event.get("cat") == "kernel":
                kernels[correlation] = event.get("name", "")
        elif event.get("cat") in CUDA_LAUNCH_CATEGORIES:
            launches[correlation] = event["ts"]
    total = float(sum(device_us.values()))
    if not total:
        raise ValueError(f"{device_trace}: no device activity recorded (CUPTI)")
    # The kineto time of ORT's ts 0, from the clocks; then the best shift near it.
    nominal = (ort_start_wall_ns - base_ns) / 1000.0
    launch_ts = np.array([launches[c] for c in device_us if c in launches], dtype=float)
    starts = np.array([s.start for s in spans], dtype=float)
    ends = np.array([s.end for s in spans], dtype=float)
    shift = nominal + _best_shift(launch_ts - nominal, starts, ends)
    reach = np.maximum.accumulate(ends) if len(ends) else ends
    attributed = 0.0
    unattributed = total
    fits, misfits = 0, []
    for correlation, us in device_us.items():
        if correlation not in launches:
            continue
        span = _innermost(spans, starts, reach, launches[correlation] - shift)
        if span is not None:
            span.self_us += us
            attributed += us
            if correlation in kernels and span.name in ORT_OP_KERNEL_NAMES:
                if kernel_fits(span.name, kernels[correlation]):
                    fits += 1
                else:
                    misfits.append(f"{span.name} <- {kernels[correlation]}")
    unattributed -= attributed
    module = _module_lookup(node_modules)
    rows = [(s.name, s.node, module(s.node), s.self_us) for s in spans]
    if unattributed > 0:
        rows.append((UNATTRIBUTED, "", "", unattributed))
    checked = fits + len(misfits)
    return op_table(rows, ort_trace), {
        "device_us": total, "attributed_share": attributed / total, "clock_shift_us": float(shift - nominal),
        "clock_agrees": bool(abs(shift - nominal) <= CLOCK_TOLERANCE_US),
        "kernel_name_share": fits / checked if checked else None, "kernel_names_checked": checked,
        "kernel_name_misfits": "; ".join(sorted(set(misfits))[:3]) or None}


def kernel_fits(op_type: str, kernel: str) -> bool:
    """Whether a CUDA kernel's name is one that a node of ``op_type`` launches (ORT_OP_KERNEL_NAMES)."""
    name = kernel.lower()
    return any(part in name for part in ORT_OP_KERNEL_NAMES[op_type])


def device_view_refusal(info: dict[str, Any]) -> str | None:
    """Why an ORT CUDA profile's device attribution (``ort_device_ops``'s info) is not to be
    trusted, or None: too little device time matched a node, the chosen shift disagrees with the
    clocks' reading, or the kernels matched to nodes are not the kernels those operators launch."""
    reasons = []
    if info["attributed_share"] < MIN_ATTRIBUTED_SHARE:
        reasons.append(f"only {info['attributed_share']:.0%} of the device time matched a node")
    if not info["clock_agrees"]:
        reasons.append(f"the shift that matched most launches is {info['clock_shift_us']:.0f} µs from the clocks' "
                       f"reading (tolerance {CLOCK_TOLERANCE_US:.0f} µs)")
    share = info["kernel_name_share"]
    if share is not None and share < MIN_KERNEL_NAME_SHARE:
        reasons.append(f"only {share:.0%} of {info['kernel_names_checked']} checked kernels fit their node's "
                       f"operator (e.g. {info['kernel_name_misfits']})")
    return "; ".join(reasons) or None


def ort_start_on_wall_clock(start_ns: int, wall_now_ns: int, monotonic_now_ns: int) -> int:
    """ONNX Runtime's profiling start (``get_profiling_start_time_ns``) on the wall clock that
    kineto uses. ORT reads ``std::chrono::high_resolution_clock``, which is the wall clock with
    libstdc++ (its Linux wheels: seen on the GPU machine) and a steady clock with other standard
    libraries: the reading is taken as whichever clock's "now" it lies nearer to."""
    if abs(wall_now_ns - start_ns) <= abs(monotonic_now_ns - start_ns):
        return start_ns
    return start_ns + wall_now_ns - monotonic_now_ns


def _best_shift(times: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> float:
    """The shift d within +-ALIGN_WINDOW_US for which most ``times - d`` fall inside some span
    [start, end): the middle of the range of such shifts (the one nearest 0 if several)."""
    if not len(times) or not len(starts):
        return 0.0
    order = np.argsort(starts)
    starts, reach = starts[order], np.maximum.accumulate(ends[order])  # latest end of spans begun so far
    shifts = np.arange(-ALIGN_WINDOW_US, ALIGN_WINDOW_US + ALIGN_STEP_US / 2, ALIGN_STEP_US)
    counts = np.empty(len(shifts), dtype=int)
    for k, d in enumerate(shifts):
        t = times - d
        i = np.searchsorted(starts, t, side="right") - 1
        counts[k] = np.count_nonzero((i >= 0) & (t < reach[np.maximum(i, 0)]))
    best = counts == counts.max()
    edges = np.flatnonzero(np.diff(np.concatenate(([0], best.astype(int), [0]))))  # [first, after last) per range
    ranges = [(shifts[a], shifts[b - 1]) for a, b in zip(edges[::2], edges[1::2])]
    low, high = min(ranges, key=lambda r: 0.0 if r[0] <= 0 <= r[1] else min(abs(r[0]), abs(r[1])))
    return float((low + high) / 2)


def _innermost(spans: list[Span], starts: np.ndarray, reach: np.ndarray, t: float) -> Span | None:
    """The latest-starting span that contains ``t`` (spans sorted by start; ``reach[i]``: the
    latest end among spans[:i + 1], which bounds the walk back)."""
    i = int(np.searchsorted(starts, t, side="right")) - 1
    while i >= 0 and reach[i] > t:
        if t < spans[i].end:
            return spans[i]
        i -= 1
    return None
