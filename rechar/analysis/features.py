"""Model features vs measured behaviour: how well do embedding bytes read, MACs, lookups and
sequence length per sample predict embedding share, GPU speedup, throughput and the CPU's
bottlenecks (IPC, last-level-cache misses: the study's last section), as Spearman rank
correlations over the models measured. Where a run has no hardware counters (no PMU), the
simulation pass (rechar.uarch) gives the microarchitecture metrics, named ``sim_*``: simulated,
never counted."""

from __future__ import annotations

import pandas as pd

import rechar.models as models

FEATURES = ["embedding_bytes_read_per_sample", "macs_per_sample", "lookups_per_sample", "seq_len"]
METRICS = ["embedding_share", "gpu_speedup", "cpu_throughput_sps", "ipc", "llc_mpki",
           "sim_instructions_per_sample", "sim_ll_mpki", "sim_frontend_share", "sim_backend_memory_share"]
#: metric -> the column of the simulation pass's per-point totals it averages (rechar.analysis.uarch)
SIMULATED = {"sim_instructions_per_sample": "instructions_per_sample", "sim_ll_mpki": "ll_mpki",
             "sim_frontend_share": "frontend_share", "sim_backend_memory_share": "backend_memory_share"}


def model_features(configs: dict[str, dict]) -> pd.DataFrame:
    """Per model: the features, computed from each run's resolved config."""
    rows = []
    for name, config in configs.items():
        d = models.describe(name, models.resolve_config(name, "paper", config))
        rows.append({"model": name, **{f: d.get(f, 0) for f in FEATURES}})
    return pd.DataFrame(rows, columns=["model"] + FEATURES)


def model_metrics(points: pd.DataFrame, breakdown: pd.DataFrame, speedup: pd.DataFrame,
                  counters: pd.DataFrame, simulated: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model: mean embedding share over its CPU profiles, best GPU/CPU speedup, best CPU
    throughput, mean IPC and LLC misses per kilo-instruction over its counted CPU points, and
    the means of the simulated figures (SIMULATED) over its simulated points (``simulated``: the
    per-point totals of rechar.analysis.uarch.totals)."""
    ok = points[(points["status"] == "ok") & (points["device"] == "cpu")]
    cpu_profiles = breakdown[breakdown["device"] == "cpu"]
    emb = cpu_profiles.pivot_table(index=["host", "model", "backend", "batch"], columns="category", values="share",
                                   fill_value=0.0)
    emb_share = emb["embedding"].groupby("model").mean() if "embedding" in emb.columns else pd.Series(dtype=float)
    counted = counters[(counters["device"] == "cpu") & (counters["status"] == "ok")]
    sim = simulated if simulated is not None and not simulated.empty else pd.DataFrame(
        columns=["model", *SIMULATED.values()])
    sim_means = {metric: sim.groupby("model")[column].mean().astype(float) for metric, column in SIMULATED.items()}
    return pd.DataFrame({
        "embedding_share": emb_share,
        "gpu_speedup": speedup.groupby("model")["speedup"].max() if not speedup.empty else pd.Series(dtype=float),
        "cpu_throughput_sps": ok.groupby("model")["throughput_sps"].max(),
        "ipc": counted.groupby("model")["ipc"].mean().astype(float),
        "llc_mpki": counted.groupby("model")["llc_mpki"].mean().astype(float),
        **sim_means,
    }).rename_axis("model").reset_index()


def feature_correlation(features: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """feature x metric Spearman coefficients, with the number of models each rests on; metrics
    measured on no model (no GPU run, no hardware counters) are left out."""
    table = features.merge(metrics, on="model", how="inner")
    rows = []
    for feature in FEATURES:
        for metric in METRICS:
            if metric not in table or table[metric].isna().all():
                continue
            pair = table[[feature, metric]].dropna()
            n = len(pair)
            # Spearman = Pearson over ranks (pandas' method="spearman" would need SciPy)
            rho = pair[feature].rank().corr(pair[metric].rank()) if n >= 3 else float("nan")
            rows.append({"feature": feature, "metric": metric, "spearman": rho, "models": n})
    return pd.DataFrame(rows, columns=["feature", "metric", "spearman", "models"])
