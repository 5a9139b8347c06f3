"""The parity gate: a stack's outputs must equal eager PyTorch's before it is timed."""

from __future__ import annotations

import numpy as np

#: Gate tolerance against eager PyTorch. Outputs are probabilities; fp32 kernels of different
#: frameworks differ by summation order (seen up to ~1e-6), far inside this.
GATE_ATOL = 1e-4
GATE_RTOL = 1e-3


def compare(got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> tuple[bool, float]:
    """Whether ``got`` matches ``want`` within the tolerance, and the largest absolute error."""
    if got.shape != want.shape:
        return False, float("inf")
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    return bool(np.allclose(got, want, atol=atol, rtol=rtol)), err
