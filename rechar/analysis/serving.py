"""Serving under load (rechar.serving): latency-bounded throughput per configuration, the best
batching policy per model and stack, and how far the isolated-batch (offline) view was off."""

from __future__ import annotations

import pandas as pd

CONFIG = ["host", "model", "backend", "offload", "policy"]
CAPACITY_COLUMNS = [
    *CONFIG, "batch", "workers", "threads_per_executor", "status", "capacity_qps", "result", "p99_ms", "achieved_qps",
    "first_failing_qps", "failing_reason", "offline_qps", "predicted_qps", "predicted_p99_ms", "prediction_ratio",
    "trials", "noisy_trials", "mean_query_items", "p99_bound_ms", "note",
]
BEST_COLUMNS = [
    "host", "model", "backend", "offload", "best_policy", "capacity_qps", "query_policy_qps", "gain_over_query",
    "predicted_policy", "predicted_qps", "prediction_ratio",
]


def serving_capacity(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the highest Server rate that passed (LoadGen VALID and p99
    within the bound; 0 where none did), the lowest that failed above it and LoadGen's reason,
    the Offline throughput, and the offline prediction with ``prediction_ratio`` = predicted /
    measured (above 1: the isolated-batch view promised more than the server delivered)."""
    if trials.empty:
        return pd.DataFrame(columns=CAPACITY_COLUMNS)
    rows = []
    for key, group in trials.groupby(CONFIG, dropna=False, sort=True):
        group = group.sort_values("trial")
        row = dict(zip(CONFIG, key))
        first = group.iloc[0]
        row.update(batch=first["batch"], workers=first["workers"], threads_per_executor=first["threads_per_executor"],
                   p99_bound_ms=first["p99_bound_ms"], trials=int(len(group)),
                   noisy_trials=int((group["noisy"] == True).sum()),  # noqa: E712
                   mean_query_items=first["mean_query_items"])
        broken = group[group["status"] != "ok"]
        if not broken.empty:
            row.update(status=broken.iloc[0]["status"], note=broken.iloc[0]["error"])
        else:
            row["status"] = "ok"
        offline = group[group["scenario"] == "offline"]
        if not offline.empty:
            o = offline.iloc[0]
            row.update(offline_qps=o["achieved_qps"], predicted_qps=o["predicted_qps"],
                       predicted_p99_ms=o["predicted_p99_ms"])
        server = group[(group["scenario"] == "server") & (group["status"] == "ok")]
        passed = server[server["passed"] == True]  # noqa: E712
        if not passed.empty:
            best = passed.loc[passed["target_qps"].idxmax()]
            row.update(capacity_qps=best["target_qps"], result=best["result"], p99_ms=best["p99_ms"],
                       achieved_qps=best["achieved_qps"])
        elif row["status"] == "ok" and (not server.empty or not offline.empty):
            row.update(capacity_qps=0.0, result="none")
            if server.empty and not offline.empty:
                row["note"] = (f"an idle query already takes {row['predicted_p99_ms']:.3g} ms at the 99th percentile "
                               f"(bound {row['p99_bound_ms']:g} ms): no rate meets the bound")
        failing = server[(server["passed"] != True) & (server["target_qps"] > (row.get("capacity_qps") or 0))]  # noqa: E712
        if not failing.empty:
            worst = failing.loc[failing["target_qps"].idxmin()]
            row.update(first_failing_qps=worst["target_qps"], failing_reason=worst["reason"])
        capacity, predicted = row.get("capacity_qps"), row.get("predicted_qps")
        if capacity and predicted is not None and not pd.isna(predicted):
            row["prediction_ratio"] = predicted / capacity
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=CAPACITY_COLUMNS)


def best_policy(capacity: pd.DataFrame) -> pd.DataFrame:
    """Per model, stack (and offload): the policy that serves the most queries within the bound,
    its gain over serving whole queries (``query`` policies), and the policy and rate the offline
    view would have chosen, with its ratio to what was measured."""
    ok = capacity[capacity["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    rows = []
    for key, group in ok.groupby(["host", "model", "backend", "offload"], dropna=False, sort=True):
        best = group.loc[group["capacity_qps"].fillna(-1).idxmax()]
        whole = group[group["batch"].isna()]
        whole_qps = whole["capacity_qps"].max() if not whole.empty else None
        row = dict(zip(["host", "model", "backend", "offload"], key))
        row.update(best_policy=best["policy"] if best["capacity_qps"] > 0 else None, capacity_qps=best["capacity_qps"],
                   query_policy_qps=whole_qps)
        if whole_qps:
            row["gain_over_query"] = best["capacity_qps"] / whole_qps
        predicted = group[group["predicted_qps"] > 0]  # 0: the offline view says no rate meets the bound
        if not predicted.empty:
            choice = predicted.loc[predicted["predicted_qps"].idxmax()]
            row.update(predicted_policy=choice["policy"], predicted_qps=choice["predicted_qps"])
            if best["capacity_qps"] > 0:
                row["prediction_ratio"] = choice["predicted_qps"] / best["capacity_qps"]
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=BEST_COLUMNS)


def load_curve(trials: pd.DataFrame) -> pd.DataFrame:
    """Server trials as p99 against offered rate, per configuration (the knee of each curve)."""
    server = trials[(trials["scenario"] == "server") & (trials["status"] == "ok")]
    return server[[*CONFIG, "trial", "target_qps", "achieved_qps", "p50_ms", "p99_ms", "result", "passed",
                   "p99_bound_ms"]].sort_values([*CONFIG, "target_qps"], ignore_index=True)
