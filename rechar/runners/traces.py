"""Parsers for the frameworks' own profiler traces, one function per trace format.

Each turns a raw trace into the tidy table a backend's ``profile()`` returns (``PROFILE_COLUMNS``):
one row per (native_op, node, layer) with the number of calls and the total SELF time in
microseconds, i.e. an op's time minus the time of the ops it called, so that rows add up
without double counting (``aten::linear`` keeps its own few µs, ``aten::addmm`` inside it the
rest). Events a parser does not know are ignored; a trace without any op event is an error.

- ``torch_ops``: the chrome trace of ``torch.profiler`` (``export_chrome_trace``), of eager or
  Inductor-compiled PyTorch.
- ``ort_ops``: the JSON profile of an ONNX Runtime session (``enable_profiling``).
- ``tf_ops``: the XSpace protobuf (``*.xplane.pb``) of ``tf.profiler.experimental``.

They live with the backends, not in rechar.analysis: a backend hands over its profile already
parsed into rows, so that imports run one way down the pipeline (analysis reads only the rows).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rechar.runners.base import PROFILE_COLUMNS

#: Calls a backend runs before starting the profiler (first calls allocate, compile, fill caches).
PROFILE_WARMUP = 2
#: Name prefix of the ranges the torch backend opens around each module's forward.
TORCH_MODULE_PREFIX = "rechar.module::"
#: Chrome-trace categories of device activity that kineto links to the op that launched it.
TORCH_DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
ORT_KERNEL_SUFFIX = "_kernel_time"


@dataclasses.dataclass(eq=False)
class _Span:
    """One event on one thread: an op (counted) or a labelled range such as a module (not)."""

    start: float
    dur: float
    name: str  # the native op, or the range's label
    node: str = ""  # the ONNX node an op ran for
    is_op: bool = True
    self_us: float = 0.0  # set by _nest
    within: str = ""  # name of the innermost enclosing range, set by _nest
    members: tuple = ()  # a fused kernel's (native op, node, layer) members
    graph: str | None = None  # the compiled graph an Inductor kernel belongs to

    @property
    def end(self) -> float:
        return self.start + self.dur


def _nest(spans: list[_Span]) -> None:
    """Self time of each op (its duration minus its child ops') and its innermost enclosing range,
    from how the spans of ONE thread nest in time. A child counts as nested when it starts
    inside its parent (rounded timestamps may let it end a hair later)."""
    stack: list[_Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.dur)):  # parents before their children
        while stack and stack[-1].end <= span.start:
            stack.pop()
        if span.is_op:
            span.self_us += span.dur
            parent = next((s for s in reversed(stack) if s.is_op), None)
            if parent is not None:
                parent.self_us -= span.dur
            span.within = next((s.name for s in reversed(stack) if not s.is_op), "")
        stack.append(span)


def _table(rows: list[tuple], trace: str | Path) -> pd.DataFrame:
    """(native_op, node, layer, self_us[, members]) per call -> one row per (native_op, node,
    layer, members)."""
    if not rows:
        raise ValueError(f"{trace}: no operator events in the trace")
    df = pd.DataFrame([(*r, ()) if len(r) == 4 else r for r in rows],
                      columns=["native_op", "node", "layer", "self_us", "members"])
    df["self_us"] = df["self_us"].clip(lower=0.0)  # rounding can leave a parent a hair below 0
    out = df.groupby(["native_op", "node", "layer", "members"], as_index=False).agg(
        calls=("self_us", "size"), self_us=("self_us", "sum"))
    return out.sort_values("self_us", ascending=False, ignore_index=True)[PROFILE_COLUMNS]


def _read_bytes(path: str | Path) -> bytes:
    """A trace file's content; ``.gz`` files are decompressed (the test fixtures are)."""
    data = Path(path).read_bytes()
    return gzip.decompress(data) if str(path).endswith(".gz") else data


def _read_json(path: str | Path) -> Any:
    return json.loads(_read_bytes(path))


#: Inductor's kernels as its kernel profiling names them: ``graph_<id>_<kernel>``.
_INDUCTOR_EVENT = re.compile(r"graph_(\d+)_((?:cpp|triton)_\w+)$")
#: Triton kernels on a CUDA device, as the device trace names them.
_TRITON_KERNEL = re.compile(r"triton_(?:poi|red|per|tem)_fused_\w+$")
#: Ranges of the compiled-code runtime whose names carry ids or hashes: name prefix -> short name.
_TORCH_RUNTIME = {"Torch-Compiled Region": "Torch-Compiled Region", "## Call CompiledFxGraph": "Call CompiledFxGraph"}
_GRAPH_CALL = "Call CompiledFxGraph"


def _torch_event_name(name: str) -> str:
    for prefix, short in _TORCH_RUNTIME.items():
        if name.startswith(prefix):
            return short
    return name


def torch_ops(trace: str | Path, provenance: dict[str, Any] | None = None) -> pd.DataFrame:
    """Ops of a ``torch.profiler`` chrome trace.

    Every ``cpu_op`` event counts, with its self time from the nesting of op events per thread;
    its layer is the innermost enclosing ``rechar.module::<path>`` range (the torch backend's
    hooks), '' outside any. The ranges themselves, other annotations and the profiler's own
    ``profiler::`` ops are not ops. On CUDA, the device time of each kernel, memcpy and memset is
    added to the op whose ``External id`` it carries (kineto's link to the innermost op that
    launched it), so an op's self_us is its host self time plus the device time it launched
    (which overlap in wall-clock time); device activity linked to no op event is dropped.
    ``node`` is always '' (no ONNX graph).

    Compiled by Inductor (with its kernel profiling on), the trace holds the runtime's ranges
    (shortened to ``Torch-Compiled Region``, ``Call CompiledFxGraph``: their self time is the
    runtime's), Inductor's generated kernels (``graph_<id>_cpp_fused_relu_view_2``) and the ATen
    ops the compiled graph calls (extern kernels such as ``aten::addmm``). ``provenance``
    (``InductorProvenance.to_dict``) maps each graph's kernels to the (op, node, module) they
    fused: a kernel's native op is its name without the index, its members those. Extern calls
    get the modules of their graph's extern kernels of that op, in the order the graph calls them
    (a graph call's graph is the one its kernels name). On CUDA, Triton kernels are device events
    of their own, matched to the provenance by name.
    """
    threads: dict[tuple, list[_Span]] = defaultdict(list)
    by_external_id: dict[Any, _Span] = {}
    device_us: dict[Any, float] = defaultdict(float)
    device_spans: list[tuple] = []
    graphs = (provenance or {}).get("graphs", {})
    triton = {name: members for graph in graphs.values() for name, members in graph["kernels"].items()}
    for event in _read_json(trace).get("traceEvents", []):
        if event.get("ph") != "X" or "dur" not in event:
            continue
        cat, name = event.get("cat"), _torch_event_name(event.get("name", ""))
        thread, external_id = (event.get("pid"), event.get("tid")), event.get("args", {}).get("External id")
        if cat == "cpu_op" and not name.startswith("profiler::"):
            kernel = _INDUCTOR_EVENT.match(name)
            if kernel:
                graph, kernel_name = kernel.groups()
                members = tuple(tuple(m) for m in graphs.get(graph, {}).get("kernels", {}).get(kernel_name, ()))
                span = _Span(event["ts"], event["dur"], re.sub(r"_\d+$", "", kernel_name), members=members, graph=graph)
            else:
                span = _Span(event["ts"], event["dur"], name)
            threads[thread].append(span)
            if external_id is not None:
                by_external_id[external_id] = span
        elif cat == "user_annotation" and name.startswith(TORCH_MODULE_PREFIX):
            layer = name.removeprefix(TORCH_MODULE_PREFIX)
            threads[thread].append(_Span(event["ts"], event["dur"], layer, is_op=False))
        elif cat == "kernel" and provenance and _TRITON_KERNEL.match(name):
            members = tuple(tuple(m) for m in triton.get(name, ()))
            device_spans.append((re.sub(r"_\d+$", "", name), event["dur"], members))
        elif cat in TORCH_DEVICE_CATEGORIES and external_id is not None:
            device_us[external_id] += event["dur"]
    for spans in threads.values():
        _nest(spans)
        if graphs:
            _extern_layers(spans, graphs)
    for external_id, us in device_us.items():
        if external_id in by_external_id:
            by_external_id[external_id].self_us += us
    rows = [(s.name, "", s.within, s.self_us, s.members) for spans in threads.values() for s in spans if s.is_op]
    rows += [(name, "", "", us, members) for name, us, members in device_spans]
    return _table(rows, trace)


def _extern_layers(spans: list[_Span], graphs: dict[str, dict[str, Any]]) -> None:
    """Give the ATen ops that a compiled graph calls directly the modules of the graph's extern
    kernels: the k-th call of an op inside one call of a graph is that graph's k-th extern of
    that op. A call's graph is the one its generated kernels name."""
    calls: list[tuple[_Span, list[_Span]]] = []  # each graph call with its direct children
    stack: list[_Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.dur)):
        while stack and stack[-1].end <= span.start:
            stack.pop()
        if stack and stack[-1].name == _GRAPH_CALL:
            calls[-1][1].append(span)
        if span.name == _GRAPH_CALL:
            calls.append((span, []))
        if span.is_op:
            stack.append(span)
    for _, children in calls:
        graph = next((c.graph for c in children if c.graph is not None), None)
        by_op: dict[str, list[str]] = defaultdict(list)
        for op, module in graphs.get(graph, {}).get("externs", []):
            by_op[op].append(module)
        seen: dict[str, int] = defaultdict(int)
        for child in children:
            if child.name in by_op:
                modules = by_op[child.name]
                child.within = modules[seen[child.name] % len(modules)]
                seen[child.name] += 1


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
    threads = _ort_node_spans(_read_json(trace), node_modules, runs, trace)
    rows = [(s.name, s.node, node_modules.get(s.node, ""), s.self_us) for spans in threads.values() for s in spans]
    return _table(rows, trace)


