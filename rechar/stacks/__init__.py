"""Backends that run an exported model and time it, and the sweep that drives them.

The registry maps a backend name to ``module:Class``; classes are imported only when used, so
that TensorFlow is never loaded for a PyTorch run.
"""

from __future__ import annotations

import importlib
import os

from rechar.errors import UserError
from rechar.stacks.base import Backend, BackendOptions

BACKENDS: dict[str, str] = {
    "torch": "rechar.stacks.torch_backend:TorchBackend",
    "torch-cuda": "rechar.stacks.torch_backend:TorchCudaBackend",
    "torch-compile": "rechar.stacks.torch_backend:TorchCompileBackend",
    "torch-compile-cuda": "rechar.stacks.torch_backend:TorchCompileCudaBackend",
    "ort-cpu": "rechar.stacks.ort_backend:OrtCpuBackend",
    "ort-cuda": "rechar.stacks.ort_backend:OrtCudaBackend",
    "ort-cuda-graph": "rechar.stacks.ort_backend:OrtCudaGraphBackend",
    "ort-trt": "rechar.stacks.ort_backend:OrtTensorrtBackend",
    "tf": "rechar.stacks.tf_backend:TFBackend",
    "tf-xla": "rechar.stacks.tf_backend:TFXlaBackend",
    "openvino": "rechar.stacks.openvino_backend:OpenVinoBackend",
}

# Backends from outside rechar, without editing it: RECHAR_EXTRA_BACKENDS="name=module:Class,..."
# (the worker processes inherit the environment, so they see the same registry).
for _entry in filter(None, os.environ.get("RECHAR_EXTRA_BACKENDS", "").split(",")):
    _name, _, _target = _entry.partition("=")
    BACKENDS[_name.strip()] = _target.strip()

#: What a run times when no backend is named: the study's stacks (eager PyTorch, ONNX Runtime,
#: TensorFlow's executor) on every device present. The compiled and vendor stacks are opt-in (by
#: name, or ``all``): torch.compile compiles every model for every batch size (2-40 s each, cold),
#: which alone would double the time of the README's main command.
DEFAULT_BACKENDS = ("torch", "torch-cuda", "ort-cpu", "ort-cuda", "tf")

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "Backend", "BackendOptions", "backend_class", "select_backends"]


def backend_class(name: str) -> type[Backend]:
    """The class of a backend name; ``<backend>@<precision>`` is the same stack in another
    precision (rechar.stacks.variants), so the same class."""
    from rechar.stacks.variants import PRECISIONS, split_backend

    base, precision = split_backend(name)
    if base not in BACKENDS:
        raise UserError(f"unknown backend {base!r} (choose from {', '.join(BACKENDS)}, or all)")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} in {name!r} (choose from {', '.join(PRECISIONS)})")
    module, _, cls = BACKENDS[base].partition(":")
    return getattr(importlib.import_module(module), cls)


def backend_reason(name: str) -> str | None:
    """Why the backend (with its precision) cannot run here, or None."""
    from rechar.stacks.variants import split_backend

    cls = backend_class(name)
    return cls.unavailable_reason() or cls.precision_reason(split_backend(name)[1])


def with_precisions(names: list[str], precisions: list[str]) -> list[str]:
    """Each backend in each precision (``torch`` and ``torch@int8`` for fp32 and int8)."""
    from rechar.stacks.variants import variant_name

    if precisions == ["fp32"]:
        return names
    return [variant_name(n, p) for n in names for p in precisions]


def select_backends(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Resolve requested backend names. Nothing means the default set (DEFAULT_BACKENDS) and
    ``all`` every backend, each as far as it is available here; the others come back as
    {name: reason} to be reported as skipped (opt-in backends too, saying so). A backend asked for
    by name that cannot run here is an error that says why."""
    if not names or "all" in names:
        chosen, skipped = [], {}
        for name in BACKENDS:
            reason = backend_class(name).unavailable_reason()
            if reason:
                skipped[name] = reason
            elif names or name in DEFAULT_BACKENDS:
                chosen.append(name)
            else:
                skipped[name] = "not in the default set (compiled and vendor stacks are opt-in): name it, or --backend all"
        return chosen, skipped
    chosen, skipped = [], {}
    for name in names:
        cls = backend_class(name)
        reason = cls.unavailable_reason()
        if reason:
            raise UserError(f"backend {name.partition('@')[0]} is not available: {reason}")
        precision_reason = backend_reason(name)
        if precision_reason:  # a precision this stack does not offer: skipped, with why
            skipped[name] = precision_reason
        else:
            chosen.append(name)
    return list(dict.fromkeys(chosen)), skipped
