"""The simulation pass's figures (uarch.parquet, rechar.uarch) read for the study's
microarchitecture questions: where instructions, misses and estimated cycles go per model and
stack; what an embedding lookup costs on each stack; how the front-end share moves with batch.

Every figure is simulated (callgrind's instruction counts, cache and branch-predictor models);
none is counted on hardware.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import rechar.models as models
from rechar.results.store import UARCH_LOG, read_manifest
from rechar.uarch.cycles import CLASSES

POINT = ["host", "model", "backend", "batch"]


def load_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """The uarch tables of the runs that have a simulation pass (empty if none has)."""
    from rechar.uarch.table import load_uarch

    parts = [load_uarch(d) for d in map(Path, run_dirs) if (d / UARCH_LOG).exists()]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def totals(df: pd.DataFrame) -> pd.DataFrame:
    """One row per simulated point: its totals, coverage, and Top-down-like cycle shares."""
    if df.empty:
        return df
    out = df[(df["status"] == "ok") & (df["category"] == "total")]
    return out.sort_values(POINT).reset_index(drop=True)


def where_it_goes(df: pd.DataFrame) -> pd.DataFrame:
    """Per point and category: its share of the point's instructions, last-level misses and
    estimated cycles."""
    ok = df[(df["status"] == "ok")] if not df.empty else df
    if ok.empty:
        return pd.DataFrame(columns=[*POINT, "category", "instruction_share", "ll_miss_share", "cycle_share"])
    ok = ok.assign(ll_misses=ok["ILmr"] + ok["DLmr"] + ok["DLmw"])
    total = ok[ok["category"] == "total"].set_index(POINT)
    parts = ok[ok["category"] != "total"].copy()
    keyed = parts.set_index(POINT)
    parts["instruction_share"] = (keyed["Ir"] / total["Ir"].reindex(keyed.index)).to_numpy()
    parts["ll_miss_share"] = (keyed["ll_misses"] / total["ll_misses"].reindex(keyed.index).replace(0, np.nan)).to_numpy()
    parts["cycle_share"] = (keyed["cycles_simulated"] / total["cycles_simulated"].reindex(keyed.index)).to_numpy()
    return parts[[*POINT, "category", "instruction_share", "ll_miss_share", "cycle_share"]].sort_values(
        [*POINT, "instruction_share"], ascending=[True, True, True, True, False]).reset_index(drop=True)


def lookups_per_sample(run_dirs: list[str | Path]) -> dict[str, int]:
    """model -> embedding rows read per sample, from each run's config (scale and overrides)."""
    out: dict[str, int] = {}
    for run_dir in map(Path, run_dirs):
        options = read_manifest(run_dir).get("options", {})
        for name in options.get("models", []):
            config = models.resolve_config(name, options.get("scale", models.DEFAULT_SCALE),
                                           (options.get("overrides") or {}).get(name))
            out[name] = int(models.describe(name, config).get("lookups_per_sample", 0))
    return out


def embedding_lookup_cost(df: pd.DataFrame, lookups: dict[str, int]) -> pd.DataFrame:
    """Per point: instructions and last-level misses of the embedding category per embedding
    row looked up (PyTorch's fused embedding_bag vs ONNX Runtime's Gather + ReduceSum vs ...)."""
    cols = [*POINT, "lookups_per_sample", "instructions_per_lookup", "ll_misses_per_lookup", "d1_misses_per_lookup"]
    ok = df[(df["status"] == "ok") & (df["category"] == "embedding")] if not df.empty else df
    if ok.empty:
        return pd.DataFrame(columns=cols)
    per = ok["model"].map(lookups).astype(float)
    lookups_done = ok["samples"] * per
    out = ok.assign(
        lookups_per_sample=per,
        instructions_per_lookup=ok["Ir"] / lookups_done,
        ll_misses_per_lookup=(ok["DLmr"] + ok["DLmw"] + ok["ILmr"]) / lookups_done,
        d1_misses_per_lookup=(ok["D1mr"] + ok["D1mw"]) / lookups_done,
    )
    return out[cols].sort_values(POINT).reset_index(drop=True)


def batch_shift(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and stack: the Top-down-like shares at the smallest and the largest batch
    simulated, and how they moved."""
    t = totals(df)
    rows = []
    for (host, model, backend), group in t.groupby(["host", "model", "backend"]):
        if group["batch"].nunique() < 2:
            continue
        small, large = group.loc[group["batch"].idxmin()], group.loc[group["batch"].idxmax()]
        row = {"host": host, "model": model, "backend": backend, "small_batch": int(small["batch"]),
               "large_batch": int(large["batch"])}
        for c in CLASSES:
            row[f"{c}_small"] = small[f"{c}_share"]
            row[f"{c}_large"] = large[f"{c}_share"]
        row["instructions_per_sample_small"] = small["instructions_per_sample"]
        row["instructions_per_sample_large"] = large["instructions_per_sample"]
        rows.append(row)
    return pd.DataFrame(rows)
