"""What else the machine did while a point was timed: other processes' CPU time, the
hypervisor's steal time, and the worker's involuntary context switches.

A shared machine makes a comparison lie without saying so: another job on one core can make a
point 100x slower and every figure of the run still reads "ok". So each timed window is
bracketed by two readings of the machine's CPU accounting (``/proc/stat``: busy and steal
time of all CPUs) and of the worker's own (its CPU time, all threads, and its involuntary
context switches). What others took is the machine's busy time minus the worker's; a point is
*noisy* when others took more than ``NoiseThresholds.others_share`` of the machine's cores or
steal exceeded ``steal_share``, and the point records why.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path
from typing import Any

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: /proc/stat counts in ticks (10 ms): over a shorter window the shares would be mostly rounding,
#: so such a point gets no contention figures (None), rather than a guess.
MIN_WINDOW_SECONDS = 0.25


@dataclasses.dataclass(frozen=True)
class NoiseThresholds:
    others_share: float = 0.10  # CPU time of other processes, as a share of all the machine's cores
    steal_share: float = 0.05  # time the hypervisor gave the machine's vCPUs to other guests

    def validate(self) -> None:
        from rechar.errors import UserError

        for name, value in dataclasses.asdict(self).items():
            if not 0 < value <= 1:
                raise UserError(f"noise threshold {name} must be in (0, 1], got {value}")


@dataclasses.dataclass(frozen=True)
class Reading:
    wall: float  # seconds, monotonic
    busy_ticks: int  # all CPUs: user, nice, system, irq, softirq (guest time is inside user)
    steal_ticks: int
    cpus: int
    own_cpu: float  # this process's CPU seconds, every thread
    own_involuntary: int  # this process's involuntary context switches


def read() -> Reading | None:
    """A reading now; None where the machine keeps no /proc/stat (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    fields = [int(v) for v in lines[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Reading(time.monotonic(), user + nice + system + irq + softirq, steal, cpus,
                   time.process_time(), usage.ru_nivcsw)


def between(start: Reading | None, end: Reading | None, thresholds: NoiseThresholds) -> dict[str, Any]:
    """The point's contention fields over the window from ``start`` to ``end``."""
    if start is None or end is None or end.wall - start.wall < MIN_WINDOW_SECONDS:
        return {"others_cpu_share": None, "steal_share": None, "involuntary_switches": None, "noisy": None,
                "noise": None}
    capacity = (end.wall - start.wall) * start.cpus  # CPU seconds the machine had
    busy = (end.busy_ticks - start.busy_ticks) / TICKS_PER_SECOND
    others = max(0.0, busy - (end.own_cpu - start.own_cpu)) / capacity
    steal = (end.steal_ticks - start.steal_ticks) / TICKS_PER_SECOND / capacity
    reasons = []
    if others > thresholds.others_share:
        reasons.append(f"other processes used {100 * others:.0f}% of the CPUs (threshold "
                       f"{100 * thresholds.others_share:.0f}%)")
    if steal > thresholds.steal_share:
        reasons.append(f"the hypervisor stole {100 * steal:.0f}% of the CPU time (threshold "
                       f"{100 * thresholds.steal_share:.0f}%)")
    return {"others_cpu_share": others, "steal_share": steal,
            "involuntary_switches": end.own_involuntary - start.own_involuntary,
            "noisy": bool(reasons), "noise": "; ".join(reasons) or None}
