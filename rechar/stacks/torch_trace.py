"""Ops of a ``torch.profiler`` chrome trace (``export_chrome_trace``), of eager or Inductor-compiled
PyTorch."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from rechar.stacks.tracing import TORCH_DEVICE_CATEGORIES, Span, nest, op_table, read_json

#: Name prefix of the ranges the torch backend opens around each module's forward.
TORCH_MODULE_PREFIX = "rechar.module::"

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
    threads: dict[tuple, list[Span]] = defaultdict(list)
    by_external_id: dict[Any, Span] = {}
    device_us: dict[Any, float] = defaultdict(float)
    device_spans: list[tuple] = []
    graphs = (provenance or {}).get("graphs", {})
    triton = {name: members for graph in graphs.values() for name, members in graph["kernels"].items()}
    for event in read_json(trace).get("traceEvents", []):
        if event.get("ph") != "X" or "dur" not in event:
            continue
        cat, name = event.get("cat"), _torch_event_name(event.get("name", ""))
        thread, external_id = (event.get("pid"), event.get("tid")), event.get("args", {}).get("External id")
        if cat == "cpu_op" and not name.startswith("profiler::"):
            kernel = _INDUCTOR_EVENT.match(name)
            if kernel:
                graph, kernel_name = kernel.groups()
                members = tuple(tuple(m) for m in graphs.get(graph, {}).get("kernels", {}).get(kernel_name, ()))
                span = Span(event["ts"], event["dur"], re.sub(r"_\d+$", "", kernel_name), members=members, graph=graph)
            else:
                span = Span(event["ts"], event["dur"], name)
            threads[thread].append(span)
            if external_id is not None:
                by_external_id[external_id] = span
        elif cat == "user_annotation" and name.startswith(TORCH_MODULE_PREFIX):
            layer = name.removeprefix(TORCH_MODULE_PREFIX)
            threads[thread].append(Span(event["ts"], event["dur"], layer, is_op=False))
        elif cat == "kernel" and provenance and _TRITON_KERNEL.match(name):
            members = tuple(tuple(m) for m in triton.get(name, ()))
            device_spans.append((re.sub(r"_\d+$", "", name), event["dur"], members))
        elif cat in TORCH_DEVICE_CATEGORIES and external_id is not None:
            device_us[external_id] += event["dur"]
    for spans in threads.values():
        nest(spans)
        if graphs:
            _extern_layers(spans, graphs)
    for external_id, us in device_us.items():
        if external_id in by_external_id:
            by_external_id[external_id].self_us += us
    rows = [(s.name, "", s.within, s.self_us, s.members) for spans in threads.values() for s in spans if s.is_op]
    rows += [(name, "", "", us, members) for name, us, members in device_spans]
    return op_table(rows, trace)


def _extern_layers(spans: list[Span], graphs: dict[str, dict[str, Any]]) -> None:
    """Give the ATen ops that a compiled graph calls directly the modules of the graph's extern
    kernels: the k-th call of an op inside one call of a graph is that graph's k-th extern of
    that op. A call's graph is the one its generated kernels name."""
    calls: list[tuple[Span, list[Span]]] = []  # each graph call with its direct children
    stack: list[Span] = []
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
