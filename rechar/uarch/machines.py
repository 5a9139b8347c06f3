"""Simulated machines: the cache geometry callgrind is given, and the latencies the cycle
estimate (rechar.uarch.cycles) charges.

Callgrind simulates two levels: first-level instruction and data caches (I1, D1) and one
last-level cache (LL). The LL given here is **one core's share** of the last level (its size
divided by the cores that share it): a worker's inference runs on one core's share of a busy
server's L3, and callgrind simulates one core (the simulation pass runs the frameworks with one
intra-op thread). The private L2 of these machines is not simulated; the cycle estimate charges
an L1 miss the L2's latency (the level most L1 misses hit in on a real machine), which
undercharges L1 misses that go on to the L3.

Callgrind requires a power-of-two number of sets (size / (ways x line)); a geometry that is not
is simulated with its sets rounded down to a power of two, and both are recorded.

Sources:
- Broadwell-EP (Xeon E5 v4): L1i/L1d 32 KB 8-way, 64 B lines; L2 256 KB; L3 2.5 MB per core,
  20-way, inclusive (AnandTech, "The Intel Xeon E5 v4 Review", 2016, and "The Intel Skylake-X
  Review", 2017, page 4). Latencies measured with LMBench on a Xeon E5-2699 v4 (2.2 GHz): L2
  12-15 cycles, memory 95 ns (AnandTech, "Intel Skylake EP vs AMD EPYC 7000", 2017, page 13).
- Cascade Lake-SP (2nd-generation Xeon Scalable, the Skylake-SP core and caches): L1i/L1d 32 KB
  8-way; L2 1 MB 16-way; L3 1.375 MB per core, 11-way, non-inclusive (AnandTech, Skylake-X
  review, page 4). Latencies of the Skylake-SP Xeon in the same LMBench comparison: L2 14-22
  cycles, memory 89-91 ns at 2.1 GHz.
- host: this machine's caches from /sys/devices/system/cpu/cpu0/cache (the last level divided by
  the CPUs listed in its shared_cpu_list). On a virtual machine these are what the hypervisor
  reports, and the real last level is shared with other tenants, so the share is optimistic.
  Its latencies are the first-generation AMD EPYC's of the LMBench comparison (L2 12 cycles,
  memory 96-98 ns at 2.2 GHz), a stand-in: they are not measured here.
- Branch misprediction penalty: 16 cycles on every machine, the order of magnitude of the
  pipeline refill measured on Intel cores (7-cpu.com: 15-16 cycles on Westmere); an assumption.
- Width: 4 instructions per cycle, the four issue slots per cycle that Intel's Top-down method
  counts (and the decode width of these cores).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rechar.errors import UserError

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


@dataclasses.dataclass(frozen=True)
class Cache:
    size: int  # bytes
    ways: int
    line: int  # bytes

    @property
    def sets(self) -> int:
        return self.size // (self.ways * self.line)

    def legal(self) -> "Cache":
        """This geometry with its sets rounded down to a power of two (callgrind's requirement)."""
        sets = self.sets
        if sets >= 1 and sets & (sets - 1) == 0 and self.size == sets * self.ways * self.line:
            return self
        power = 1 << max(sets.bit_length() - 1, 0)
        return Cache(power * self.ways * self.line, self.ways, self.line)

    def flag(self) -> str:
        return f"{self.size},{self.ways},{self.line}"


@dataclasses.dataclass(frozen=True)
class Machine:
    name: str
    description: str
    i1: Cache
    d1: Cache
    ll: Cache  # one core's share of the last level, as the machine has it
    l2_latency: float  # cycles an L1 miss costs (see the module docstring)
    memory_latency: float  # cycles a last-level miss costs
    branch_penalty: float  # cycles a mispredicted branch costs
    width: float  # instructions retired per cycle at best

    def simulated(self) -> dict[str, Cache]:
        return {"I1": self.i1.legal(), "D1": self.d1.legal(), "LL": self.ll.legal()}

    def valgrind_flags(self) -> list[str]:
        sim = self.simulated()
        return [f"--I1={sim['I1'].flag()}", f"--D1={sim['D1'].flag()}", f"--LL={sim['LL'].flag()}"]

    def record(self) -> dict[str, Any]:
        """What the run records: the machine's geometry, the one simulated, and the latencies."""
        return {
            "machine": self.name, "description": self.description,
            "geometry": {k: dataclasses.asdict(c) for k, c in {"I1": self.i1, "D1": self.d1, "LL": self.ll}.items()},
            "simulated_geometry": {k: dataclasses.asdict(c) for k, c in self.simulated().items()},
            "l2_latency": self.l2_latency, "memory_latency": self.memory_latency,
            "branch_penalty": self.branch_penalty, "width": self.width,
        }


_KB, _MB = 1024, 1024 * 1024

BROADWELL = Machine(
    "broadwell", "Intel Broadwell-EP (Xeon E5 v4), one core's 2.5 MB share of the L3",
    i1=Cache(32 * _KB, 8, 64), d1=Cache(32 * _KB, 8, 64), ll=Cache(5 * _MB // 2, 20, 64),
    l2_latency=12, memory_latency=round(95 * 2.2), branch_penalty=16, width=4,
)
CASCADELAKE = Machine(
    "cascadelake", "Intel Cascade Lake-SP (2nd-gen Xeon Scalable), one core's 1.375 MB share of the L3",
    i1=Cache(32 * _KB, 8, 64), d1=Cache(32 * _KB, 8, 64), ll=Cache(11 * _MB // 8, 11, 64),
    l2_latency=14, memory_latency=round(90 * 2.1), branch_penalty=16, width=4,
)
MACHINES = ("host", "broadwell", "cascadelake")


def _size(text: str) -> int:
    text = text.strip().upper()
    for suffix, factor in (("K", _KB), ("M", _MB), ("G", 1024 * _MB)):
        if text.endswith(suffix):
            return int(text[:-1]) * factor
    return int(text)


def _cpu_count(cpu_list: str) -> int:
    count = 0
    for part in filter(None, cpu_list.strip().split(",")):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def host(sysfs: Path = SYSFS_CACHE) -> Machine:
    """This machine's geometry from sysfs: L1i, L1d, and the highest level divided among the
    CPUs that share it."""
    caches: dict[tuple[int, str], tuple[Cache, int]] = {}
    try:
        for index in sorted(sysfs.glob("index*")):
            read = lambda name: (index / name).read_text().strip()  # noqa: E731
            cache = Cache(_size(read("size")), int(read("ways_of_associativity")), int(read("coherency_line_size")))
            caches[(int(read("level")), read("type"))] = (cache, _cpu_count(read("shared_cpu_list")))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read this machine's caches from {sysfs} ({e}): use --uarch-machine broadwell "
                        f"or cascadelake") from None
    i1 = caches.get((1, "Instruction"))
    d1 = caches.get((1, "Data"))
    unified = [key for key in caches if key[1] == "Unified"]
    if not (i1 and d1 and unified):
        raise UserError(f"{sysfs} does not list L1 instruction, L1 data and a unified cache: use --uarch-machine "
                        f"broadwell or cascadelake")
    last, sharers = caches[max(unified)]
    share = Cache(last.size // max(sharers, 1), last.ways, last.line)
    return Machine("host", f"this machine: L{max(unified)[0]} {last.size // _KB} KB shared by {sharers} CPUs, "
                           f"one CPU's share simulated", i1=i1[0], d1=d1[0], ll=share,
                   l2_latency=12, memory_latency=round(97 * 2.2), branch_penalty=16, width=4)


def machine(name: str) -> Machine:
    if name == "host":
        return host()
    if name == "broadwell":
        return BROADWELL
    if name == "cascadelake":
        return CASCADELAKE
    raise UserError(f"unknown machine {name!r} for --uarch-machine (choose from {', '.join(MACHINES)})")
