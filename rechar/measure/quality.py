"""The quality gate of reduced precision (``torch@int8``, ``openvino@bf16``: rechar.stacks.variants).

Reduced precision cannot match fp32 bit for bit, so such points pass a quality gate instead of
the parity gate: against eager fp32 PyTorch on a fixed, seeded evaluation set, run through the
model actually timed (the variant's prepared call at the point's batch size: static-shape stacks
compile one model per batch size, and each is judged), compared as logits
(rechar.models.calibration) relative to the spread of fp32's logits:

- the mean and the largest |logit - fp32 logit|, as fractions of the standard deviation of fp32's
  logits over the set (a quantization error matters as far as it moves a sample among others);
- the share of sample pairs ordered as fp32 orders them (what a ranking model is for).

The models are calibrated so that fp32's logits spread like a trained model's (std ~1.5); the
ranking check holds on every model. Probability-space figures are kept alongside, for reading.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rechar.models.outputs import logits

#: Samples in the quality gate's evaluation set (seeded apart from the timing inputs).
EVAL_SAMPLES = 2048
EVAL_SEED_OFFSET = 7919
#: Sample pairs drawn to estimate the ranking agreement.
EVAL_PAIRS = 200_000


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    # Seen on the eight tiny models at batch 256: mean up to 0.039, largest up to 0.15, pairs down to
    # 98.75% (ONNX Runtime's int8 on NCF); tripled int8 scales and collapsed outputs fail.
    mean_logit: float = 0.1  # mean |z - z_fp32| / std(z_fp32)
    max_logit: float = 1.0  # largest |z - z_fp32| / std(z_fp32)
    pair_agreement: float = 0.95  # share of sample pairs ordered as fp32 orders them


def quality(got: np.ndarray, want: np.ndarray, kind: str, seed: int = 0) -> dict[str, float]:
    """How close reduced-precision outputs are to fp32's, sample by sample (``kind``: the
    model's output kind, sigmoid, softmax or score)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ValueError(f"outputs of shape {got.shape} against fp32's {want.shape}")
    z, z32 = logits(got, kind).ravel(), logits(want, kind).ravel()
    spread = float(z32.std())
    with np.errstate(invalid="ignore"):
        dz = np.abs(z - z32)
    dp = np.abs(got.astype(np.float64) - want).ravel()
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, z32.size, EVAL_PAIRS), rng.integers(0, z32.size, EVAL_PAIRS)
    keep = z32[i] != z32[j]
    same = np.sign(z[i] - z[j])[keep] == np.sign(z32[i] - z32[j])[keep]
    return {"quality_logit_mean": float(dz.mean() / spread), "quality_logit_max": float(dz.max() / spread),
            "quality_pair_agreement": float(same.mean()) if same.size else 1.0,
            "quality_logit_spread": spread,
            "quality_max_abs": float(dp.max()), "quality_mean_abs": float(dp.mean())}


def quality_failure(q: dict[str, float], t: QualityThresholds) -> str | None:
    """Why a point's quality falls below the thresholds (one line), or None."""
    if not all(np.isfinite(v) for v in q.values()):
        return "outputs that are not finite numbers (NaN or infinity)"
    if q["quality_logit_max"] > t.max_logit:
        return (f"largest logit error {q['quality_logit_max']:.3g} of fp32's spread against fp32 "
                f"(threshold {t.max_logit})")
    if q["quality_logit_mean"] > t.mean_logit:
        return (f"mean logit error {q['quality_logit_mean']:.3g} of fp32's spread against fp32 "
                f"(threshold {t.mean_logit})")
    if q["quality_pair_agreement"] < t.pair_agreement:
        return (f"{q['quality_pair_agreement']:.1%} of sample pairs ordered as fp32 orders them "
                f"(threshold {t.pair_agreement:.0%})")
    return None


def evaluation_batches(inputs: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """The evaluation set cut into whole batches of the timed size (a static-shape stack runs
    exactly the model it times); a tail shorter than ``batch`` is left out."""
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + batch] for k, v in inputs.items()} for i in range(0, n - batch + 1, batch)]
