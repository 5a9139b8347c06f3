"""The parity gate's margin per point: how close each correct stack comes to the tolerance.

    python benchmarks/gate_margins.py BACKEND,... [MODEL,...] [SCALE]

A short sweep (batch 1 and 64, one thread, minimal timing) whose points record ``gate_margin``
(largest logit error / tolerance) and ``gate_logit_error``; printed per point.
reports/runs/trust/gate-margins-tiny.txt holds the output for torch,ort-cpu,tf,openvino at tiny scale.
"""

from __future__ import annotations

import sys

from rechar.measure.timing import TimingOptions
from rechar.results.store import read_point_log
from rechar.sweep import RunOptions, run_sweep


def main() -> None:
    backends = sys.argv[1].split(",")
    names = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else None
    scale = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    options = RunOptions(scale=scale, backends=backends, batch_sizes=[1, 64], threads=1,
                         timing=TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=5, min_seconds=0.0),
                         **({"models": names} if names else {}))
    run_dir = run_sweep(options, log=print)
    for r in read_point_log(run_dir):
        print(f"{r['model']:10s} {r['backend']:16s} b{r['batch']:<4d} {r['status']:8s} "
              f"margin {r.get('gate_margin') or float('nan'):.3f} logit error {r.get('gate_logit_error') or float('nan'):.2e} "
              f"{(r.get('error') or '')[:120]}")


if __name__ == "__main__":
    main()
