"""Callgrind's output file as per-function self costs and per-call-arc inclusive costs.

Why a parser here rather than a library: the callgrind format readers on PyPI (gprof2dot's
CallgrindParser, pyprof2calltree's reverse) keep one event (Ir) of a profile and drop the
others; this pass needs all thirteen events of a cache and branch simulation, per function and
per call arc. ``callgrind_annotate`` prints tables meant for reading, by file and function,
without the arcs. The format is small and specified ("Callgrind Format Specification" in
Valgrind's manual): header lines, ``ob=``/``fl=``/``fn=`` position lines with name compression
``(id) name`` / ``(id)``, cost lines ``<positions> <event costs>`` (trailing zeros omitted),
and call arcs ``cob=``/``cfn=`` + ``calls=<count> <target position>`` followed by one cost line
that is the inclusive cost of those calls.

A function is keyed by (object, name): stripped libraries' functions are named by their address
inside the object (``0x0000000000472000``), which rechar.uarch.symbols resolves further.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

#: The events a cache and branch simulation writes (callgrind --cache-sim=yes --branch-sim=yes).
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bc", "Bcm", "Bi", "Bim")

Function = tuple[str, str]  # (object file, function name)


@dataclasses.dataclass
class CallgrindProfile:
    events: tuple[str, ...]  # the file's event order (columns of every cost array)
    self_cost: dict[Function, np.ndarray]  # exclusive cost per function
    arcs: dict[tuple[Function, Function], np.ndarray]  # (caller, callee) -> inclusive cost of those calls
    calls: dict[tuple[Function, Function], int]  # (caller, callee) -> number of calls
    totals: np.ndarray  # the file's totals: line (sum of self costs)
    header: dict[str, str]  # desc: lines and the other header fields (cmd, pid, creator, Trigger, ...)

    def vector(self, cost: np.ndarray, events=EVENTS) -> dict[str, int]:
        index = {e: i for i, e in enumerate(self.events)}
        return {e: int(cost[index[e]]) if e in index else 0 for e in events}

    def total(self) -> dict[str, int]:
        return self.vector(self.totals)

    def inclusive(self) -> dict[Function, np.ndarray]:
        """Inclusive cost per function: its self cost plus the arcs it calls out of, recursion
        into itself excluded (as callgrind_annotate --inclusive=yes does for direct recursion)."""
        out = {f: c.copy() for f, c in self.self_cost.items()}
        for (caller, callee), cost in self.arcs.items():
            if caller != callee:
                out.setdefault(caller, np.zeros(len(self.events), np.int64))
                out[caller] += cost
        return out


class FormatError(ValueError):
    pass


def _signed(value: int) -> int:
    """A 64-bit counter as written: callgrind prints unsigned values, and the inclusive cost of a
    call that was already running when the counts were zeroed (the frames around the simulated
    calls) comes out negative, i.e. wrapped around 2**64."""
    return value - (1 << 64) if value >= (1 << 63) else value


def parse(path: str | Path) -> CallgrindProfile:
    with open(path, "r", errors="replace") as f:
        return parse_lines(f)


def parse_lines(lines) -> CallgrindProfile:
    names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    header: dict[str, str] = {}
    events: tuple[str, ...] | None = None
    positions = 1
    self_cost: dict[Function, np.ndarray] = {}
    arcs: dict[tuple[Function, Function], np.ndarray] = {}
    calls: dict[tuple[Function, Function], int] = {}
    totals = None
    ob = cob = ""
    fn: Function | None = None
    cfn: str | None = None
    pending_call: tuple[Function, Function] | None = None
    pending_count = 0

    def name(kind: str, value: str) -> str:
        # "(id) name" defines id, "(id)" refers to it, a bare name is itself
        value = value.strip()
        if value.startswith("("):
            close = value.find(")")
            if close < 0:
                raise FormatError(f"bad name compression: {value!r}")
            key, rest = value[1:close], value[close + 1:].strip()
            table = names["fl" if kind in ("fi", "fe", "cfi", "cfl") else kind.lstrip("c")]
            if rest:
                table[key] = rest
                return rest
            if key not in table:
                raise FormatError(f"{kind}=({key}) used before it was defined")
            return table[key]
        return value

    def costs(line: str) -> np.ndarray:
        fields = line.split()
        values = fields[positions:]
        out = np.zeros(len(events), np.int64)
        for i, v in enumerate(values[:len(events)]):
            out[i] = _signed(int(v))
        return out

    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if events is None:
                raise FormatError(f"line {lineno}: a cost line before the events: line")
            cost = costs(line)
            if pending_call is not None:
                arcs[pending_call] = arcs.get(pending_call, 0) + cost
                calls[pending_call] = calls.get(pending_call, 0) + pending_count
                pending_call = None
            else:
                if fn is None:
                    raise FormatError(f"line {lineno}: a cost line outside any function")
                if fn in self_cost:
                    self_cost[fn] += cost
                else:
                    self_cost[fn] = cost
            continue
        key, _, value = line.partition("=")
        if not _ and ":" in line:  # a header field "name: value"
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "events":
                events = tuple(value.split())
            elif key == "positions":
                positions = len(value.split())
            elif key == "totals":
                totals = np.array([_signed(int(v)) for v in value.split()] + [0] * (len(events) - len(value.split())), np.int64)
            elif key == "desc":
                k, _, v = value.partition(":")
                header[k.strip()] = v.strip()
            else:
                header[key] = value
            continue
        if key == "ob":
            ob = cob = name("ob", value)
        elif key == "fn":
            fn = (ob, name("fn", value))
            cob = ob
        elif key == "cob":
            cob = name("ob", value)
        elif key == "cfn":
            cfn = name("fn", value)
        elif key == "calls":
            if fn is None or cfn is None:
                raise FormatError(f"line {lineno}: calls= without a caller and callee")
            pending_call = (fn, (cob, cfn))
            pending_count = int(value.split()[0])
            cob = ob  # cob= applies to the one arc that follows it
        elif key in ("fl", "fi", "fe", "cfi", "cfl"):
            name(key, value)  # only to keep the compression table complete
        elif key in ("jump", "jcnd"):
            pending_call = None  # jump arcs (--collect-jumps) carry no cost line of their own to keep
        else:
            continue  # unknown position lines are allowed by the format
    if events is None:
        raise FormatError("no events: line (not a callgrind output file?)")
    if totals is None:
        totals = sum(self_cost.values(), np.zeros(len(events), np.int64))
    return CallgrindProfile(events, self_cost, arcs, calls, totals, header)
