"""Precision as a stack choice: each reduced-precision variant of a backend (``torch@int8``)
against the same backend in fp32 on the same host, model and batch: speedup, weight memory,
quality, and how the operator categories' shares move."""

from __future__ import annotations

import pandas as pd

POINT = ["host", "model", "batch"]
QUALITY = ["quality_logit_mean", "quality_logit_max", "quality_pair_agreement", "quality_max_abs", "quality_mean_abs"]


def _split(backend: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = backend.str.partition("@")
    return parts[0], parts[2].replace("", "fp32")


def precision_table(points: pd.DataFrame) -> pd.DataFrame:
    """One row per reduced-precision point with its fp32 counterpart: p50 of both, speedup (fp32
    p50 / variant p50), weight bytes of both and their ratio, the quality figures, and the
    variant's status (an invalid point failed the quality gate and was not timed)."""
    columns = ["host", "model", "stack", "precision", "batch", "status", "p50_us", "fp32_p50_us", "speedup",
               "weight_bytes", "fp32_weight_bytes", "memory_ratio", "embedding_weight_bytes",
               "fp32_embedding_weight_bytes", *QUALITY, "error"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    stack, precision = _split(points["backend"].astype(str))
    df = points.assign(stack=stack, precision=precision)
    fp32 = df[(df["precision"] == "fp32") & (df["status"] == "ok")][
        POINT + ["stack", "p50_us", "weight_bytes", "embedding_weight_bytes"]].rename(columns={
            "p50_us": "fp32_p50_us", "weight_bytes": "fp32_weight_bytes",
            "embedding_weight_bytes": "fp32_embedding_weight_bytes"})
    reduced = df[df["precision"] != "fp32"]
    if reduced.empty:
        return pd.DataFrame(columns=columns)
    out = reduced.merge(fp32, on=POINT + ["stack"], how="left")
    for column in QUALITY:  # runs from before the logit-space gate have only some of the figures
        if column not in out:
            out[column] = float("nan")
    out["speedup"] = out["fp32_p50_us"] / out["p50_us"]
    out["memory_ratio"] = out["weight_bytes"] / out["fp32_weight_bytes"]
    return out[columns].sort_values(["model", "stack", "precision", "batch"], ignore_index=True)


def precision_shift(breakdown: pd.DataFrame) -> pd.DataFrame:
    """Category shares of each reduced-precision point beside its fp32 counterpart's (same host,
    model, batch, stack): host, model, batch, stack, precision, category, share, fp32_share, delta."""
    columns = ["host", "model", "batch", "stack", "precision", "category", "share", "fp32_share", "delta"]
    if breakdown.empty:
        return pd.DataFrame(columns=columns)
    stack, precision = _split(breakdown["backend"].astype(str))
    df = breakdown.assign(stack=stack, precision=precision)
    wide = df.pivot_table(index=POINT + ["stack", "precision"], columns="category", values="share", fill_value=0.0)
    full = wide.reset_index().melt(id_vars=POINT + ["stack", "precision"], var_name="category", value_name="share")
    base = full[full["precision"] == "fp32"].drop(columns="precision").rename(columns={"share": "fp32_share"})
    out = full[full["precision"] != "fp32"].merge(base, on=POINT + ["stack", "category"], how="inner")
    out["delta"] = out["share"] - out["fp32_share"]
    return out[columns].sort_values(["model", "stack", "precision", "batch", "category"], ignore_index=True)
