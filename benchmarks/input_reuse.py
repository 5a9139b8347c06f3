"""How optimistic is replaying one batch? The same backend timed on one replayed batch and on a
fresh input pool, side by side.

    python benchmarks/input_reuse.py [--models dlrm-rmc1,dlrm-rmc2,wnd,din] [--batch-sizes 1,16,256]
                                     [--backends torch,ort-cpu,tf] [--rounds 3] [--threads 1]

For each model, every backend is loaded once in this process; then for each batch size, rounds
alternate between the call that replays the pool's first batch (``--inputs replay``) and the call
that cycles the whole pool (``--inputs fresh``, rechar's default), both through rechar's timing
loop. Prints the median over rounds of each side's p50, their ratio (fresh / replay), and, per
model and batch, which stack is fastest under each mode.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import rechar.models as models
from rechar import hostinfo
from rechar.exporters import export
from rechar.stacks import BackendOptions, backend_class
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolSpec
from rechar.measure.timing import TimingOptions, time_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dlrm-rmc1,dlrm-rmc2,wnd,din")
    parser.add_argument("--batch-sizes", default="1,16,256")
    parser.add_argument("--backends", default="torch,ort-cpu,tf")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per side and round, at least")
    args = parser.parse_args()

    batches = [int(b) for b in args.batch_sizes.split(",")]
    cache = hostinfo.last_level_cache_bytes() or FALLBACK_CACHE_BYTES
    timing = TimingOptions(warmup_iters=10, warmup_seconds=0.1, min_iters=30, min_seconds=args.seconds)
    print(f"{args.scale} scale, {args.threads} thread(s), last-level cache {cache / 2**20:.0f} MiB, "
          f"{args.rounds} alternating rounds; p50 in µs, median over rounds")
    print("| model | backend | batch | pool batches | replay | fresh | fresh / replay |")
    print("|---|---|---:|---:|---:|---:|---:|")
    fastest = []
    for name in args.models.split(","):
        model = models.get(name, scale=args.scale)
        exported = export(name, args.scale, out="exports")
        pools = {b: PoolSpec(0, "uniform", 1.05, "fresh", cache).make(model, b) for b in batches}
        results = {}
        for backend_name in args.backends.split(","):
            reason = backend_class(backend_name).unavailable_reason()
            if reason:
                print(f"| {name} | {backend_name} | skipped: {reason} |||||")
                continue
            backend = backend_class(backend_name)(BackendOptions(threads=args.threads))
            backend.load(model, exported)
            for batch, pool in pools.items():
                calls = {"replay": backend.prepare([pool.first]), "fresh": backend.prepare(pool.batches)}
                p50 = {mode: [] for mode in calls}
                for _ in range(args.rounds):
                    for mode, call in calls.items():
                        p50[mode].append(float(np.median(time_call(call, timing))) / 1e3)
                replay, fresh = statistics.median(p50["replay"]), statistics.median(p50["fresh"])
                results[backend_name, batch] = replay, fresh
                print(f"| {name} | {backend_name} | {batch} | {len(pool)} | {replay:.1f} | {fresh:.1f} | "
                      f"{fresh / replay:.2f}× |", flush=True)
                del calls
            backend.close()
        for batch in batches:
            timed = {b: r for (b, bb), r in results.items() if bb == batch}
            if len(timed) > 1:
                by_replay = min(timed, key=lambda b: timed[b][0])
                by_fresh = min(timed, key=lambda b: timed[b][1])
                fastest.append(f"{name} batch {batch}: fastest on replay {by_replay}, on fresh {by_fresh}"
                               + ("" if by_replay == by_fresh else "  <- ranking flips"))
    print("\n" + "\n".join(fastest))


if __name__ == "__main__":
    main()
