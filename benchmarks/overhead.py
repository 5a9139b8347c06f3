"""Is the harness what we measure? rechar's timed median vs a bare hand-written loop.

    python benchmarks/overhead.py [--model ncf] [--batch 1] [--rounds 7] [--threads 1]

For each CPU backend: load it as a sweep worker does, then alternate, in one process, between
rechar's timing loop (rechar.measure.timing.time_call over the backend's prepared call, which
steps through the point's input pool) and a bare loop calling the same framework object directly
on the same pool, picking each batch outside its timed region. Prints per-backend medians and
their ratio (target <= 1.05). Rounds alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import rechar.models as models
from rechar import hostinfo
from rechar.exporters import export
from rechar.stacks import BackendOptions, backend_class
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolSpec
from rechar.measure.timing import TimingOptions, time_call


def bare_loop(backend_name: str, backend, batches: list[dict[str, np.ndarray]], iters: int) -> np.ndarray:
    """The framework call written by hand, without rechar's prepared-call wrapper; the next batch
    of the pool is picked before the clock starts."""
    clock = time.perf_counter_ns
    out = np.empty(iters, dtype=np.int64)
    n = len(batches)
    if backend_name == "torch":
        import torch

        model = backend.model
        feeds = [[torch.from_numpy(x[name]) for name in backend.input_names] for x in batches]
        with torch.inference_mode():
            for i in range(iters):
                tensors = feeds[i % n]
                t = clock(); model(*tensors); out[i] = clock() - t
    elif backend_name == "ort-cpu":
        session, names = backend.session, backend.output_names
        for i in range(iters):
            inputs = batches[i % n]
            t = clock(); session.run(names, inputs); out[i] = clock() - t
    elif backend_name == "tf":
        import tensorflow as tf

        feeds = [[tf.identity(tf.constant(x[name])) for name in backend.input_names] for x in batches]
        fn = backend.lowered.function.get_concrete_function(*feeds[0])  # as the backend calls it
        for i in range(iters):
            tensors = feeds[i % n]
            t = clock(); fn(*tensors); out[i] = clock() - t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ncf", choices=models.names())
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2000, help="timed iterations per round and side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", action="append", default=None)
    args = parser.parse_args()

    model = models.get(args.model, scale=args.scale)
    exported = export(args.model, args.scale, out="exports")
    cache = hostinfo.last_level_cache_bytes() or FALLBACK_CACHE_BYTES
    pool = PoolSpec(0, "uniform", 1.05, "fresh", cache).make(model, args.batch)
    timing = TimingOptions(warmup_iters=200, warmup_seconds=0.0, min_iters=args.iters, min_seconds=0.0)
    print(f"{args.model} ({args.scale}), batch {args.batch}, input pool of {len(pool)} batches, "
          f"{args.threads} thread(s), {args.rounds} alternating rounds of {args.iters} iterations")
    print("| backend | rechar median µs | bare loop median µs | ratio |")
    print("|---|---|---|---|")
    for name in args.backend or ["torch", "ort-cpu", "tf"]:
        reason = backend_class(name).unavailable_reason()
        if reason:
            print(f"| {name} | skipped: {reason} |||")
            continue
        backend = backend_class(name)(BackendOptions(threads=args.threads))
        backend.load(model, exported)
        call = backend.prepare(pool.batches)
        bare_loop(name, backend, pool.batches, 200)  # warm the bare path too
        ours, bare = [], []
        for _ in range(args.rounds):
            ours.append(float(np.median(time_call(call, timing))) / 1e3)
            bare.append(float(np.median(bare_loop(name, backend, pool.batches, args.iters))) / 1e3)
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"| {name} | {o:.2f} | {b:.2f} | {o / b:.3f} |", flush=True)
        backend.close()


if __name__ == "__main__":
    main()
