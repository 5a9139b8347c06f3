"""Estimates with 95% confidence intervals, for one point's latency and for ratios of two.

Latencies are compared on a log scale (a ratio is a difference of logs, and timing noise is
multiplicative). A point measured in several rounds (``--rounds N``, each round in a fresh
worker) is estimated by the geometric mean of its per-round p50s, with a Student-t interval over
the rounds' log p50s: rounds capture what varies between processes and over time (placement,
frequency, neighbours). A point measured once is its p50 with the distribution-free interval of a
median (order statistics of its iterations); iterations of one process are not independent, so
that interval is optimistic, and the report says which kind each figure has.

A ratio A/B carries the Welch interval of the difference of the two log estimates; where it
contains 1 the two are not significantly different at 95%.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float  # the estimate (µs for latencies)
    low: float  # 95% interval
    high: float
    log_se: float  # standard error of log(value)
    df: float  # degrees of freedom of that error (inf: normal)
    method: str  # "rounds" or "iterations"

    @property
    def log(self) -> float:
        return math.log(self.value)


def t_quantile(df: float) -> float:
    """The two-sided ``LEVEL`` quantile of Student's t with ``df`` degrees of freedom (the
    normal's for infinite df)."""
    from scipy import stats  # here, not at the top: a worker process never needs scipy.stats (1 s to import)

    return float(stats.norm.ppf(0.5 + LEVEL / 2) if math.isinf(df) else stats.t.ppf(0.5 + LEVEL / 2, df))


def from_rounds(p50s: np.ndarray | list[float]) -> Estimate:
    """A point measured in N >= 2 rounds: geometric mean of the per-round p50s, t interval."""
    logs = np.log(np.asarray(p50s, dtype=float))
    n = logs.size
    if n < 2:
        raise ValueError("from_rounds needs at least two rounds")
    mean, se = float(logs.mean()), float(logs.std(ddof=1) / math.sqrt(n))
    half = t_quantile(n - 1) * se
    return Estimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), se, n - 1, "rounds")


def from_iterations(latencies: np.ndarray | list[float]) -> Estimate:
    """A point measured once: its median, with the order-statistic interval of a median."""
    x = np.sort(np.asarray(latencies, dtype=float))
    n = x.size
    median = float(np.median(x))
    z = t_quantile(math.inf)
    lo_rank = max(0, int(math.floor(n / 2 - z * math.sqrt(n) / 2)))
    hi_rank = min(n - 1, int(math.ceil(n / 2 + z * math.sqrt(n) / 2)))
    low, high = float(x[lo_rank]), float(x[hi_rank])
    log_se = (math.log(high) - math.log(low)) / (2 * z) if low > 0 and high > 0 else float("nan")
    return Estimate(median, low, high, log_se, math.inf, "iterations")


@dataclasses.dataclass(frozen=True)
class Ratio:
    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return not (self.low <= 1.0 <= self.high)

    def verdict(self, more: str = "slower", less: str = "faster") -> str:
        """'1.52x slower', '0.40x (2.5x faster)' or 'no significant difference'."""
        if not self.significant:
            return "no significant difference"
        return f"{self.value:.2f}x {more}" if self.value > 1 else f"{1 / self.value:.2f}x {less}"


def ratio(a: Estimate, b: Estimate) -> Ratio:
    """a / b with the Welch interval of log(a) - log(b)."""
    diff = a.log - b.log
    se = math.sqrt(a.log_se ** 2 + b.log_se ** 2)
    if not math.isfinite(se):
        return Ratio(math.exp(diff), float("nan"), float("nan"))
    if math.isinf(a.df) and math.isinf(b.df):
        df = math.inf
    else:  # Welch-Satterthwaite
        terms = [e.log_se ** 4 / e.df for e in (a, b) if e.df > 0 and math.isfinite(e.df)]
        df = se ** 4 / sum(terms) if terms and sum(terms) > 0 else math.inf
    q = t_quantile(df)
    return Ratio(math.exp(diff), math.exp(diff - q * se), math.exp(diff + q * se))
