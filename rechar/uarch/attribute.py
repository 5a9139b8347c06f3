"""A callgrind profile's costs charged to native operators, the runtime, or nobody.

Callgrind keeps a function's own (self) cost and, per call arc, the inclusive cost of the calls
along it, but not whole call stacks. Each function's self cost is charged to the contexts it was
called in, in proportion to the inclusive cost that reached it along each incoming arc, event by
event; a context is the operator whose entry encloses the call (rechar.uarch.symbols), else
``runtime`` for known runtime code or ``unattributed``. An operator entry starts its own context
(the innermost operator wins, as in the frameworks' own profilers: ``aten::linear`` -> ``aten::addmm``
charges the matrix product to addmm). A leaf's cost is split exactly; a function shared by
several operators passes its callees' cost on in its callers' proportions (exact when each shared
function's callees cost the same per call whoever calls it). Recursive cycles are solved by
iterating to a fixed point. The charged costs add up to the profile's total by construction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rechar.uarch.profile import CallgrindProfile, Function
from rechar.uarch.symbols import RUNTIME, UNATTRIBUTED, Label, Resolver, op_category

_MAX_SWEEPS = 200
_TOLERANCE = 1e-9


@dataclasses.dataclass
class Attribution:
    events: tuple[str, ...]
    by_op: dict[str, np.ndarray]  # native op, "runtime" or "unattributed" -> cost (events)
    total: np.ndarray
    kernel_classes: dict[str, str]  # stripped functions named through vtables: "obj:addr" -> class
    unattributed_functions: list[tuple[str, int]]  # (object:function, Ir) the largest unattributed

    def by_category(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for op, cost in self.by_op.items():
            category = op if op in (RUNTIME, UNATTRIBUTED) else op_category(op)
            out[category] = out.get(category, 0) + cost
        return out

    def coverage(self, event: str = "Ir") -> float:
        """The share of ``event`` charged to an operator or to known runtime code."""
        i = self.events.index(event)
        total = float(self.total[i])
        missing = float(self.by_op.get(UNATTRIBUTED, np.zeros(len(self.events)))[i])
        return 1.0 - missing / total if total else 1.0


def attribute(profile: CallgrindProfile, resolver: Resolver | None = None) -> Attribution:
    resolver = resolver or Resolver()
    n = len(profile.events)
    functions: set[Function] = set(profile.self_cost)
    incoming: dict[Function, list[tuple[Function, np.ndarray]]] = {}
    for (caller, callee), cost in profile.arcs.items():
        functions.update((caller, callee))
        if caller != callee:  # direct recursion adds no new context
            # a call already running when the counts were zeroed has a negative inclusive cost
            # (rechar.uarch.profile._signed): it carried nothing counted into its callee
            incoming.setdefault(callee, []).append((caller, np.maximum(cost, 0).astype(float)))
    labels: dict[Function, Label] = {f: resolver.label(*f) for f in functions}

    def own_context(f: Function) -> str:
        label = labels[f]
        return RUNTIME if label.runtime else UNATTRIBUTED

    # context shares per function: ctx -> fraction of each event (sums to 1 per event)
    shares: dict[Function, dict[str, np.ndarray]] = {}
    fixed: set[Function] = set()
    for f in functions:
        if labels[f].op:
            shares[f] = {labels[f].op: np.ones(n)}
            fixed.add(f)
        else:
            shares[f] = {own_context(f): np.ones(n)}
    order = sorted((f for f in functions if f not in fixed and f in incoming),
                   key=lambda f: -float(sum(c[0] for _, c in incoming[f])))
    for _ in range(_MAX_SWEEPS):
        change = 0.0
        for f in order:
            mix: dict[str, np.ndarray] = {}
            weight = np.zeros(n)
            for caller, cost in incoming[f]:
                weight += cost
                for ctx, share in shares[caller].items():
                    if ctx in (RUNTIME, UNATTRIBUTED):
                        ctx = own_context(f)  # outside an operator, a function is what it is itself
                    mix[ctx] = mix.get(ctx, 0) + share * cost
            # events no arc carried (all zero) follow the Ir mix, else the function's own context
            ir = weight[0] if weight[0] > 0 else None
            new: dict[str, np.ndarray] = {}
            for ctx, value in mix.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    share = np.where(weight > 0, value / np.where(weight > 0, weight, 1), np.nan)
                if ir is not None:
                    share = np.where(np.isnan(share), value[0] / ir, share)
                new[ctx] = share
            if ir is None and not any(np.isfinite(s).any() for s in new.values()):
                new = {own_context(f): np.ones(n)}
            new = {ctx: np.nan_to_num(s) for ctx, s in new.items()}
            old = shares[f]
            change = max(change, max(float(np.abs(new.get(c, 0) - old.get(c, 0)).max())
                                     for c in set(new) | set(old)))
            shares[f] = new
        if change < _TOLERANCE:
            break

    by_op: dict[str, np.ndarray] = {}
    unattributed: dict[Function, float] = {}
    for f, cost in profile.self_cost.items():
        cost = cost.astype(float)
        for ctx, share in shares[f].items():
            charged = cost * share
            by_op[ctx] = by_op.get(ctx, np.zeros(n)) + charged
            if ctx == UNATTRIBUTED:
                unattributed[f] = unattributed.get(f, 0.0) + charged[0]
    # rounding: the per-context sums are floats; the total is the profile's own
    total = sum(profile.self_cost.values(), np.zeros(n, np.int64)).astype(float)
    worst = sorted(unattributed.items(), key=lambda kv: -kv[1])[:10]
    return Attribution(
        events=profile.events, by_op=by_op, total=total,
        kernel_classes={f"{o}:{fn}": c for (o, fn), c in resolver.kernel_classes.items()},
        unattributed_functions=[(f"{o}:{fn}", int(ir)) for (o, fn), ir in worst if ir > 0],
    )
