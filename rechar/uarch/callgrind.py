"""The simulation pass of one point: a few steady-state calls under callgrind's cache and branch
simulation, attributed to operators, in the worker process that Valgrind runs.

The sweep starts the worker as ``valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes
--branch-sim=yes --I1=.. --D1=.. --LL=.. python -m rechar.sweep.worker SPEC``
(``valgrind_command``). Without instrumentation Valgrind runs the worker's loading, gating and
warm-up fast; around each point ``simulate_call`` turns instrumentation on (client requests,
rechar.uarch.client), runs ``warm_calls`` calls to fill the simulated caches and predictors,
zeroes the counts, runs ``calls`` calls on the point's input pool, dumps the counts to a file of
their own and turns instrumentation off again. The dump is parsed and attributed
(rechar.uarch.profile, .attribute) in the same process.

Valgrind does not emulate AVX-512: its CPUID reports AVX2 at most, so oneDNN, MLAS and Eigen
select their AVX2 kernels under it. ``isa()`` records what the process saw: PyTorch's CPU
capability and the SIMD extensions NumPy's run-time dispatch detected (both read CPUID in the
simulated process).
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rechar.errors import UserError
from rechar.uarch import client
from rechar.uarch.attribute import attribute
from rechar.uarch.machines import Machine
from rechar.uarch.profile import EVENTS, parse
from rechar.uarch.symbols import Resolver

#: samples a point's simulated calls cover at least (batch 1: 16 calls; batch >= 16: one call),
#: and the most calls: a small-scale point's pass stays well under a minute
TARGET_SAMPLES = 16
MAX_CALLS = 16
WARM_CALLS = 1
DUMP_PREFIX = "callgrind.out"


def valgrind_path() -> str | None:
    return shutil.which("valgrind")


def require_valgrind() -> str:
    """valgrind's path, or a one-line error saying how to install it."""
    path = valgrind_path()
    if path is None:
        raise UserError("valgrind not found: the simulation pass (--uarch) runs the workers under callgrind; "
                        "install it (Debian/Ubuntu: apt-get install valgrind)")
    if not client.supported():
        raise UserError(f"the simulation pass drives callgrind with x86-64 client requests; this machine is "
                        f"{os.uname().machine}")
    return path


def valgrind_version(path: str | None = None) -> str:
    try:
        done = subprocess.run([path or require_valgrind(), "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"valgrind --version failed: {e}") from None


#: The worker's environment under Valgrind, which emulates AVX2 at most: Inductor compiles its
#: kernels with g++ outside Valgrind and ``-march=native`` by default, which on an AVX-512 host
#: emits instructions Valgrind cannot run (SIGILL). x86-64-v3 is AVX2 + FMA + BMI, what it runs.
UARCH_ENV = {"TORCHINDUCTOR_CPP_MARCH": "x86-64-v3"}


def valgrind_command(machine: Machine, dump_dir: str | Path) -> list[str]:
    """The prefix that runs a Python command under callgrind with ``machine``'s geometry, the
    counts of each point dumped into ``dump_dir``."""
    return [require_valgrind(), "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", "--branch-sim=yes",
            *machine.valgrind_flags(), f"--callgrind-out-file={Path(dump_dir).resolve()}/{DUMP_PREFIX}.%p"]


def calls_for(batch: int) -> int:
    return max(1, min(MAX_CALLS, math.ceil(TARGET_SAMPLES / max(batch, 1))))


def isa() -> dict[str, Any]:
    """The SIMD extensions this process's CPUID offered (under Valgrind: what it emulates)."""
    out: dict[str, Any] = {}
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            features = {}
    simd = [f for f in ("SSE42", "AVX", "F16C", "FMA3", "AVX2", "AVX512F", "AVX512_SKX", "AVX512_CLX",
                        "AVX512_CNL", "AVX512_ICL", "AVX512_SPR") if features.get(f)]
    out["cpuid_simd"] = simd
    out["widest"] = simd[-1] if simd else None
    if "torch" in sys.modules:
        try:
            out["torch_cpu_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
        except Exception:  # an old torch without the query
            pass
    return out


class Simulation:
    """The in-worker side: counts each point's calls into a dump file of its own."""

    def __init__(self, dump_dir: str | Path):
        if not client.running_on_valgrind():
            raise RuntimeError("the uarch pass must run under valgrind --tool=callgrind (the sweep starts it so)")
        self.pid = os.getpid()
        self.dump_dir = Path(dump_dir)  # valgrind_command's --callgrind-out-file folder
        self.dumps = 0

    def simulate_call(self, call: Callable[[], Any], calls: int, warm_calls: int = WARM_CALLS,
                      label: str = "rechar") -> tuple[Path, float]:
        """Simulate ``calls`` calls after ``warm_calls`` simulated but uncounted ones; the dump
        file and the wall seconds the simulated calls took."""
        text = client.label(label)
        # Python's cyclic garbage collector runs when allocations cross a threshold, wherever
        # that falls: inside one point's window and not the next (tens of thousands of
        # instructions, 2% of a small call). Collected before, off during: the figures repeat.
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        client.start_instrumentation()
        try:
            for _ in range(warm_calls):
                call()
            client.zero_stats()
            for _ in range(calls):
                call()
            client.dump_stats_at(text)
        finally:
            client.stop_instrumentation()
            gc.enable()
        seconds = time.perf_counter() - start
        self.dumps += 1
        return self._dump_path(self.dumps), seconds

    def _dump_path(self, n: int) -> Path:
        return self.dump_dir / f"{DUMP_PREFIX}.{self.pid}.{n}"


def summarize_natively(dump: Path, calls: int, batch: int, machine_record: dict[str, Any]) -> dict[str, Any]:
    """``summarize`` in a child process: Valgrind does not follow a child's exec
    (--trace-children=no), so the parsing and attribution run at native speed instead of on
    Valgrind's translator (measured: 20-30 s of a point's pass for PyTorch at small scale)."""
    done = subprocess.run([sys.executable, "-m", "rechar.uarch.summarize", str(dump), str(calls), str(batch)],
                          input=json.dumps(machine_record), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"summarizing {dump.name} failed: {lines[-1] if lines else done.returncode}")
    return json.loads(done.stdout)


def summarize(dump: Path, calls: int, batch: int, machine_record: dict[str, Any],
              resolver: Resolver | None = None) -> dict[str, Any]:
    """The record of one simulated point: totals, per-category and per-op event counts, how
    much was attributed, and the dump's own header facts."""
    profile = parse(dump)
    result = attribute(profile, resolver)
    vec = lambda cost: {e: int(round(float(cost[profile.events.index(e)]))) if e in profile.events else 0  # noqa: E731
                        for e in EVENTS}
    by_op = sorted(result.by_op.items(), key=lambda kv: -kv[1][0])
    return {
        "calls": calls, "batch": batch, "machine": machine_record,
        "total": vec(result.total), "categories": {c: vec(v) for c, v in result.by_category().items()},
        "ops": {op: vec(v) for op, v in by_op},
        "coverage": result.coverage(),
        "unattributed_functions": result.unattributed_functions,
        "kernel_classes_named": len(result.kernel_classes),
        "simulated_geometry": {k.split()[0]: v for k, v in profile.header.items() if k.endswith("cache")},
        "trigger": profile.header.get("Trigger"),
    }

