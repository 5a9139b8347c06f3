"""Does the memory allocator change what we measure?

For each allocator (glibc's default, jemalloc, tcmalloc; those installed), in alternating rounds
so that machine noise hits all alike, one sweep of the chosen models on the CPU backends with the
counting pass; prints per point the median p50 over rounds, page faults per inference, and the
p50 relative to the default allocator.

    python benchmarks/allocator.py [--models din,dlrm-rmc2,dien] [--batch-sizes 1,1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from rechar.analysis.counters import load_counters
from rechar.errors import UserError
from rechar.measure import allocator
from rechar.stacks import select_backends
from rechar.measure.timing import TimingOptions
from rechar.results.store import load_points
from rechar.sweep import RunOptions, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="din,dlrm-rmc2,dien")
    parser.add_argument("--backends", default="torch,ort-cpu,tf")
    parser.add_argument("--batch-sizes", default="1,1024")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--exports", default="exports")
    args = parser.parse_args()

    choices = []
    for choice in allocator.CHOICES:
        try:
            allocator.preload(choice)
            choices.append(choice)
        except UserError as e:
            print(f"skipping {choice}: {e}")
    backends, skipped = select_backends(args.backends.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for choice in choices:
                options = RunOptions(models=args.models.split(","), backends=backends, scale=args.scale,
                                     batch_sizes=[int(b) for b in args.batch_sizes.split(",")], malloc=choice,
                                     exports_dir=args.exports, counter_seconds=0.5,
                                     timing=TimingOptions(min_seconds=1.0))
                run_dir = run_sweep(options, Path(tmp) / f"{choice}-{r}")
                points = load_points(run_dir)
                counts = load_counters(run_dir)[["model", "backend", "batch", "page_faults_per_iter",
                                                 "cpus_utilized"]]
                rows.append(points[["model", "backend", "batch", "status", "p50_us"]]
                            .merge(counts, on=["model", "backend", "batch"], how="left")
                            .assign(malloc=choice, round=r))
                print(f"round {r}, {choice}: {len(points)} points", flush=True)
    df = pd.concat(rows, ignore_index=True)
    keys = ["model", "backend", "batch"]
    base = df[df["malloc"] == "default"].set_index([*keys, "round"])["p50_us"]
    df["p50_vs_default"] = df["p50_us"].values / base.reindex(
        pd.MultiIndex.from_frame(df[[*keys, "round"]])).values
    table = df.groupby([*keys, "malloc"], as_index=False).agg(
        p50_ms=("p50_us", lambda v: v.median() / 1e3), vs_default=("p50_vs_default", "median"),
        page_faults_per_iter=("page_faults_per_iter", "median"), cpus_busy=("cpus_utilized", "median"))
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
