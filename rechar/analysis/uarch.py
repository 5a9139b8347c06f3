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


#: ONNX ops that pool embedding rows in these graphs (PyTorch's embedding_bag pools inside the
#: embedding op): a lookup's cost on ONNX Runtime is its Gather's and its share of these.
POOLING_OPS = ("ReduceSum", "ReduceMean")


def load_ops(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per simulated point and native op (uarch.jsonl's ``ops``), with its category."""
    from rechar.results.store import read_log
    from rechar.uarch.symbols import RUNTIME, UNATTRIBUTED, op_category

    rows = []
    for run_dir in map(Path, run_dirs):
        host = read_manifest(run_dir).get("host", {}).get("hostname")
        for rec in read_log(run_dir, UARCH_LOG):
            if rec.get("status") != "ok":
                continue
            for op, costs in rec["ops"].items():
                category = op if op in (RUNTIME, UNATTRIBUTED) else op_category(op)
                rows.append({"host": host, "model": rec["model"], "backend": rec["backend"], "batch": rec["batch"],
                             "samples": rec["calls"] * rec["batch"], "op": op, "category": category, **costs})
    return pd.DataFrame(rows)


def embedding_lookup_cost(ops: pd.DataFrame, lookups: dict[str, int]) -> pd.DataFrame:
    """Per point: simulated instructions and misses per embedding row looked up, of the
    embedding ops and the pooling reductions (POOLING_OPS): PyTorch's fused embedding_bag
    against ONNX Runtime's Gather + ReduceSum. A model whose graph also reduces outside its
    embedding stage would be overcharged here."""
    cols = [*POINT, "lookups_per_sample", "instructions_per_lookup", "ll_misses_per_lookup", "d1_misses_per_lookup"]
    if ops.empty:
        return pd.DataFrame(columns=cols)
    chosen = ops[(ops["category"] == "embedding") | ops["op"].isin(POOLING_OPS)]
    if chosen.empty:
        return pd.DataFrame(columns=cols)
    ok = chosen.groupby(POINT, as_index=False).agg(
        {"samples": "first", **{e: "sum" for e in ("Ir", "D1mr", "D1mw", "DLmr", "DLmw", "ILmr")}})
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


#: (counted metric of rechar.analysis.counters, simulated metric of the uarch table, name):
#: the figures both passes give for the same point.
COUNTED_BESIDE_SIMULATED = [
    ("instructions_per_sample", "instructions_per_sample", "instructions_per_sample"),
    ("branch_mpki", "branch_mpki", "branch_mpki"),
    ("llc_mpki", "ll_mpki", "llc_mpki"),
    ("l1d_mpki", "d1_mpki", "l1d_mpki"),
]


def counted_beside_simulated(counters: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """Per point that both a counting pass (hardware events) and the simulation pass measured:
    each figure counted and simulated, and simulated / counted. Only points whose counted
    instructions exist (a machine with a PMU); empty elsewhere.

    The two passes do not run the same instructions exactly: the counted pass covers every
    thread of the worker at the kernels' native ISA (AVX-512 where the CPU has it), the simulated
    one a single intra-op thread at AVX2 at most. A run counted with ``--threads 1`` is the fair
    comparison; the ratio says how far apart they are, it is not a correction."""
    cols = [*POINT, *(f"{name}_{side}" for _, _, name in COUNTED_BESIDE_SIMULATED for side in ("counted", "simulated")),
            "instructions_ratio"]
    if counters.empty or simulated.empty or "instructions_per_sample" not in counters:
        return pd.DataFrame(columns=cols)
    counted = counters[(counters["status"] == "ok") & (counters["device"] == "cpu")
                       & counters["instructions_per_sample"].notna()]
    sim = totals(simulated)
    if counted.empty or sim.empty:
        return pd.DataFrame(columns=cols)
    left = counted[POINT + [c for c, _, _ in COUNTED_BESIDE_SIMULATED]].rename(
        columns={c: f"{name}_counted" for c, _, name in COUNTED_BESIDE_SIMULATED})
    right = sim[POINT + [s for _, s, _ in COUNTED_BESIDE_SIMULATED]].rename(
        columns={s: f"{name}_simulated" for _, s, name in COUNTED_BESIDE_SIMULATED})
    both = left.merge(right, on=POINT, how="inner")
    both["instructions_ratio"] = both["instructions_per_sample_simulated"] / both["instructions_per_sample_counted"]
    return both[cols].sort_values(POINT).reset_index(drop=True)
