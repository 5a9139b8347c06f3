"""CPU event counts of a worker with ``perf stat``: the study's microarchitecture level (IPC,
cache, TLB and branch misses, front-end and back-end stalls), per point.

Why the ``perf`` tool rather than a Python binding of perf_event_open or PAPI: perf ships with
the kernel's packages (Debian: linux-perf), knows each CPU's names for the generic events and
scales multiplexed counts; the bindings need a compiled library and know fewer CPUs.

perf attaches to the worker (``-p PID``) with its events disabled (``-D -1``) and listens on a
control FIFO; the worker enables counting around the counted iterations only and waits for
perf's acknowledgement each time, so perf's own start and the worker's setup are not counted.
perf counts the threads that exist when it attaches: the counting pass runs after the timing
pass, when every framework's thread pool is up.

Many machines, virtual ones above all, expose no hardware counters: perf reports them
``<not supported>``. The software events (task clock, page faults, context switches) still
count; a hardware event that did not count is recorded as missing with the reason, never as 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rechar.lifetime import die_with_parent

#: canonical name -> (perf's generic event, kind). perf maps generic events to each CPU's own.
EVENTS: dict[str, tuple[str, str]] = {
    "cycles": ("cycles", "hardware"),
    "instructions": ("instructions", "hardware"),
    "branches": ("branches", "hardware"),
    "branch_misses": ("branch-misses", "hardware"),
    "cache_references": ("cache-references", "hardware"),
    "cache_misses": ("cache-misses", "hardware"),
    "l1d_loads": ("L1-dcache-loads", "hardware"),
    "l1d_load_misses": ("L1-dcache-load-misses", "hardware"),
    "llc_loads": ("LLC-loads", "hardware"),
    "llc_load_misses": ("LLC-load-misses", "hardware"),
    "dtlb_load_misses": ("dTLB-load-misses", "hardware"),
    "stalled_cycles_frontend": ("stalled-cycles-frontend", "hardware"),
    "stalled_cycles_backend": ("stalled-cycles-backend", "hardware"),
    "task_clock_ms": ("task-clock", "software"),  # CPU time of all the worker's threads
    "context_switches": ("context-switches", "software"),
    "cpu_migrations": ("cpu-migrations", "software"),
    "page_faults": ("page-faults", "software"),
}
HARDWARE = [name for name, (_, kind) in EVENTS.items() if kind == "hardware"]
_BY_PERF_NAME = {perf_name: name for name, (perf_name, _) in EVENTS.items()}
#: seconds to wait for perf to start, acknowledge a command or write its totals
PERF_TIMEOUT = 20.0


class CounterError(RuntimeError):
    """perf could not count (not installed, not permitted, exited)."""


@dataclasses.dataclass
class Reading:
    """Totals over the enabled windows of one perf session."""

    counts: dict[str, float | None]  # canonical event -> count (None: did not count)
    running_pct: dict[str, float]  # canonical event -> % of the enabled time it was on a counter
    not_counted: dict[str, str]  # canonical event -> perf's word for it ("not supported", ...)


def parse_perf_csv(text: str) -> Reading:
    """perf stat's ``-x,`` output: ``value,unit,event,run-time,running-%,metric,metric-unit``;
    value is ``<not supported>`` or ``<not counted>`` where the event did not count. Comment and
    status lines ("Events enabled") are skipped; an event listed once per PMU on hybrid CPUs
    (``cpu_core/cycles/``, ``cpu_atom/cycles/``) is summed."""
    counts: dict[str, float | None] = {}
    running: dict[str, float] = {}
    not_counted: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3:
            continue
        name = _canonical(fields[2])
        if name is None:
            continue
        value = fields[0].strip()
        if value.startswith("<"):
            not_counted[name] = value.strip("<>")
            counts.setdefault(name, None)
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        counts[name] = (counts.get(name) or 0.0) + number
        not_counted.pop(name, None)
        if len(fields) > 4 and fields[4].strip():
            pct = float(fields[4])
            running[name] = min(running.get(name, pct), pct)
    return Reading(counts, running, not_counted)


def _canonical(event: str) -> str | None:
    event = event.strip()
    if event.count("/") >= 2:  # pmu/event/ -> event
        event = event.split("/")[1]
    event = event.split(":")[0]  # cycles:u -> cycles
    return _BY_PERF_NAME.get(event)


def perf_path() -> str | None:
    return shutil.which("perf")


@dataclasses.dataclass
class Support:
    """What perf can count on this machine, found by counting a trivial command."""

    perf: str | None
    usable: bool  # at least the software events count
    hardware: list[str]  # hardware events that count
    reason: str | None  # why counting is impossible, or why hardware events are missing

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def probe() -> Support:
    perf = perf_path()
    if perf is None:
        return Support(None, False, [], "perf not found: install it (Debian: apt-get install linux-perf)")
    events = ",".join(perf_name for perf_name, _ in EVENTS.values())
    try:
        done = subprocess.run([perf, "stat", "-x", ",", "-e", events, "--", "true"], capture_output=True,
                              text=True, timeout=PERF_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return Support(perf, False, [], f"perf stat failed: {e}")
    reading = parse_perf_csv(done.stderr)
    if done.returncode != 0 or reading.counts.get("task_clock_ms") is None:
        return Support(perf, False, [], f"perf stat cannot count here: {_first_error_line(done.stderr)}")
    hardware = [name for name in HARDWARE if reading.counts.get(name) is not None]
    missing = [name for name in HARDWARE if name not in hardware]
    reason = None
    if missing:
        word = reading.not_counted.get(missing[0], "not counted")
        reason = (f"hardware events not counted on this machine (perf: <{word}> for "
                  f"{', '.join(EVENTS[name][0] for name in missing)}); virtual machines often expose no "
                  f"performance counters")
    return Support(perf, True, hardware, reason)


def _first_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "," not in line]
    return lines[0] if lines else "no output"


class PerfSession:
    """perf stat attached to ``pid`` with every event disabled until ``enable()``.

        with PerfSession(os.getpid()) as perf:
            perf.enable(); work(); perf.disable()
        reading = perf.reading
    """

    def __init__(self, pid: int, events: dict[str, tuple[str, str]] = EVENTS):
        perf = perf_path()
        if perf is None:
            raise CounterError("perf not found: install it (Debian: apt-get install linux-perf)")
        self._dir = Path(tempfile.mkdtemp(prefix="rechar-perf-"))
        ctl, ack = self._dir / "ctl", self._dir / "ack"
        os.mkfifo(ctl)
        os.mkfifo(ack)
        # O_RDWR: opening a FIFO so never blocks, whether or not perf got as far as opening it
        self._ctl = os.open(ctl, os.O_RDWR)
        self._ack = os.open(ack, os.O_RDWR)
        self._out = self._dir / "counts.csv"
        with open(self._dir / "stderr", "wb") as stderr:
            self._proc = subprocess.Popen(
                [perf, "stat", "-x", ",", "-D", "-1", "--control", f"fifo:{ctl},{ack}", "-o", str(self._out),
                 "-e", ",".join(perf_name for perf_name, _ in events.values()), "-p", str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                preexec_fn=die_with_parent,  # perf must not outlive the worker it counts
            )
        self.reading: Reading | None = None
        self._closed = False

    def enable(self) -> None:
        self._command("enable")

    def disable(self) -> None:
        self._command("disable")

    def _command(self, word: str) -> None:
        os.write(self._ctl, f"{word}\n".encode())
        deadline = time.monotonic() + PERF_TIMEOUT
        got = b""
        while b"ack" not in got:
            if self._proc.poll() is not None:
                raise CounterError(f"perf stat exited ({self._proc.returncode}): {self._stderr()}")
            ready, _, _ = select.select([self._ack], [], [], 0.1)
            if ready:
                got += os.read(self._ack, 64)
            elif time.monotonic() > deadline:
                raise CounterError(f"perf stat did not acknowledge {word!r} within {PERF_TIMEOUT:g} s")

    def _stderr(self) -> str:
        try:
            return _first_error_line((self._dir / "stderr").read_text(errors="replace"))
        except OSError:
            return "no output"

    def close(self) -> Reading | None:
        """Stop perf and read its totals (once; later calls return the same reading)."""
        if self._closed:
            return self.reading
        self._closed = True
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)  # perf writes its totals on SIGINT
                try:
                    self._proc.wait(PERF_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                    raise CounterError("perf stat did not stop on SIGINT") from None
            try:
                self.reading = parse_perf_csv(self._out.read_text(errors="replace"))
            except OSError:
                raise CounterError(f"perf stat wrote no counts: {self._stderr()}") from None
            return self.reading
        finally:
            os.close(self._ctl)
            os.close(self._ack)
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "PerfSession":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self._proc.kill()  # the counted call failed: its error is the one to report
        self._proc.wait()
        with contextlib.suppress(CounterError, OSError):
            self.close()


def count_call(call: Callable[[], Any], min_seconds: float, min_iters: int = 10) -> dict[str, Any]:
    """Run ``call`` at least ``min_iters`` times and ``min_seconds`` with this process's events
    counted; the loop around the call is counted too (a few hundred instructions per call)."""
    with PerfSession(os.getpid()) as perf:
        perf.enable()
        start = time.perf_counter()
        iterations = 0
        while iterations < min_iters or time.perf_counter() - start < min_seconds:
            call()
            iterations += 1
        seconds = time.perf_counter() - start
        perf.disable()
    reading = perf.reading
    return {"iterations": iterations, "seconds": seconds, "counts": reading.counts,
            "running_pct": reading.running_pct, "not_counted": reading.not_counted}
