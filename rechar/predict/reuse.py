"""The reuse profile of an id stream: the fraction of embedding lookups that hit in a cache of C
bytes, computed from the tables' sizes and the id distribution rechar draws.

Model: a least-recently-used cache of rows under the independent reference model (every lookup
draws its row independently: rechar's ids are independent draws, uniform or Zipf over the id
range). The hit ratio comes from Che's approximation (Che, Tung, Wang 2002; Fricker, Robert,
Roberts 2012): each row i with request rate l_i stays cached for a characteristic time T after
its last request, where T solves

    sum_i size_i * (1 - exp(-l_i * T)) = C,        hit = sum_i l_i * (1 - exp(-l_i * T)) / sum_i l_i.

For one uniform table this is exact: hit = C / (table bytes) once the table exceeds the cache.
All tables of a model share the cache, so their streams are merged, each weighted by its
lookups per sample.

A timed point cycles through a finite pool of batches (rechar's input pools) of N lookups. A row
drawn c times in the pool (c ~ Poisson(p_i N)) is requested again after gaps that are the
spacings of c points on a circle of length N; averaging over c gives the same occupancy
1 - exp(-p_i T) and hit ratio as above while T < N. Only when the pool's distinct rows fit in
the cache (T >= N) does the cycle differ: then every lookup hits once the pool has been through
once. ``pool_samples`` gives N; None is an endless stream.

Zipf ranks follow rechar's draw (``InputGenerator.ids``): P(rank k) proportional to k^-alpha,
k = 1..R. The first ranks are kept one by one, the tail in geometric bins (each bin's rows share
the bin's mean probability, its sum from the integral of x^-alpha over the bin): hundreds of
bins stand for tables of billions of rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.optimize import brentq

from rechar.errors import UserError

EXACT_RANKS = 2048  # Zipf ranks kept one by one; the rest in bins
BIN_RATIO = 1.02  # upper/lower rank of a tail bin


@dataclasses.dataclass(frozen=True)
class TableStream:
    """The lookups one embedding table receives: ids over [0, rows), ``lookups`` per sample,
    ``row_bytes`` per row."""

    table: str
    rows: int
    row_bytes: int
    lookups: int


def _zipf_bins(rows: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(probability of one row of the bin, rows in the bin) over ranks 1..rows."""
    exact = min(rows, EXACT_RANKS)
    k = np.arange(1, exact + 1, dtype=np.float64)
    weights, counts = [k ** -alpha], [np.ones(exact)]
    if rows > exact:
        edges = [exact + 1]
        while edges[-1] <= rows:
            edges.append(max(edges[-1] + 1, int(edges[-1] * BIN_RATIO)))
        edges[-1] = rows + 1
        lo, hi = np.array(edges[:-1], dtype=np.float64), np.array(edges[1:], dtype=np.float64) - 1
        counts.append(hi - lo + 1)
        weights.append(_power_integral(lo - 0.5, hi + 0.5, alpha) / (hi - lo + 1))  # midpoint rule per row
    p, c = np.concatenate(weights), np.concatenate(counts)
    return p / np.dot(p, c), c


