"""A machine card (``rechar probe``'s JSON) as costs: per-row gather cost for an id stream, GEMM
time at any shape, streaming bandwidth, a stack's fixed cost per call.

Gathers: the probe measures ns per row of random gathers over a uniform working set W. Under
uniform access an LRU cache of C bytes hits a fraction min(1, C/W) of them, so the curve is
fitted as a hierarchy of levels, one at each working set the probe measured (capacity C_k = the
k-th working set):

    cost(W) = base + sum_k penalty_k * (1 - min(1, C_k / W)),    penalty_k >= 0

by non-negative least squares on relative errors: no level count or capacity is assumed (an L2,
a shared last-level cache that holds less in effect than its nominal size, the TLB's reach and
the page-walk caches beyond it all show as penalties at the sizes where the curve rises). For a
model's id stream, the fraction of lookups that miss each capacity comes from the reuse
profile (rechar.predict.reuse): cost = base + sum_k penalty_k * miss_k, in rows up to the
largest data cache and in pages beyond it (there the levels are the TLB's reach, and a sparse
stream spends a page of reach on each row; the probe's dense working sets cannot tell the two
apart, a model's tables far larger than its pool can). Past the largest working
set probed, the cost stays at the curve's last value.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from rechar.errors import UserError
from rechar.predict.reuse import TableStream, hit_ratios, page_streams

#: A machine card (rechar.predict.probe writes it) says what it is and in which format.
CARD_KIND = "rechar machine card"
CARD_VERSION = 1
PLAIN, POOLED = "index_select", "embedding_bag"  # gather kernels: rows copied out, rows summed in bags

FIT_METHOD = "nnls over the probed working sets"


def _monotone(y: np.ndarray) -> np.ndarray:
    """The lower envelope that never decreases: a gather over a larger working set, or a GEMM
    with more rows, cannot be cheaper, so a figure above a later one was slowed by something
    else (a neighbour on a shared machine)."""
    return np.minimum.accumulate(y[::-1])[::-1]


def _misses(w: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    return 1.0 - np.minimum(1.0, capacities[None, :] / w[:, None])


def fit_curve(working_sets: list[float], ns_per_row: list[float]) -> dict[str, Any]:
    """Base and per-capacity penalties of one gather curve (the module docstring's model)."""
    order = np.argsort(working_sets)
    w, y = np.asarray(working_sets, dtype=float)[order], np.asarray(ns_per_row, dtype=float)[order]
    if len(w) < 3 or np.any(y <= 0):
        raise UserError("a gather curve needs at least three positive figures")
    keep = y <= _monotone(y)  # a figure above a later one was slowed by something else: left out
    capacities = w
    w, y = w[keep], y[keep]
    design = np.hstack([np.ones((len(w), 1)), _misses(w, capacities)])
    x, _ = nnls(design / y[:, None], np.ones(len(y)))  # relative errors: every figure weighs alike
    fitted = design @ x
    return {"base_ns": float(x[0]),
            "levels": [{"capacity_bytes": float(c), "penalty_ns": float(p)} for c, p in zip(capacities, x[1:])
                       if p > 1e-9],
            "rms_relative_error": float(np.sqrt(np.mean((fitted / y - 1) ** 2)))}


def _capped_by_one_thread(rows: list[dict], key: tuple[str, ...], value: str) -> list[dict]:
    """Figures of more threads capped at the one-thread figure of the same work: a call given
    more threads can still do the work at one thread's pace, so a slower figure was slowed by a
    neighbour holding one of its cores (on this shared VM under load: milliseconds per call)."""
    one = {tuple(r.get(k) for k in key): r[value] for r in rows if r["threads"] == 1}
    return [{**r, value: min(r[value], one.get(tuple(r.get(k) for k in key), math.inf))} for r in rows]


def fit_gather(card: dict) -> list[dict]:
    """The fit of every (kernel, threads, width) gather curve of a card."""
    rows = _capped_by_one_thread(card["gather"], ("kernel", "width", "working_set_bytes"), "ns_per_row")
    curves: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for r in rows:
        key = (r.get("kernel", PLAIN), r["threads"], r["width"])
        curves.setdefault(key, []).append((r["working_set_bytes"], r["ns_per_row"]))
    out = []
    for (kernel, threads, width), points in sorted(curves.items()):
        ws, ns = zip(*sorted(points))
        out.append({"kernel": kernel, "threads": threads, "width": width, **fit_curve(list(ws), list(ns))})
    return out


class Card:
    """A machine card, checked, with the costs a prediction asks of it."""

    def __init__(self, data: dict, where: str = "card"):
        if not isinstance(data, dict) or data.get("kind") != CARD_KIND:
            raise UserError(f"{where} is not a rechar machine card (make one with rechar probe)")
        if data.get("version", 0) > CARD_VERSION:
            raise UserError(f"{where} was written by a newer rechar (card version {data['version']}); upgrade rechar")
        for key in ("gather", "gemm", "stream", "host"):
            if not data.get(key):
                raise UserError(f"{where} has no {key} figures")
        self.data = data
        self.where = where
        if data.get("gather_fit_method") != FIT_METHOD:  # fitted by another rechar: fit again
            data["gather_fit"], data["gather_fit_method"] = fit_gather(data), FIT_METHOD
        self.threads = sorted({r["threads"] for r in data["gemm"]})
        self._gemm = _gemm_table(_capped_by_one_thread(data["gemm"], ("m", "k", "n"), "us"))
        self._gemm_memo: dict[tuple[int, int, int, int], float] = {}

    @classmethod
    def load(cls, path: str | Path) -> "Card":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no machine card at {path}") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"machine card {path} is unreadable: {e}") from None
        return cls(data, where=str(path))

    @property
    def host(self) -> dict:
        return self.data["host"]

    def label(self) -> str:
        h = self.host
        return f"{h.get('hostname')} ({h.get('cpu')}, {h.get('logical_cores')} cores)"

    def _threads(self, threads: int) -> int:
        if threads in self.threads:
            return threads
        raise UserError(f"{self.where} has no figures for {threads} thread(s) (it has {self.threads}); "
                        f"probe with --threads including {threads}")

    # gathers

    def gather_fit(self, threads: int, row_bytes: int, kernel: str = PLAIN) -> dict:
        """The fitted curve of ``kernel`` (the plain gather where the card has none of it) at the
        nearest probed width (rows narrower than the narrowest probed still cost a cache line or
        two: they count as the narrowest)."""
        threads = self._threads(threads)
        fits = [f for f in self.data["gather_fit"] if f["threads"] == threads and f.get("kernel", PLAIN) == kernel]
        if not fits:
            fits = [f for f in self.data["gather_fit"] if f["threads"] == threads and f.get("kernel", PLAIN) == PLAIN]
        width = row_bytes / 4
        return min(fits, key=lambda f: (abs(math.log(max(width, 1) / f["width"])), f["width"]))

    def gather_ns(self, threads: int, streams: list[TableStream], ids: str, alpha: float,
                  pool_samples: float | None, kernel: str = PLAIN) -> dict[str, float]:
        """Expected ns per gathered row of each table (and '' for all lookups) for this id stream,
        all tables sharing the caches."""
        fits = {s.row_bytes: self.gather_fit(threads, s.row_bytes, kernel) for s in streams}
        # Each width's fit has its own capacities: the stream's hit ratios at each of them; past
        # the data caches, a level's capacity is the TLB's reach, counted in pages.
        pages = tuple(page_streams(streams))
        beyond = self.data_cache_bytes()
        hits = {b: [_hits(pages if lv["capacity_bytes"] > beyond else tuple(streams), lv["capacity_bytes"], ids, alpha,
                          pool_samples) for lv in fit["levels"]]
                for b, fit in fits.items()}
        out, weights = {}, {}
        for s in streams:
            fit = fits[s.row_bytes]
            cost = fit["base_ns"] + sum(lv["penalty_ns"] * (1 - h[s.table])
                                        for lv, h in zip(fit["levels"], hits[s.row_bytes]))
            w = weights.get(s.table, 0) + s.lookups
            out[s.table] = (out.get(s.table, 0.0) * weights.get(s.table, 0) + cost * s.lookups) / w
            weights[s.table] = w
        total = sum(weights.values())
        out[""] = sum(out[t] * weights[t] for t in weights) / total
        return out

    def data_cache_bytes(self) -> float:
        """The largest data cache the card's host reports (sysfs), or its last-level cache."""
        sizes = [c["bytes"] for c in self.data.get("caches", [])] + [self.host.get("llc_bytes") or 0]
        return float(max(sizes) or 32 << 20)

    # GEMMs

    def gemm_us(self, threads: int, m: int, k: int, n: int) -> float:
        """Time of one (m x k) @ (k x n) product with bias: the probed shape nearest in (k, n)
        (log distance), interpolated in m on log scales, rescaled by k*n over the probed k*n."""
        key = (threads, m, k, n)
        if key not in self._gemm_memo:
            self._gemm_memo[key] = self._gemm_us(*key)
        return self._gemm_memo[key]

    def _gemm_us(self, threads: int, m: int, k: int, n: int) -> float:
        shapes = self._gemm[self._threads(threads)]
        kn = min(shapes, key=lambda s: (math.log(s[0] / k) ** 2 + math.log(s[1] / n) ** 2, s))
        ms, us = shapes[kn]
        if m <= ms[0]:
            t = us[0]  # below the smallest probed m: a call's floor
        elif m >= ms[-1]:
            t = us[-1] * m / ms[-1]  # beyond the largest: throughput has saturated
        else:
            t = math.exp(np.interp(math.log(m), np.log(ms), np.log(us)))
        return t * (k * n) / (kn[0] * kn[1])

    def stream_gbps(self, threads: int) -> float:
        threads = self._threads(threads)
        return max(r["gb_per_s"] for r in self.data["stream"] if r["threads"] == threads)

    def call_us(self, stack: str) -> float | None:
        return self.data.get("call_us", {}).get(stack)


def _gemm_table(rows: list[dict]) -> dict[int, dict[tuple[int, int], tuple[list, list]]]:
    table: dict[int, dict[tuple[int, int], dict[int, float]]] = {}
    for r in rows:
        table.setdefault(r["threads"], {}).setdefault((r["k"], r["n"]), {})[r["m"]] = r["us"]
    out: dict[int, dict[tuple[int, int], tuple[list, list]]] = {}
    for t, shapes in table.items():
        for kn, d in shapes.items():
            ms = np.array(sorted(d), dtype=float)
            us = np.array([d[m] for m in sorted(d)])
            keep = us <= _monotone(us)  # slower than a larger product: slowed by a neighbour
            out.setdefault(t, {})[kn] = (list(ms[keep]), list(us[keep]))
    return out


@functools.lru_cache(maxsize=4096)
def _hits(streams: tuple[TableStream, ...], capacity: float, ids: str, alpha: float,
          pool_samples: float | None) -> dict[str, float]:
    return hit_ratios(list(streams), capacity, ids, alpha, pool_samples)
