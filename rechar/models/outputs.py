"""A model's outputs read as logits, and their comparison against numerical noise.

Outputs are compared as logits (a sigmoid's probability p as log(p/(1-p)), a two-class softmax
as log(p1/p0)), where a fault shows at its own size: a probability near 0.5 moves by a quarter
of a logit change, and near 0 or 1 by far less, so a tolerance on probabilities that admits
rounding noise everywhere also admits a different model. Two computations of the same model
agree when, per output,

    |z_got - z_want| <= atol + rtol * |z_want| + resolution

where ``resolution`` is what ``RESOLUTION_ULPS`` units in the last place of the fp32 probability
amount to in logits (1/(1-p) grows without bound as p nears 1: a probability that rounded to 1
carries no information about its logit and cannot fail). The sweep's parity gate
(rechar.measure.gate) and the export's check (rechar.exporters) both compare this way.
"""

from __future__ import annotations

import numpy as np

RESOLUTION_ULPS = 4
_EPS32 = float(np.finfo(np.float32).eps)


def logits(outputs: np.ndarray, kind: str) -> np.ndarray:
    """A model's outputs as logits, float64 [N, columns]: ``sigmoid`` probabilities -> log(p/(1-p));
    two-class ``softmax`` probabilities -> log(p1/p0) (a K-class one: log p_k - log p_0 for k >= 1);
    ``score`` outputs are logits already. Probabilities that rounded to 0 or 1 give +-inf."""
    out = np.asarray(outputs, dtype=np.float64)
    out = out.reshape(len(out), -1) if out.ndim != 2 else out
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "sigmoid":
            return np.log(out) - np.log1p(-out)
        if kind == "softmax":
            return np.log(out[:, 1:]) - np.log(out[:, :1])
    if kind == "score":
        return out
    raise ValueError(f"unknown output kind {kind!r}")


def resolution(want: np.ndarray, kind: str) -> np.ndarray:
    """The logit change of ``RESOLUTION_ULPS`` ulps of each fp32 output (float64, logits' shape)."""
    out = np.asarray(want, dtype=np.float64)
    out = out.reshape(len(out), -1) if out.ndim != 2 else out
    with np.errstate(divide="ignore"):
        if kind == "sigmoid":
            # dz = dp / (p (1 - p)) with dp ~ ulp(p) ~ eps * p
            return RESOLUTION_ULPS * _EPS32 / (1.0 - out)
        if kind == "softmax":  # dz = dp1 / p1 + dp0 / p0, each ~ eps
            return np.full(out[:, 1:].shape, 2 * RESOLUTION_ULPS * _EPS32)
    return RESOLUTION_ULPS * _EPS32 * np.abs(out)


def compare(got: np.ndarray, want: np.ndarray, kind: str, atol: float,
            rtol: float) -> tuple[bool, float, float]:
    """Whether ``got`` computes the model ``want`` came from: (passed, the largest logit error,
    the margin = the largest error / tolerance ratio over the outputs, 1 at the edge)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, float("inf"), float("inf")
    if not got.size:
        return True, 0.0, 0.0
    z_got, z_want = logits(got, kind), logits(want, kind)
    tolerance = atol + rtol * np.abs(z_want) + resolution(want, kind)
    with np.errstate(invalid="ignore"):
        error = np.abs(z_got - z_want)
    # Where the reference saturated (p rounded to 0 or 1) any output that rounds alike agrees.
    error = np.where(np.isfinite(z_want) | (z_got != z_want), error, 0.0)
    error = np.where(np.isnan(error), np.inf, error)
    ratio = np.where(np.isinf(tolerance), 0.0, error / tolerance)
    margin = float(ratio.max())
    return bool(margin <= 1.0), float(error[np.isfinite(tolerance)].max(initial=0.0)), margin
