"""The quality gate of reduced precision (``torch@int8``, ``openvino@bf16``: rechar.stacks.variants).

Reduced precision cannot match fp32 bit for bit, so such points pass a quality gate instead of
the parity gate: against eager fp32 PyTorch on a fixed, seeded evaluation set, the largest and mean absolute difference of the
predicted probabilities, and the share of sample pairs ordered the same way.

Random weights make some models' predictions nearly constant (tiny scale: standard deviation
1e-4 for NCF, 3e-3 for DLRM-RMC1): there the order of samples is noise and quantization noise
reorders them, so ranking agreement is held to its threshold only where the fp32 predictions
spread at least ``min_spread``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Samples in the quality gate's evaluation set (one batch, seeded apart from the timing inputs).
EVAL_SAMPLES = 2048
EVAL_SEED_OFFSET = 7919
#: Sample pairs drawn to estimate the ranking agreement.
EVAL_PAIRS = 200_000


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    max_abs: float = 0.05  # largest |p - p_fp32| over the evaluation set
    mean_abs: float = 0.01  # mean |p - p_fp32|
    pair_agreement: float = 0.9  # share of sample pairs ordered as fp32 orders them
    min_spread: float = 0.01  # ranking is checked only where fp32's predictions spread this much (std)


def quality(got: np.ndarray, want: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How close reduced-precision predictions are to fp32's, sample by sample."""
    got, want = np.asarray(got, dtype=np.float64).ravel(), np.asarray(want, dtype=np.float64).ravel()
    if got.shape != want.shape:
        raise ValueError(f"{got.size} predictions against {want.size} fp32 ones")
    diff = np.abs(got - want)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, want.size, EVAL_PAIRS), rng.integers(0, want.size, EVAL_PAIRS)
    keep = want[i] != want[j]
    same = np.sign(got[i] - got[j])[keep] == np.sign(want[i] - want[j])[keep]
    return {"quality_max_abs": float(diff.max()), "quality_mean_abs": float(diff.mean()),
            "quality_pair_agreement": float(same.mean()) if same.size else 1.0,
            "quality_fp32_spread": float(want.std())}


def quality_failure(q: dict[str, float], t: QualityThresholds) -> str | None:
    """Why a point's quality falls below the thresholds (one line), or None."""
    if not all(np.isfinite(v) for v in q.values()):
        return "predictions that are not finite numbers (NaN or infinity)"
    if q["quality_max_abs"] > t.max_abs:
        return f"largest prediction error {q['quality_max_abs']:.3g} against fp32 (threshold {t.max_abs})"
    if q["quality_mean_abs"] > t.mean_abs:
        return f"mean prediction error {q['quality_mean_abs']:.3g} against fp32 (threshold {t.mean_abs})"
    if q["quality_fp32_spread"] >= t.min_spread and q["quality_pair_agreement"] < t.pair_agreement:
        return (f"{q['quality_pair_agreement']:.1%} of sample pairs ordered as fp32 orders them "
                f"(threshold {t.pair_agreement:.0%})")
    return None
