"""Comparisons that say when a difference is noise: each ratio with its 95% interval and a
verdict, "no significant difference" where the interval contains 1 (rechar.stats)."""

from __future__ import annotations

import pandas as pd

from rechar import stats
from rechar.results.rounds import estimate

SAME_POINT = ["host", "model", "device", "batch"]


def stack_comparison(points: pd.DataFrame, reference: str = "torch") -> pd.DataFrame:
    """Per host, model, device and batch: every backend's p50 over the reference backend's."""
    columns = [*SAME_POINT, "backend", "reference", "p50_us", "reference_p50_us", "ratio", "ratio_low", "ratio_high",
               "verdict"]
    ok = points[points["status"] == "ok"]
    ref = ok[ok["backend"] == reference].set_index(SAME_POINT)
    rows = []
    for row in ok[ok["backend"] != reference].to_dict("records"):
        base = _row(ref, tuple(row[k] for k in SAME_POINT))
        if base is None:
            continue
        r = _ratio(row, base)
        rows.append({**{k: row[k] for k in SAME_POINT}, "backend": row["backend"], "reference": reference,
                     "p50_us": row["p50_us"], "reference_p50_us": base["p50_us"], **_fields(r, "slower", "faster")})
    return pd.DataFrame(rows, columns=columns)


def _row(indexed: pd.DataFrame, key: tuple) -> pd.Series | None:
    if key not in indexed.index:
        return None
    found = indexed.loc[key]
    return found.iloc[0] if isinstance(found, pd.DataFrame) else found


def _ratio(a, b) -> stats.Ratio | None:
    ea, eb = estimate(a), estimate(b)
    if ea is None or eb is None:
        return None
    return stats.ratio(ea, eb)


def _fields(r: stats.Ratio | None, more: str, less: str, value: float | None = None) -> dict:
    if r is None:
        return {"ratio": value, "ratio_low": None, "ratio_high": None, "verdict": "no interval"}
    return {"ratio": r.value, "ratio_low": r.low, "ratio_high": r.high, "verdict": r.verdict(more, less)}


def speedup_intervals(speedup: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """``deployment.gpu_speedup`` with the interval of each CPU/GPU ratio and its verdict."""
    if speedup.empty:
        return speedup.assign(speedup_low=[], speedup_high=[], verdict=[])
    by_point = points.set_index(["host", "backend", "model", "batch"])
    lows, highs, verdicts = [], [], []
    for row in speedup.to_dict("records"):
        cpu = _row(by_point, (row["cpu_host"], row["cpu_backend"], row["model"], row["batch"]))
        gpu = _row(by_point, (row["gpu_host"], row["gpu_backend"], row["model"], row["batch"]))
        f = _fields(_ratio(cpu, gpu), "GPU faster", "CPU faster")
        lows.append(f["ratio_low"])
        highs.append(f["ratio_high"])
        verdicts.append(f["verdict"])
    return speedup.assign(speedup_low=lows, speedup_high=highs, verdict=verdicts)


def runner_up(best: pd.DataFrame, points: pd.DataFrame, p99_bound_ms: float) -> pd.DataFrame:
    """Per model: the best deployment under the bound against the next best (another backend, or
    another batch), as a throughput ratio (batch / p50) with its interval and verdict."""
    ok = points[(points["status"] == "ok") & (points["p99_us"] <= p99_bound_ms * 1e3)]
    rows = []
    for model, group in ok.groupby("model"):
        ranked = group.sort_values("throughput_sps", ascending=False)
        if len(ranked) < 2:
            continue
        first, second = ranked.iloc[0], ranked.iloc[1]
        # throughput ratio = (b1 / p50_1) / (b2 / p50_2) = (b1 / b2) * (p50_2 / p50_1)
        r = _ratio(second, first)
        scale = first["batch"] / second["batch"]
        scaled = stats.Ratio(r.value * scale, r.low * scale, r.high * scale) if r else None
        rows.append({"model": model, "best": f"{first['backend']} b{int(first['batch'])} ({first['host']})",
                     "runner_up": f"{second['backend']} b{int(second['batch'])} ({second['host']})",
                     **_fields(scaled, "more throughput", "less throughput",
                               first["throughput_sps"] / second["throughput_sps"]),
                     "ci_method": _basis(first, second) if scaled else None})
    return pd.DataFrame(rows, columns=["model", "best", "runner_up", "ratio", "ratio_low", "ratio_high", "verdict",
                                       "ci_method"])


def fastest_stacks(points: pd.DataFrame) -> pd.DataFrame:
    """Per model, at its smallest and at its largest batch with a timed point (``end``: smallest,
    largest, or only when one batch was timed): the stack with the lowest p50 across hosts,
    devices and precisions, the runner-up, and the runner-up's p50 over the fastest's (at least 1)
    with its 95% interval, the interval's basis (``ci_method``: rounds when both points were
    measured in rounds, else iterations) and a verdict."""
    columns = ["model", "end", "batch", "stacks", "host", "backend", "device", "p50_us", "runner_up_host",
               "runner_up_backend", "runner_up_device", "runner_up_p50_us", "ratio", "ratio_low", "ratio_high",
               "ci_method", "verdict"]
    ok = points[(points["status"] == "ok") & points["p50_us"].notna()]
    rows = []
    for model, group in ok.groupby("model", sort=True):
        batches = sorted(group["batch"].unique())
        ends = [("smallest", batches[0]), ("largest", batches[-1])] if len(batches) > 1 else [("only", batches[0])]
        for end, batch in ends:
            ranked = group[group["batch"] == batch].sort_values(["p50_us", "host", "backend", "device"])
            first = ranked.iloc[0]
            row = {"model": model, "end": end, "batch": int(batch), "stacks": len(ranked),
                   **{k: first[k] for k in ("host", "backend", "device", "p50_us")}}
            if len(ranked) > 1:
                second = ranked.iloc[1]
                r = _ratio(second, first)
                row.update({f"runner_up_{k}": second[k] for k in ("host", "backend", "device", "p50_us")})
                row.update(_fields(r, "faster", "slower", second["p50_us"] / first["p50_us"]),
                           ci_method=_basis(first, second) if r else None)
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _basis(a, b) -> str:
    """What a ratio's interval is over: rounds when both points were measured in rounds."""
    return "rounds" if a.get("ci_method") == "rounds" and b.get("ci_method") == "rounds" else "iterations"


def noisy_points(points: pd.DataFrame) -> pd.DataFrame:
    """Points timed while the machine was busy (any of their rounds), with why."""
    noisy = points[points["noisy"] == True]  # noqa: E712
    return noisy[["host", "model", "backend", "device", "batch", "others_cpu_share", "steal_share", "noise"]]
