"""From the measurements of a point to its figures.

A point (model, backend, batch) is measured in ``--rounds`` rounds, each in a fresh worker, the
rounds of all points interleaved; a round measured while the machine was busy (``noisy``) can be
measured again (``--remeasure-noisy``), each try an *attempt*. Every attempt is kept
(``rounds.parquet``). Per round, the attempt used is the first quiet one that was timed, else
the last one timed, else the last. A point's figures come from its rounds' used attempts:

- p50: with two or more timed rounds, the geometric mean of their p50s and a Student-t 95%
  interval over the rounds (``ci_method`` "rounds"); with one, its p50 and the order-statistic
  interval of the median of its iterations ("iterations", optimistic: iterations of one process
  are not independent). See ``rechar.stats``.
- p90, p99, mean and std: geometric means over the rounds; min, max: extremes; iterations and
  timed seconds: sums; throughput: batch / mean latency.
- noisy: any used round was; noise: why, per round.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from rechar import stats

#: statistics aggregated over rounds by geometric mean
GEOMETRIC = ["p90_us", "p99_us", "mean_us", "std_us"]
KEYS = ["model", "backend", "batch"]


def used_attempts(rounds: pd.DataFrame) -> pd.Series:
    """Per row of ``rounds`` (every attempt of every round): is it the one its round uses?"""
    used = pd.Series(False, index=rounds.index)
    for _, group in rounds.groupby(KEYS + ["round"], sort=False):
        group = group.sort_values("attempt")
        timed = group[group["status"] == "ok"]
        quiet = timed[timed["noisy"] != True]  # noqa: E712 - None (unmeasured) counts as quiet
        pick = quiet.index[0] if len(quiet) else timed.index[-1] if len(timed) else group.index[-1]
        used[pick] = True
    return used


def iteration_interval(latencies_ns: list[int] | None) -> tuple[float | None, float | None]:
    """The 95% interval of one round's p50 from its iterations (µs)."""
    if not latencies_ns:
        return None, None
    estimate = stats.from_iterations(np.asarray(latencies_ns, dtype=float) / 1e3)
    return estimate.low, estimate.high


def point_table(rounds: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per point from its used rounds (``columns``: the per-point schema)."""
    used = rounds[rounds["used"]]
    rows = [_point(group) for _, group in used.groupby(KEYS, sort=False)]
    return pd.DataFrame(rows, columns=columns)


def _point(group: pd.DataFrame) -> dict[str, Any]:
    group = group.sort_values("round")
    timed = group[group["status"] == "ok"]
    first = (timed if len(timed) else group).iloc[0].to_dict()
    row = {**first, "rounds": len(group), "timed_rounds": len(timed)}
    noisy = group[group["noisy"] == True]  # noqa: E712
    row["noisy"] = bool(len(noisy)) if group["noisy"].notna().any() else None
    row["noise"] = "; ".join(f"round {int(r.round)}: {r.noise}" for r in noisy.itertuples()) or None
    row["others_cpu_share"] = group["others_cpu_share"].max()
    row["steal_share"] = group["steal_share"].max()
    row["involuntary_switches"] = group["involuntary_switches"].sum(min_count=1)
    if len(timed) >= 2:
        estimate = stats.from_rounds(timed["p50_us"].to_numpy())
        row.update(p50_us=estimate.value, p50_ci_low_us=estimate.low, p50_ci_high_us=estimate.high,
                   ci_method="rounds")
        for column in GEOMETRIC:
            values = timed[column].to_numpy(dtype=float)
            row[column] = float(np.exp(np.log(values).mean())) if (values > 0).all() else float(values.mean())
        row.update(min_us=timed["min_us"].min(), max_us=timed["max_us"].max(), iterations=timed["iterations"].sum(),
                   timed_seconds=timed["timed_seconds"].sum(), max_abs_error=timed["max_abs_error"].max(),
                   gate_logit_error=timed["gate_logit_error"].max(), gate_margin=timed["gate_margin"].max(),
                   throughput_sps=first["batch"] * 1e6 / row["mean_us"], finished=group["finished"].max())
    elif len(timed) == 1:
        row["ci_method"] = "iterations"  # p50_ci_low_us / high_us are the round's own
    else:
        row.update(ci_method=None, p50_ci_low_us=None, p50_ci_high_us=None)
    return row


def estimate(row: dict[str, Any] | pd.Series) -> stats.Estimate | None:
    """A point's p50 as a ``rechar.stats.Estimate`` (for ratios), from its row of points.parquet."""
    value, low, high = row.get("p50_us"), row.get("p50_ci_low_us"), row.get("p50_ci_high_us")
    if value is None or low is None or high is None or any(pd.isna(v) for v in (value, low, high)):
        return None
    n = row.get("timed_rounds")
    if row.get("ci_method") == "rounds" and n and n >= 2:
        q = stats.t_quantile(n - 1)
        return stats.Estimate(value, low, high, (math.log(high) - math.log(value)) / q, n - 1, "rounds")
    q = stats.t_quantile(math.inf)
    log_se = (math.log(high) - math.log(low)) / (2 * q) if low > 0 else float("nan")
    return stats.Estimate(value, low, high, log_se, math.inf, "iterations")
