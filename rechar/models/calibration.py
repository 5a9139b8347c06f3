"""Outputs that spread like a trained model's, from random weights.

With the reference initialisation (embedding rows uniform in +-sqrt(1/rows), PyTorch's default
Linear init) the models' predicted probabilities barely move from sample to sample (NCF at tiny
scale: standard deviation ~1e-4 around 0.5; DLRM-RMC1 ~3e-3). Then any comparison of outputs is
meaningless: a stack computing a different model agrees with the reference to 1e-4, and the
order of samples is rounding noise. A trained CTR model's logits spread with a standard
deviation of about 1-2. So after drawing its weights, every model is calibrated from the seed:
the parameters its output logits are linear in (the last layer, and the wide part where there is
one) are scaled so that the logits of a seeded batch spread with ``TARGET_LOGIT_STD``, and each
logit's bias is moved so that their mean is ``TARGET_LOGIT_MEAN``. Shapes, FLOPs and memory are
unchanged; only values of the output layer move.

The scale and shifts are rounded (3 significant digits, 1e-3) so that machines whose kernels sum
in another order still arrive at the same weights bit for bit (a cluster node checks its
export's hashes against the driver's). The export records them (its manifest's ``calibration``),
and a worker applies the recorded values instead of measuring again: the three forward passes of
1024 samples cost well under a second natively but minutes under Valgrind, where the simulation
pass's workers run (DLRM-RMC3 at tiny scale: one pass took 0.2 s natively and 275 s under
callgrind with instrumentation off).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from rechar.models.outputs import logits

TARGET_LOGIT_STD = 1.5
TARGET_LOGIT_MEAN = 0.0
CALIBRATION_SAMPLES = 1024
CALIBRATION_SEED_OFFSET = 104_729  # the calibration batch is drawn apart from timing and gate inputs


@dataclasses.dataclass
class LogitLayer:
    """Where a model's logits come from: every term of each output logit is linear in exactly one
    of ``scaled`` (so scaling them all by s scales the logits by s), and ``biases`` holds, per
    logit column, the bias entry (parameter, index) that moves that logit alone."""

    scaled: list[nn.Parameter]
    biases: list[tuple[nn.Parameter, int]]


def calibrate(model: nn.Module, seed: int, known: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Scale and centre a RecModel's output logits in place (see the module's doc). Returns what
    was applied — ``{"first": shifts, "scale": s, "second": shifts}`` (a shift per bias entry) —
    or None for a model without a ``logit_layer``. ``known``: such a record, from an earlier
    calibration of the same model, config and seed, applied without running the model."""
    layer = model.logit_layer()
    if layer is None or any(p.device.type == "meta" for p in layer.scaled):  # a shell has no values
        return None
    inputs = None if known else model.make_inputs(CALIBRATION_SAMPLES, seed=seed + CALIBRATION_SEED_OFFSET)

    def measured() -> np.ndarray:
        z = logits(model.predict(inputs), model.output_kind)
        if not np.all(np.isfinite(z)):
            raise ValueError(f"{model.name}: outputs saturated while calibrating")
        return z

    def centre(shift: list[float] | None) -> list[float]:
        if shift is None:  # one shift per bias entry (scores over candidates share one bias)
            shift = [float(d) for d in np.round(measured().mean(axis=0) - TARGET_LOGIT_MEAN, 3)][:len(layer.biases)]
        if len(shift) != len(layer.biases):
            raise ValueError(f"{model.name}: calibration has {len(shift)} shifts for {len(layer.biases)} logits")
        with torch.no_grad():
            for (bias, index), d in zip(layer.biases, shift):
                bias[index] -= d
        return shift

    first = centre(known["first"] if known else None)  # first centred: the spread is measured away from saturation
    if known:
        scale = float(known["scale"])
    else:
        spread = float(measured().std())
        scale = float(f"{TARGET_LOGIT_STD / spread:.3g}") if spread > 0 else 1.0
    with torch.no_grad():
        for p in layer.scaled:
            p.mul_(scale)
    second = centre(known["second"] if known else None)
    return {"first": first, "scale": scale, "second": second}
