"""What does ONNX Runtime's spinning thread pool buy, and what does it cost?

ort-cpu keeps every intra-op thread spinning between ops (ONNX Runtime's default, and rechar's:
the latency-optimal setting), so a run's counting pass shows it keeping all cores busy even at
batch 1. This measures the other setting (session.intra_op.allow_spinning = 0) side by side: for
each model and batch, in one process, alternating rounds of the default and the non-spinning
session; per round the p50 latency (rechar's timing loop) and the CPU time per inference (perf's
task clock over a counting pass). Prints medians over rounds and the ratios non-spinning/default.

    python benchmarks/ort_spinning.py [--models ncf,dlrm-rmc1,din] [--batch-sizes 1,64,1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import pandas as pd

import rechar.models as models
from rechar import hostinfo
from rechar.exporters import export
from rechar.stacks import BackendOptions
from rechar.measure import counters
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolSpec
from rechar.measure.timing import TimingOptions, time_call
from rechar.stacks.ort_backend import OrtCpuBackend


class NonSpinningOrt(OrtCpuBackend):
    def session_options(self):
        so = super().session_options()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ncf,dlrm-rmc1,din")
    parser.add_argument("--batch-sizes", default="1,64,1024")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exports", default="exports")
    args = parser.parse_args()
    if not counters.probe().usable:
        raise SystemExit(f"error: {counters.probe().reason}")

    cache = hostinfo.last_level_cache_bytes() or FALLBACK_CACHE_BYTES
    timing = TimingOptions(warmup_iters=10, warmup_seconds=0.2, min_iters=30, min_seconds=0.5)
    rows = []
    for name in args.models.split(","):
        model = models.get(name, scale=args.scale)
        exported = export(name, args.scale, out=args.exports)
        variants = {"spinning": OrtCpuBackend, "non-spinning": NonSpinningOrt}
        backends = {k: cls(BackendOptions(threads=args.threads)) for k, cls in variants.items()}
        for b in backends.values():
            b.load(None, exported)
        for batch in map(int, args.batch_sizes.split(",")):
            pool = PoolSpec(0, "uniform", 1.05, "fresh", cache).make(model, batch)  # as a run's timed calls cycle
            calls = {k: b.prepare(pool.batches) for k, b in backends.items()}
            for r in range(args.rounds):
                for variant, call in calls.items():
                    p50 = float(np.median(time_call(call, timing))) / 1e3
                    counted = counters.count_call(call, min_seconds=0.5)
                    cpu_ms = counted["counts"]["task_clock_ms"] / counted["iterations"]
                    rows.append({"model": name, "batch": batch, "round": r, "variant": variant,
                                 "p50_us": p50, "cpu_us_per_inference": cpu_ms * 1e3,
                                 "cpus_busy": counted["counts"]["task_clock_ms"] / (counted["seconds"] * 1e3)})
            print(f"{name} batch {batch} done", flush=True)
        for b in backends.values():
            b.close()
    df = pd.DataFrame(rows)
    table = df.groupby(["model", "batch", "variant"], as_index=False).median(numeric_only=True).drop(columns="round")
    wide = table.pivot(index=["model", "batch"], columns="variant")
    wide.columns = [f"{m} {v}" for m, v in wide.columns]
    per_round = df.pivot_table(index=["model", "batch", "round"], columns="variant", values=["p50_us", "cpu_us_per_inference"])
    ratios = pd.DataFrame({
        "p50 non-spinning/spinning": (per_round[("p50_us", "non-spinning")] / per_round[("p50_us", "spinning")]),
        "cpu non-spinning/spinning": (per_round[("cpu_us_per_inference", "non-spinning")]
                                      / per_round[("cpu_us_per_inference", "spinning")]),
    }).groupby(["model", "batch"]).agg(statistics.median)
    pd.set_option("display.width", 220)
    print(wide.join(ratios).reset_index().to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
