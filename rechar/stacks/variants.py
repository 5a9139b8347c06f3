"""Precision as a stack choice: ``torch@int8``, ``ort-cpu@int8``, ``openvino@bf16``, ...

A backend name with ``@<precision>`` is that stack running the model in that precision, each
stack its own way (its module says how); plain names are fp32. Whether a variant's outputs are
good enough is the quality gate's to say (rechar.measure.quality).
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "int8")


def split_backend(name: str) -> tuple[str, str]:
    """``"ort-cpu@int8"`` -> ``("ort-cpu", "int8")``; a plain name is fp32."""
    base, _, precision = name.partition("@")
    return base, precision or "fp32"


def variant_name(backend: str, precision: str) -> str:
    return backend if precision == "fp32" else f"{backend}@{precision}"


def weight_record(embedding: int, dense: int) -> dict[str, Any]:
    """The weights as a stack holds them, in bytes, recorded with every point."""
    return {"weight_bytes": embedding + dense, "embedding_weight_bytes": embedding, "dense_weight_bytes": dense}
