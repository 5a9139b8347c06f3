"""Starting a worker process and watching it: a sweep's, a cluster node's and a serving run's
workers alike.

The worker appends each finished point (or trial) to a log in the run folder; while it runs, the
supervisor restarts the worker's clock whenever that log grows, and kills a worker that goes
``timeout`` seconds without finishing anything. Ctrl-C kills the worker (the point it was
measuring is abandoned, finished ones are on disk) and is raised again.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rechar.jsonfile import write_json_atomic


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    returncode: int | None
    timed_out: bool
    log_path: Path

    def error(self, timeout: float, unit: str = "point") -> str:
        """Why the worker's unfinished points (or trials) were not measured, in one line."""
        if self.timed_out:
            return f"killed: no {unit} finished within the {timeout:g} s timeout"
        return f"worker exited with {describe_exit(self.returncode)}: {tail(self.log_path)}"


def run_worker_process(module: str, spec: dict[str, Any], spec_path: Path, log_path: Path, env: dict[str, str],
                       timeout: float, progress_marker: Callable[[], Any],
                       on_tick: Callable[[], None] = lambda: None, prefix: list[str] = ()) -> WorkerExit:
    """Write ``spec`` to ``spec_path``, run ``python -m module spec_path`` with its output appended
    to ``log_path``, and wait for it; ``progress_marker()`` changes whenever the worker finished
    something (the clock restarts), ``on_tick`` is called every quarter second; ``prefix`` runs
    the worker under another program (valgrind)."""
    write_json_atomic(spec_path, spec)
    timed_out = False
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([*prefix, sys.executable, "-m", module, str(spec_path)],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        marker = progress_marker()
        try:
            while proc.poll() is None:
                if progress_marker() != marker:
                    marker = progress_marker()
                    deadline = time.monotonic() + timeout
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    timed_out = True
                    break
                time.sleep(0.25)
                on_tick()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    return WorkerExit(proc.returncode, timed_out, log_path)


def file_sizes(paths: list[Path]) -> tuple[int, ...]:
    """A progress marker: the sizes of the logs a worker appends to."""
    return tuple(p.stat().st_size if p.exists() else 0 for p in paths)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def tail(path: Path, lines: int = 1, limit: int = 400) -> str:
    """The last line(s) of a worker's log, for an error record."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    last = " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"
    return last[-limit:]
