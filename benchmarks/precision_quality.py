"""The reduced-precision quality gate's figures for every offered variant on every model.

    python benchmarks/precision_quality.py SCALE BATCH [MODEL,...]

As the worker computes them (rechar.measure.quality): the 2,048-sample evaluation set cut into
batches of BATCH, run through each variant's prepared call, compared with eager fp32 PyTorch in
logits. Exports go to ./exports. reports/runs/trust/ holds the output at small scale, batch 256.
"""

from __future__ import annotations

import sys

import numpy as np

import rechar.models as models
from rechar.exporters import export
from rechar.measure.quality import EVAL_SAMPLES, evaluation_batches
from rechar.stacks import BackendOptions, backend_class, backend_reason
from rechar.stacks.variants import split_backend
from rechar.sweep.worker import quality_gate

VARIANTS = ["torch@bf16", "torch@int8", "ort-cpu@int8", "openvino@bf16"]


def main(scale: str, batch: int, names: list[str]) -> None:
    for name in names:
        model = models.get(name, scale=scale)
        chunks = evaluation_batches(model.make_inputs(EVAL_SAMPLES, seed=11), batch)
        want = np.concatenate([model.predict(c) for c in chunks])
        result = export(name, scale, None, "exports")
        for variant in VARIANTS:
            reason = backend_reason(variant)
            if reason:
                print(f"{name:10s} {variant:14s} skipped: {reason}")
                continue
            cls = backend_class(variant)
            backend = cls(BackendOptions(threads=2, precision=split_backend(variant)[1]))
            backend.load(model if cls.uses_torch_model else None, result)
            q = quality_gate(backend, chunks, want, model.output_kind)
            backend.close()
            print(f"{name:10s} {variant:14s} mean {q.get('quality_logit_mean', float('nan')):.4f} "
                  f"max {q.get('quality_logit_max', float('nan')):.3f} pairs {q.get('quality_pair_agreement', float('nan')):.4f} "
                  f"dp_max {q.get('quality_max_abs', float('nan')):.4f} {q['quality_error'] or 'PASS'}", flush=True)


if __name__ == "__main__":  # ORT's int8 quantizer starts a process of its own (spawn)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",") if len(sys.argv) > 3 else models.names())
