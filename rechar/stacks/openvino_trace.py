"""Ops of an OpenVINO compiled model's per-node performance counters (``PERF_COUNT``), written
as JSON by the backend."""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

import pandas as pd

from rechar.stacks.tracing import op_table, read_json

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
    data = read_json(trace)
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
    return op_table(rows, trace)