def _ort_node_spans(events: list[dict], node_modules: dict[str, str], runs: int | None,
                    trace: str | Path) -> dict[tuple, list[_Span]]:
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
    threads: dict[tuple, list[_Span]] = defaultdict(list)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(ORT_KERNEL_SUFFIX) or "op_name" not in event.get("args", {}):
            continue
        window = bisect.bisect_right(starts, event["ts"]) - 1
        if window < 0 or event["ts"] >= windows[window][1]:
            continue
        span = _Span(event["ts"], event["dur"], event["args"]["op_name"], resolve(name.removesuffix(ORT_KERNEL_SUFFIX)))
        threads[event.get("pid"), event.get("tid")].append(span)
    for spans in threads.values():
        _nest(spans)
    return threads


#: Kineto's categories of the host-side CUDA calls that carry the correlation id of the device
#: activity they started.
CUDA_LAUNCH_CATEGORIES = {"cuda_runtime", "cuda_driver"}
#: How far (µs) the alignment of ONNX Runtime's clock to kineto's is searched around the offset
#: read from the two clocks, and in what steps.
ALIGN_WINDOW_US, ALIGN_STEP_US = 2000.0, 0.5
#: The row of device time that no node's launch explains.
UNATTRIBUTED = "unattributed device time"


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
    and the shift chosen against the clocks' reading (µs).
    """
    events = _read_json(ort_trace)
    threads = _ort_node_spans(events, node_modules, runs, ort_trace)
    spans = sorted((s for ss in threads.values() for s in ss), key=lambda s: (s.start, -s.dur))
    device = _read_json(device_trace)
    base_ns = int(device.get("baseTimeNanoseconds", 0))
    device_us: dict[Any, float] = defaultdict(float)
    launches: dict[Any, float] = {}
    for event in device.get("traceEvents", []):
        if event.get("ph") != "X" or "dur" not in event:
            continue
        correlation = event.get("args", {}).get("correlation")
        if correlation is None:
            continue
        if event.get("cat") in TORCH_DEVICE_CATEGORIES:
            device_us[correlation] += event["dur"]
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
    for correlation, us in device_us.items():
        if correlation not in launches:
            continue
        span = _innermost(spans, starts, reach, launches[correlation] - shift)
        if span is not None:
            span.self_us += us
            attributed += us
    unattributed -= attributed
    rows = [(s.name, s.node, node_modules.get(s.node, ""), s.self_us) for s in spans]
    if unattributed > 0:
        rows.append((UNATTRIBUTED, "", "", unattributed))
    return _table(rows, ort_trace), {"device_us": total, "attributed_share": attributed / total,
                                      "clock_shift_us": float(shift - nominal)}


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


def _innermost(spans: list[_Span], starts: np.ndarray, reach: np.ndarray, t: float) -> _Span | None:
    """The latest-starting span that contains ``t`` (spans sorted by start; ``reach[i]``: the
    latest end among spans[:i + 1], which bounds the walk back)."""
    i = int(np.searchsorted(starts, t, side="right")) - 1
    while i >= 0 and reach[i] > t:
        if t < spans[i].end:
            return spans[i]
        i -= 1
    return None


def tf_scope_node(op_name: str, scope_to_node: dict[str, str]) -> str:
    """The ONNX node a TF op ran for: the longest name scope of the op name (scopes nest, e.g.
    ``emb/tables.0/Gather/GatherV2`` runs in scope ``emb/tables.0/Gather``) that
    ``TFModel.scope_to_node`` knows; '' if none."""
    scope = op_name
    while "/" in scope:
        scope = scope.rpartition("/")[0]
        if scope in scope_to_node:
            return scope_to_node[scope]
    return ""


#: HLO instructions that compute nothing of their own.
_HLO_PLUMBING = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}
_HLO_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_HLO_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<opcode>[a-z][\w\-]*)\((?P<rest>.*)$")


def xla_instructions(hlo_text: str) -> dict[str, dict[str, Any]]:
    """The instructions of an XLA HLO module (its text form), by name: ``opcode``, the TF op
    (``op_type``, ``op_name``) of its metadata, and for a fusion (or any instruction that calls
    a computation) the TF ops of the instructions it fused, ``members`` [(op_type, op_name)].
    An instruction without metadata (XLA made it, e.g. a ``reduce-window`` that splits a sum)
    stands for its opcode, ``xla::<opcode>``, with no op name."""
    computations: dict[str, list[dict[str, Any]]] = defaultdict(list)
    instructions: dict[str, dict[str, Any]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = None if line[:1].isspace() else _HLO_COMPUTATION.match(line)
        if header:
            current = header["name"]
            continue
        match = _HLO_INSTRUCTION.match(line)
        if not match or current is None:
            continue
        rest = match["rest"]
        op_type, op_name, calls = (re.search(pattern, rest) for pattern in
                                   (r'op_type="([^"]*)"', r'op_name="([^"]*)"', r"calls=%?([\w.\-]+)"))
        opcode = match["opcode"]
        own = op_type[1] if op_type else ("" if opcode in _HLO_PLUMBING else f"xla::{opcode}")
        entry = {"opcode": opcode, "op_type": own, "op_name": op_name[1] if op_name else "",
                 "calls": calls[1] if calls else None}
        computations[current].append(entry)
        instructions[match["name"]] = entry
    for entry in instructions.values():
        entry["members"] = [(e["op_type"], e["op_name"]) for e in computations.get(entry["calls"], []) if e["op_type"]]
    return instructions


#: TensorFlow's event for a call of the lowered function: the runtime around the ops it runs.
TF_FUNCTION_CALL = "tf.function call"


def tf_ops(trace: str | Path, scope_to_node: dict[str, str], node_modules: dict[str, str],
           hlo: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Ops of a TensorFlow profile (an XSpace, ``*.xplane.pb``).

    On plane ``/host:CPU`` op events are named ``<tf op name>:<op type>`` with ``duration_ps``;
    runtime events (names with ``::`` or spaces, or without ``:``) are skipped. The op type is
    the native op, the scope of the op name gives the ONNX node (``tf_scope_node``) and that
    node's module path the layer. oneDNN fuses MatMul+BiasAdd+Relu into one
    ``_MklNativeFusedMatMul`` that runs under the Relu's scope: it counts as that node's (the
    category follows the fused op type). Op events nesting on a thread (function calls) count
    by self time; the function call itself (``__inference_run_…``) is the ``tf.function call``,
    whose self time is TensorFlow's runtime. On a GPU, these are host-side times.

    Compiled by XLA, the function runs as HLO instructions, which the profiler records by
    instruction name (``dot.3``, ``gather_bitcast_fusion.2``). ``hlo`` (``xla_instructions`` of
    the module that ran) maps each to its opcode (native op ``xla::<opcode>``) and the TF ops it
    came from (their scopes give the ONNX node): an instruction lists them as members, the ops of
    its fused computation for a fusion, its own op otherwise.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # ships with TensorFlow

    space = xplane_pb2.XSpace.FromString(_read_bytes(trace))
    rows, ops, calls = [], [], []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            spans = []
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                start, dur = event.offset_ps / 1e6, event.duration_ps / 1e6
                if hlo and name in hlo:
                    spans.append(_xla_span(start, dur, hlo[name], scope_to_node, node_modules))
                elif ":" in name and "::" not in name and " " not in name:
                    op_name, _, op_type = name.rpartition(":")
                    if op_type.startswith("__inference_"):
                        calls.append(_Span(start, dur, TF_FUNCTION_CALL))
                        continue
                    spans.append(_Span(start, dur, op_type, tf_scope_node(op_name, scope_to_node)))
            _nest(spans)
            ops += spans
            rows += [(s.name, s.node, node_modules.get(s.node, ""), s.self_us, s.members) for s in spans]
    # The call waits while its ops run, on its own thread or (XLA's thunks, the executor's pools)
    # on others: its own time is the part of it during which no op ran anywhere.
    intervals = sorted((s.start, s.end) for s in ops)
    rows += [(TF_FUNCTION_CALL, "", "", call.dur - _covered(intervals, call.start, call.end), ()) for call in calls]
    return _table(rows, trace)


def _covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``intervals`` (sorted by start) within [start, end]."""
    covered, reach = 0.0, start
    for lo, hi in intervals:
        if lo >= end:
            break
        lo, hi = max(lo, reach), min(hi, end)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered


