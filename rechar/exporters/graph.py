"""Facts about an exported ONNX graph: which PyTorch module each node came from, its inputs and
outputs, and the checks every export must pass."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rechar.errors import UserError

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


def check_external_data(onnx_path: str | Path) -> None:
    """Refuse a model whose external-data locations leave its folder (absolute paths, '..', or
    symbolic links pointing elsewhere), before any runtime opens them: an ONNX file from
    elsewhere must not make rechar read arbitrary files."""
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent.resolve()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a damaged file
        raise UserError(f"{onnx_path} is not a readable ONNX model: {type(e).__name__}") from None
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(folder):
            raise UserError(f"{onnx_path}: refusing external data location {location!r} of tensor {tensor.name!r}: "
                            "it resolves outside the model's folder")
        if not target.is_file():
            raise UserError(f"{onnx_path}: external data file {location!r} of tensor {tensor.name!r} is missing")


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def check_inputs_match(onnx_path: str | Path, inputs: dict[str, np.ndarray]) -> None:
    """The ONNX graph takes exactly these inputs (names, order, dtypes, non-batch dimensions)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    specs = value_specs(model.graph.input)
    names = [s["name"] for s in specs]
    if names != list(inputs):
        raise UserError(f"{onnx_path} takes inputs {names}, but the model feeds {list(inputs)}; re-export it")
    for spec in specs:
        array = inputs[spec["name"]]
        fixed = [d for d in spec["shape"][1:]]
        if spec["dtype"] != array.dtype.name or len(spec["shape"]) != array.ndim or (
                any(isinstance(d, int) and d != n for d, n in zip(fixed, array.shape[1:]))):
            raise UserError(f"{onnx_path}: input {spec['name']!r} is {spec['dtype']} {spec['shape']}, but the model "
                            f"feeds {array.dtype.name} {list(array.shape)}; re-export it")


class ExportCheckError(Exception):
    """An exported graph failed a check (checker, forbidden op, parity with PyTorch)."""
