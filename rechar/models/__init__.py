"""The eight recommendation models of the study and three of today's (DLRM-DCNv2, SASRec, HSTU),
each defined once in PyTorch.

    >>> import rechar.models
    >>> model = rechar.models.get("dlrm-rmc1", scale="tiny")
    >>> inputs = model.make_inputs(batch=4)
    >>> model.predict(inputs).shape
    (4, 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from rechar.errors import UserError
from rechar.models.base import RecModel
from rechar.models.calibration import calibrate
from rechar.models.config import DEFAULT_SCALE, SCALE_HELP, SCALES, ModelConfig, load_config_file
from rechar.models.dcnv2 import DLRM_DCNV2, DLRMDCNv2
from rechar.models.dien import DIEN, DIENConfig
from rechar.models.din import DIN, DINConfig
from rechar.models.dlrm import DLRM, RMC1, RMC2, RMC3
from rechar.models.hstu import HSTU, HSTUConfig
from rechar.models.ncf import NCF, NCFConfig
from rechar.models.sasrec import SASRec, SASRecConfig
from rechar.models.wide_deep import MultiTaskWideDeep, MultiTaskWideDeepConfig, WideDeep, WideDeepConfig

__all__ = [
    "MODELS", "STUDY_MODELS", "SCALES", "SCALE_HELP", "DEFAULT_SCALE", "RecModel", "ModelConfig",
    "get", "shell", "resolve_config", "describe", "names", "load_config_file",
]

EMBEDDING, MLP, SEQUENCE = "embedding-dominated", "MLP-dominated", "attention/sequence"
CROSS = "cross-network/MLP"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    cls: type[RecModel]
    paper: ModelConfig  # the study's sizes (for the three later models: their reference sizes)
    category: str  # what the study found to dominate CPU time (later models: their architecture's class)


MODELS: dict[str, ModelEntry] = {
    "dlrm-rmc1": ModelEntry(DLRM, RMC1, EMBEDDING),
    "dlrm-rmc2": ModelEntry(DLRM, RMC2, EMBEDDING),
    "dlrm-rmc3": ModelEntry(DLRM, RMC3, MLP),
    "ncf": ModelEntry(NCF, NCFConfig(), MLP),
    "wnd": ModelEntry(WideDeep, WideDeepConfig(), MLP),
    "mt-wnd": ModelEntry(MultiTaskWideDeep, MultiTaskWideDeepConfig(), MLP),
    "din": ModelEntry(DIN, DINConfig(), SEQUENCE),
    "dien": ModelEntry(DIEN, DIENConfig(), SEQUENCE),
    # After the study: MLPerf's DLRM-v2, and sequential transformers over a user's history
    "dlrm-dcnv2": ModelEntry(DLRMDCNv2, DLRM_DCNV2, CROSS),
    "sasrec": ModelEntry(SASRec, SASRecConfig(), SEQUENCE),
    "hstu": ModelEntry(HSTU, HSTUConfig(), SEQUENCE),
}


#: The study's eight: what a run measures when no model is named.
STUDY_MODELS = ("dlrm-rmc1", "dlrm-rmc2", "dlrm-rmc3", "ncf", "wnd", "mt-wnd", "din", "dien")


def names() -> list[str]:
    """Every model: the study's eight and the three after it."""
    return list(MODELS)


def _entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r} (choose from {', '.join(MODELS)})") from None


def resolve_config(name: str, scale: str = DEFAULT_SCALE, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The paper config of ``name``, capped by ``scale``, then with ``overrides`` applied."""
    config = _entry(name).paper.scaled(scale)
    return config.with_overrides(overrides or {}, where=f"config for {name}")


def get(
    name: str,
    scale: str = DEFAULT_SCALE,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    config: ModelConfig | None = None,
    calibration: dict[str, Any] | None = None,
) -> RecModel:
    """Build a model in eval mode with weights drawn deterministically from ``seed``, its output
    layer calibrated (rechar.models.calibration; what was applied is ``model.calibration``).
    ``calibration``: that record from an earlier build of the same model, config and seed (an
    export's manifest keeps it), applied without running the model.

    Refuses (UserError) before allocating anything when the weights alone exceed the memory
    available now (MLPerf's DLRM-DCNv2 tables are 104.5 GB)."""
    cls = _entry(name).cls
    named_scale = "" if config is not None else scale  # a config passed in may come from any scale
    config = config or resolve_config(name, scale, overrides)
    check_fits_in_memory(name, config, named_scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(name, config)
    model.eval()
    model.calibration = calibrate(model, seed, calibration)  # outputs that spread like a trained model's
    return model


def weight_bytes(name: str, config: ModelConfig) -> int:
    """Bytes of the model's parameters, computed on the meta device (nothing allocated)."""
    return sum(p.numel() * p.element_size() for p in shell(name, config).parameters())


def check_fits_in_memory(name: str, config: ModelConfig, scale: str = "") -> None:
    need = weight_bytes(name, config)
    available = psutil.virtual_memory().available
    if need > available:
        where = f" at scale {scale!r}" if scale else ""
        raise UserError(
            f"{name}{where} needs {need / 1e9:.1f} GB for its weights but this machine has {available / 1e9:.1f} GB "
            f"available; choose a smaller scale (--scale small) or cap table_rows in a config file")


def shell(name: str, config: ModelConfig) -> RecModel:
    """The model on PyTorch's ``meta`` device: exact shapes, config and inputs, no weights
    allocated (cheap at any scale)."""
    with torch.device("meta"):
        return _entry(name).cls(name, config).eval()


def describe(name: str, config: ModelConfig) -> dict[str, Any]:
    """Size and cost figures computed from the config, without allocating the model.

    The model is built on PyTorch's ``meta`` device: parameter shapes are exact but no memory is
    allocated, and a forward pass under ``FlopCounterMode`` counts the matmul work per sample.
    """
    entry = _entry(name)
    model = shell(name, config)
    with torch.device("meta"):
        tables = model.embedding_tables()
        inputs = {k: torch.from_numpy(v).to("meta") for k, v in _example_inputs(model).items()}
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*inputs.values())
    embedding_params = sum(t.weight.numel() for t in tables)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "category": entry.category,
        "params": params,
        "dense_params": params - embedding_params,
        "embedding_tables": len(tables),
        "embedding_bytes": sum(t.weight.numel() * t.weight.element_size() for t in tables),
        "macs_per_sample": counter.get_total_flops() // 2,
        "embedding_bytes_read_per_sample": sum(t.bytes_read_per_sample for t in tables),
        "lookups_per_sample": sum(t.lookups for t in tables),
        **model.fixed_dims(),
        "config": config.to_dict(),
    }


def _example_inputs(model: RecModel):
    # One sample; the generator only needs table sizes, not weights.
    return model.make_inputs(batch=1)
