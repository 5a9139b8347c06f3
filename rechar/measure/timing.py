"""The timing loop and its statistics.

Only the backend's prepared call sits between the two clock reads; inputs were placed on the
device before, outputs are converted after. Warm-up runs until both an iteration count and a
time have passed (first calls allocate, compile and fill caches); measurement likewise, so that
fast points get many samples and slow points still get a minimum.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class TimingOptions:
    warmup_iters: int = 10
    warmup_seconds: float = 0.2
    min_iters: int = 50
    min_seconds: float = 1.0
    max_iters: int = 100_000  # bounds memory and time for microsecond-scale calls


def time_call(call: Callable[[], Any], options: TimingOptions) -> np.ndarray:
    """Latency of every timed iteration of ``call``, in nanoseconds, after its warm-up."""
    warm_up(call, options)
    return timed_loop(call, options)


def warm_up(call: Callable[[], Any], options: TimingOptions) -> None:
    clock = time.perf_counter_ns
    deadline = clock() + int(options.warmup_seconds * 1e9)
    done = 0
    while done < options.warmup_iters or clock() < deadline:
        call()
        done += 1


def timed_loop(call: Callable[[], Any], options: TimingOptions) -> np.ndarray:
    """The timed iterations alone (no warm-up), in nanoseconds."""
    clock = time.perf_counter_ns
    latencies = []
    append = latencies.append
    end = clock() + int(options.min_seconds * 1e9)
    while len(latencies) < options.min_iters or (clock() < end and len(latencies) < options.max_iters):
        start = clock()
        call()
        append(clock() - start)
    return np.asarray(latencies, dtype=np.int64)


def summarize(latencies_ns: np.ndarray, batch: int) -> dict[str, float]:
    """Percentiles and moments in microseconds; throughput in samples per second."""
    us = latencies_ns / 1e3
    return {
        "iterations": int(us.size),
        "p50_us": float(np.percentile(us, 50)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "std_us": float(us.std(ddof=1)) if us.size > 1 else 0.0,
        "min_us": float(us.min()),
        "max_us": float(us.max()),
        "throughput_sps": float(batch * 1e6 / us.mean()),
        "timed_seconds": float(us.sum() / 1e6),
    }
