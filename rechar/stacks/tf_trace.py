"""Ops of TensorFlow's XSpace protobuf (``*.xplane.pb`` of ``tf.profiler.experimental``), of the
executor or of XLA-compiled clusters (through the HLO module's instruction map)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from rechar.stacks.tracing import Span, nest, op_table, read_bytes

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

    space = xplane_pb2.XSpace.FromString(read_bytes(trace))
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
                        calls.append(Span(start, dur, TF_FUNCTION_CALL))
                        continue
                    spans.append(Span(start, dur, op_type, tf_scope_node(op_name, scope_to_node)))
            nest(spans)
            ops += spans
            rows += [(s.name, s.node, node_modules.get(s.node, ""), s.self_us, s.members) for s in spans]
    # The call waits while its ops run, on its own thread or (XLA's thunks, the executor's pools)
    # on others: its own time is the part of it during which no op ran anywhere.
    intervals = sorted((s.start, s.end) for s in ops)
    rows += [(TF_FUNCTION_CALL, "", "", call.dur - covered(intervals, call.start, call.end), ()) for call in calls]
    return op_table(rows, trace)


def covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
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
              node_modules: dict[str, str]) -> Span:
    def member(op_type: str, op_name: str) -> tuple[str, str, str]:
        node = tf_scope_node(op_name, scope_to_node)
        return op_type, node, node_modules.get(node, "")

    own = [(instruction["op_type"], instruction["op_name"])] if instruction["op_type"] else []
    members = tuple(member(*m) for m in (instruction["members"] or own))
    return Span(start, dur, f"xla::{instruction['opcode']}", tf_scope_node(instruction["op_name"], scope_to_node),
                 members=members)
