"""What a Ray cluster costs a sweep: the same tiny sweep locally and on a local test cluster (a
head and one node with one CPU, ray.cluster_utils), side by side in one run.

    python benchmarks/ray_overhead.py [--repeats 3]

Prints the cluster's start-up time, each sweep's wall time, and the cluster's overhead per
(model, backend) task (cluster wall minus local wall, over the number of tasks)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rechar.measure.timing import TimingOptions
from rechar.sweep import RunOptions, run_sweep

FAST = TimingOptions(warmup_iters=2, warmup_seconds=0.0, min_iters=20, min_seconds=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    print(f"cluster start (head + one node): {time.perf_counter() - start:.1f} s")
    base = dict(models=["ncf", "din"], backends=["ort-cpu", "torch"], batch_sizes=[1, 16], scale="tiny", timing=FAST,
                exports_dir=str(tmp / "exports"), threads=1)
    tasks = len(base["models"]) * len(base["backends"])
    run_sweep(RunOptions(**base), tmp / "warm")  # exports and first imports, not timed
    local, remote = [], []
    for i in range(args.repeats):  # interleaved, so that a drift of the machine hits both alike
        for where, times, extra in (("local", local, {}), ("cluster", remote, {"ray_address": cluster.address})):
            t = time.perf_counter()
            run_sweep(RunOptions(**base, **extra), tmp / f"{where}-{i}")
            times.append(time.perf_counter() - t)
    lo, re_ = statistics.median(local), statistics.median(remote)
    print(f"sweep of {tasks} (model, backend) workers, median of {args.repeats}: local {lo:.2f} s, "
          f"cluster {re_:.2f} s, overhead {(re_ - lo) / tasks:.2f} s per task ({re_ / lo:.2f}x)")
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
