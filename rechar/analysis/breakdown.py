"""Where the time goes: operator-category breakdown per point, and how the dominant category
shifts between backends on the same hardware (the study's operator-breakdown figure, extended
across stacks)."""

from __future__ import annotations

import pandas as pd

from rechar.taxonomy import CATEGORIES

POINT = ["host", "model", "backend", "device", "batch"]


def category_breakdown(ops: pd.DataFrame) -> pd.DataFrame:
    """Tidy: host, model, backend, device, batch, category, self_us_per_iter, share (of the
    point), share_sd. With several profiled rounds per point, each round's shares are computed
    apart: ``share`` is their mean and ``share_sd`` their standard deviation (NaN for one round)."""
    if ops.empty:
        return pd.DataFrame(columns=POINT + ["category", "self_us_per_iter", "share", "share_sd"])
    ops = ops if "round" in ops else ops.assign(round=0)
    per_round = ops.groupby(POINT + ["round", "category"], as_index=False)["self_us_per_iter"].sum()
    per_round["share"] = per_round["self_us_per_iter"] / per_round.groupby(POINT + ["round"])[
        "self_us_per_iter"].transform("sum")
    # a category absent from a round of its point counts as 0 there
    rounds = per_round.groupby(POINT)["round"].transform("nunique")
    df = per_round.groupby(POINT + ["category"], as_index=False).agg(
        self_us_per_iter=("self_us_per_iter", "sum"), share=("share", "sum"), share_sq=("share", lambda s: (s ** 2).sum()))
    n = df.merge(per_round.assign(n=rounds)[POINT + ["n"]].drop_duplicates(POINT), on=POINT)["n"].to_numpy()
    df["self_us_per_iter"] = df["self_us_per_iter"] / n
    df["share"] = df["share"] / n
    df["share_sd"] = ((df["share_sq"] - n * df["share"] ** 2) / (n - 1)).clip(lower=0) ** 0.5
    df.loc[n < 2, "share_sd"] = float("nan")
    df = df.drop(columns="share_sq")
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return df.sort_values(POINT + ["category"], key=lambda s: s.map(order) if s.name == "category" else s,
                          ignore_index=True)


def breakdown_wide(breakdown: pd.DataFrame) -> pd.DataFrame:
    """One row per point, one column per category (shares), in the canonical category order."""
    wide = breakdown.pivot_table(index=POINT, columns="category", values="share", fill_value=0.0)
    return wide[[c for c in CATEGORIES if c in wide.columns]].reset_index()


def bottleneck_shift(breakdown: pd.DataFrame, reference: str = "torch") -> pd.DataFrame:
    """Per host, model, device and batch: each backend's dominant category and share, and for
    every category its share on each backend minus its share on ``reference`` (same hardware)."""
    if breakdown.empty:
        return pd.DataFrame(columns=["host", "model", "device", "batch", "backend", "dominant", "dominant_share",
                                     "category", "share", "reference_share", "delta"])
    full = breakdown_wide(breakdown).melt(id_vars=POINT, var_name="category", value_name="share")
    top = breakdown.sort_values("share", ascending=False).drop_duplicates(POINT)
    top = top[POINT + ["category", "share"]].rename(columns={"category": "dominant", "share": "dominant_share"})
    ref = full[full["backend"] == reference].drop(columns="backend").rename(columns={"share": "reference_share"})
    keys = ["host", "model", "device", "batch"]
    out = full.merge(top, on=POINT).merge(ref, on=keys + ["category"], how="left")
    out["delta"] = out["share"] - out["reference_share"]
    return out[keys + ["backend", "dominant", "dominant_share", "category", "share", "reference_share", "delta"]]


def dominant_table(shift: pd.DataFrame) -> pd.DataFrame:
    """host, model, device, batch x backend -> 'category (share%)', for printing."""
    top = shift.drop_duplicates(["host", "model", "device", "batch", "backend"])
    top = top.assign(cell=top["dominant"] + " (" + (100 * top["dominant_share"]).round(0).astype(int).astype(str) + "%)")
    return top.pivot_table(index=["host", "model", "device", "batch"], columns="backend", values="cell",
                           aggfunc="first").reset_index()


def dominant_shifts(shift: pd.DataFrame) -> pd.DataFrame:
    """The points (host, model, device, batch) whose backends disagree on the dominant category:
    one row per backend there, with its dominant category and share."""
    keys = ["host", "model", "device", "batch"]
    columns = keys + ["backend", "dominant", "dominant_share"]
    if shift.empty:
        return pd.DataFrame(columns=columns)
    top = shift.drop_duplicates(keys + ["backend"])[columns]
    disagree = top.groupby(keys)["dominant"].transform("nunique") > 1
    return top[disagree].sort_values(keys + ["backend"], ignore_index=True)
