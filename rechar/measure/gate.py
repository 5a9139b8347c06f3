"""The parity gate: a stack's outputs must equal eager PyTorch's before it is timed.

Set against numerical noise, not against the outputs' size: outputs are compared as logits
(rechar.models.outputs.compare). The calibrated models' logits spread with a standard deviation
of ~1.5 (rechar.models.calibration), and fp32 kernels of different stacks differ from eager
PyTorch by summation order: at most ~9e-6 in logits on the eight models at tiny and small scale
(ONNX Runtime against eager PyTorch; each point records its ``gate_margin``, the largest error
over the tolerance), while the faults the gate exists for (an embedding table indexed off by one
row, a hidden layer drawn again, the output bias moved by 2e-3) move logits by 2e-3 or far more
(tests/test_gate.py plants each on every model). Hence an absolute logit tolerance of 1e-4:
about 11x the largest difference seen between stacks, 20x below the smallest planted fault.

What the gate cannot see: a fault whose effect on the outputs is itself below rounding noise. With
random weights DIEN's attention scores barely move its output: drawing its attention unit's first
layer again moved the logits by 6e-5 at small scale (0.6x the tolerance), so such a stack would
pass; the same fault in any main MLP layer moves them past 5x the tolerance on every model.
"""

from __future__ import annotations

from rechar.models.outputs import compare

GATE_ATOL = 1e-4
GATE_RTOL = 1e-5

__all__ = ["GATE_ATOL", "GATE_RTOL", "compare"]