def _power_integral(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    if abs(alpha - 1.0) < 1e-12:
        return np.log(b / a)
    return (b ** (1 - alpha) - a ** (1 - alpha)) / (1 - alpha)


@dataclasses.dataclass
class _Groups:
    """Rows grouped by equal popularity: per group, rows, bytes per row, presence and rate."""

    count: np.ndarray
    size: np.ndarray
    rate: np.ndarray  # requests per lookup of the merged stream, of one row
    table: np.ndarray  # index of the stream each group belongs to
    cycle: float  # lookups of the merged stream in one pass over the pool (inf: endless)


def _groups(streams: list[TableStream], ids: str, alpha: float, pool_samples: float | None) -> _Groups:
    if not streams:
        raise UserError("no embedding lookups to profile")
    if ids not in ("uniform", "zipf"):
        raise UserError(f"unknown id distribution {ids!r} (choose from uniform, zipf)")
    total = sum(s.lookups for s in streams)
    parts = []
    for index, s in enumerate(streams):
        if s.rows < 1 or s.lookups < 1 or s.row_bytes < 1:
            raise UserError(f"table {s.table}: rows, lookups and row bytes must be positive")
        p, c = (np.array([1.0 / s.rows]), np.array([float(s.rows)])) if ids == "uniform" else _zipf_bins(s.rows, alpha)
        rate = (s.lookups / total) * p
        parts.append((c, np.full_like(p, s.row_bytes), rate, np.full(p.shape, index)))
    cycle = math.inf if pool_samples is None else float(pool_samples) * total
    return _Groups(*(np.concatenate(x) for x in zip(*parts)), cycle=cycle)


def _footprint(g: _Groups, t: float) -> float:
    """Expected bytes of the rows requested within the last ``t`` lookups."""
    t = min(t, g.cycle)
    if math.isinf(t):
        return float(np.dot(g.count, g.size))
    return float(np.sum(g.count * g.size * -np.expm1(-g.rate * t)))


def characteristic_time(g: _Groups, cache_bytes: float) -> float:
    """T of Che's approximation (inf when everything the stream touches fits)."""
    if _footprint(g, math.inf) <= cache_bytes:
        return math.inf
    hi = 1.0
    while _footprint(g, hi) < cache_bytes:
        hi *= 4
    lo = hi / 4 if hi > 1 else 0.0
    return brentq(lambda t: _footprint(g, t) - cache_bytes, lo, hi, xtol=1e-12 * hi, rtol=1e-12)


def hit_ratios(streams: list[TableStream], cache_bytes: float, ids: str = "uniform", alpha: float = 1.05,
               pool_samples: float | None = None) -> dict[str, float]:
    """Per table (and '' for all lookups): the fraction of lookups that hit in an LRU cache of
    ``cache_bytes`` shared by every table's rows. ``pool_samples``: samples in the input pool the
    stream cycles through (None: an endless stream)."""
    if cache_bytes < 0:
        raise UserError(f"cache size must be non-negative, got {cache_bytes}")
    g = _groups(streams, ids, alpha, pool_samples)
    t = characteristic_time(g, cache_bytes)
    hit = np.ones_like(g.rate) if math.isinf(t) else -np.expm1(-g.rate * t)
    requests = g.count * g.rate  # share of all lookups each group receives
    out = {"": float(np.dot(requests, hit) / requests.sum())}
    for index, s in enumerate(streams):
        mine = g.table == index
        ratio = float(np.dot(requests[mine], hit[mine]) / requests[mine].sum())
        # a table with several id ranges (several streams): lookup-weighted over them
        if s.table in out:
            prev_w = sum(x.lookups for x in streams[:index] if x.table == s.table)
            out[s.table] = (out[s.table] * prev_w + ratio * s.lookups) / (prev_w + s.lookups)
        else:
            out[s.table] = ratio
    return out


def footprint_bytes(streams: list[TableStream], ids: str = "uniform", alpha: float = 1.05,
                    pool_samples: float | None = None) -> float:
    """Bytes of the rows the stream touches at all (the pool's expected distinct rows, or whole tables)."""
    return _footprint(_groups(streams, ids, alpha, pool_samples), math.inf)


PAGE_BYTES = 4096


def page_streams(streams: list[TableStream]) -> list[TableStream]:
    """The streams as seen by the TLB: requests for the pages holding the rows. A sparse stream
    over large tables touches one row per page, so a level that caches translations holds
    PAGE_BYTES of reach per row it keeps, not a row's bytes (a uniform stream stays uniform over
    pages; a Zipf stream, its hot rows scattered over the table, is taken as Zipf over pages)."""
    return [dataclasses.replace(s, rows=max(1, math.ceil(s.rows * s.row_bytes / PAGE_BYTES)), row_bytes=PAGE_BYTES)
            for s in streams]