def _xla_span(start: float, dur: float, instruction: dict[str, Any], scope_to_node: dict[str, str],
              node_modules: dict[str, str]) -> _Span:
    def member(op_type: str, op_name: str) -> tuple[str, str, str]:
        node = tf_scope_node(op_name, scope_to_node)
        return op_type, node, node_modules.get(node, "")

    own = [(instruction["op_type"], instruction["op_name"])] if instruction["op_type"] else []
    members = tuple(member(*m) for m in (instruction["members"] or own))
    return _Span(start, dur, f"xla::{instruction['opcode']}", tf_scope_node(instruction["op_name"], scope_to_node),
                 members=members)


#: OpenVINO runtime node types that replace one ONNX op of another name (and keep no ONNX name).
_OPENVINO_REPLACES = {"GRUSequence": "GRU", "LSTMSequence": "LSTM", "RNNSequence": "RNN"}


def openvino_ops(trace: str | Path, node_modules: dict[str, str], node_types: dict[str, str]) -> pd.DataFrame:
    """Ops of an OpenVINO profile: the JSON the openvino backend writes from the infer request's
    ``get_profiling_info()`` after each profiled call (``nodes``: node_name, node_type,
    exec_type, status, real_us, cpu_us per node and iteration) and the runtime model's
    ``originalLayersNames`` per node (``original_layers``).

    Only EXECUTED nodes count, with their wall time (``real_us``). The native op is the runtime
    node type (``FullyConnected``, ``Subgraph``, ``Reorder`` ...). Runtime nodes keep the name of
    an ONNX node or extend it (``/item_emb_1/Gather_abc_bac_GRUSequence_12722``, a reorder of
    that Gather's output): the node is the longest ONNX node name that begins the runtime name.
    A ``GRUSequence`` (DIEN's GRU) has no ONNX name: it maps to the graph's only ONNX ``GRU``.
    Nodes OpenVINO created from nothing (``Convert_10254``) keep no node and no layer. A node
    that fused several ONNX nodes, or runs one under another type, lists them as members ((op
    type, node, layer) each).
    """
    data = _read_json(trace)
    original = data.get("original_layers", {})
    by_type: dict[str, list[str]] = defaultdict(list)
    for node, op_type in node_types.items():
        by_type[op_type].append(node)

    @functools.cache
    def resolve(name: str, node_type: str) -> str:
        if name in node_modules:
            return name
        for cut in range(len(name) - 1, 0, -1):
            if name[:cut] in node_modules:
                return name[:cut]
        replaced = by_type.get(_OPENVINO_REPLACES.get(node_type, ""), [])
        return replaced[0] if len(replaced) == 1 else ""

    rows = []
    for rec in data["nodes"]:
        if rec["status"] != "EXECUTED":
            continue
        name, node_type = rec["node_name"], rec["node_type"]
        node = resolve(name, node_type)
        fused = [m for m in original.get(name, "").split(",") if m in node_types]
        # members where the node fused several ONNX nodes, or runs one under another type (a
        # Subgraph of one Relu): they say what it computes
        listed = len(fused) > 1 or (len(fused) == 1 and node_types[fused[0]] != node_type)
        members = tuple((node_types[m], m, node_modules.get(m, "")) for m in fused) if listed else ()
        rows.append((node_type, node, node_modules.get(node, ""), rec["real_us"], members))
    return _table(rows, trace)
