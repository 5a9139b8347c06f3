"""Facts about an exported ONNX graph: which PyTorch module each node came from, its inputs and
outputs, and the checks every export must pass."""

from __future__ import annotations

import ast
import re
from typing import Any

import onnx

#: Node metadata key holding the PyTorch module path ('' for the model's own forward).
MODULE_KEY = "rechar.module"
#: Op types no exported graph may contain (see the embedding note in rechar.models.layers).
FORBIDDEN_OPS = {"Loop", "SequenceConstruct", "SequenceInsert", "SequenceAt"}


def exporter_scopes(node: onnx.NodeProto) -> list[str]:
    """The module scopes the exporter recorded for ``node``, outermost first, op excluded.

    The dynamo exporter attaches ``pkg.torch.onnx.name_scopes`` (a Python-literal list such as
    ``['', 'bot_mlp', 'bot_mlp.0', 'linear']``, root first and op last); the TorchScript exporter
    encodes the scopes in the node name (``/emb/tables.0/Gather``).
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return list(ast.literal_eval(prop.value))[1:-1]
    return node.name.split("/")[1:-1]


def resolve_module_path(scopes: list[str], modules: set[str]) -> str:
    """Turn exporter scopes into a module path of the model (``emb.tables.0``).

    Scopes are relative to some enclosing module (``tables.0`` under ``emb``; the TorchScript
    exporter names a Sequential's child ``mlp.0`` under ``attention.mlp``) or already full, and a
    module called more than once gets a call-count suffix (``item_emb_1``). Checking candidates
    under each enclosing module against the model's real module names resolves all of these.
    Scopes that name no module (functions) are skipped.
    """
    path = ""
    for scope in scopes:
        parts = path.split(".") if path else []
        prefixes = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]  # deepest first
        path = next(
            (
                f"{prefix}.{name}" if prefix else name
                for name in dict.fromkeys((scope, re.sub(r"_\d+$", "", scope)))
                for prefix in prefixes
                if (f"{prefix}.{name}" if prefix else name) in modules
            ),
            path,
        )
    return path


def annotate_modules(model: onnx.ModelProto, modules: set[str]) -> None:
    """Write each node's module path under MODULE_KEY, so that readers need one lookup only."""
    for node in model.graph.node:
        path = resolve_module_path(exporter_scopes(node), modules)
        for prop in node.metadata_props:
            if prop.key == MODULE_KEY:
                prop.value = path
                break
        else:
            node.metadata_props.add(key=MODULE_KEY, value=path)


def node_modules(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX node name -> PyTorch module path, from the annotation written at export."""
    out = {}
    for node in model.graph.node:
        out[node.name] = next((p.value for p in node.metadata_props if p.key == MODULE_KEY), "")
    return out


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def check_no_forbidden_ops(model: onnx.ModelProto) -> None:
    found = op_types(model) & FORBIDDEN_OPS
    if found:
        raise ExportCheckError(f"exported graph contains {', '.join(sorted(found))}; pooling must be Gather + ReduceSum")


def value_specs(values) -> list[dict[str, Any]]:
    """Name, dtype and shape (a dimension name such as 'batch', or a size) of graph inputs/outputs."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        specs.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape})
    return specs


class ExportCheckError(Exception):
    """An exported graph failed a check (checker, forbidden op, parity with PyTorch)."""
