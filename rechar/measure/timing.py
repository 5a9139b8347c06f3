"""The timing loop and its statistics.

Only the backend's prepared call sits between the two clock reads; inputs were placed on the
device before, outputs are converted after. Warm-up runs until both an iteration count and a
time have passed (first calls allocate, compile and fill caches); measurement likewise, so that
fast points get many samples and slow points still get a minimum.

A time budget (``max_seconds``) bounds both for the slowest points, as pytest-benchmark's
``max_time`` does: a call of seconds (HSTU at batch 1024 on eager PyTorch takes ~10 s) would
otherwise spend ``min_iters`` x 10 s in one point. Past the budget a loop stops, but never before
MIN_WARMUP_CALLS warm-up calls (the first allocates and compiles) and MIN_TIMED_CALLS timed ones
(fewer give no usable median); each point records how many calls it timed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from rechar.errors import UserError


@dataclasses.dataclass(frozen=True)
class TimingOptions:
    warmup_iters: int = 10
    warmup_seconds: float = 0.2
    min_iters: int = 50
    min_seconds: float = 1.0
    max_iters: int = 100_000  # bounds memory and time for microsecond-scale calls
    max_seconds: float | None = 30.0  # each of warm-up and timing stops past this (None: no budget; runs before it)

    def validate(self) -> None:
        if self.max_seconds is not None and self.max_seconds < self.min_seconds:
            raise UserError(f"the time budget per point ({self.max_seconds:g} s) is below its minimum timed "
                            f"seconds ({self.min_seconds:g} s)")


MIN_WARMUP_CALLS = 2
MIN_TIMED_CALLS = 10


def time_call(call: Callable[[], Any], options: TimingOptions) -> np.ndarray:
    """Latency of every timed iteration of ``call``, in nanoseconds, after its warm-up."""
    warm_up(call, options)
    return timed_loop(call, options)


def warm_up(call: Callable[[], Any], options: TimingOptions) -> None:
    clock = time.perf_counter_ns
    now = clock()
    deadline, budget_end = now + int(options.warmup_seconds * 1e9), _budget_end(now, options)
    done = 0
    while done < options.warmup_iters or now < deadline:
        if done >= MIN_WARMUP_CALLS and now >= budget_end:
            break
        call()
        done += 1
        now = clock()


def timed_loop(call: Callable[[], Any], options: TimingOptions) -> np.ndarray:
    """The timed iterations alone (no warm-up), in nanoseconds."""
    clock = time.perf_counter_ns
    latencies = []
    append = latencies.append
    now = clock()
    end, budget_end = now + int(options.min_seconds * 1e9), _budget_end(now, options)
    n = 0
    # One clock read ends a call's latency and decides whether to go on.
    while n < options.min_iters or (now < end and n < options.max_iters):
        if n >= MIN_TIMED_CALLS and now >= budget_end:
            break
        start = clock()
        call()
        now = clock()
        append(now - start)
        n += 1
    return np.asarray(latencies, dtype=np.int64)


def _budget_end(now_ns: int, options: TimingOptions) -> float:
    return float("inf") if options.max_seconds is None else now_ns + options.max_seconds * 1e9


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
