"""Deployment choices: GPU/CPU speedup with the crossover batch size, and the best backend x
batch per model under a tail-latency bound."""

from __future__ import annotations

import pandas as pd

GPU_DEVICES = ("cuda", "gpu")


def gpu_speedup(points: pd.DataFrame) -> pd.DataFrame:
    """Per model, framework and batch: CPU p50 / GPU p50, pairing each framework's CPU and GPU
    points (torch with torch-cuda, ort-cpu with ort-cuda, tf on CPU with tf on GPU), also across
    hosts (a CPU server and a GPU server)."""
    ok = points[points["status"] == "ok"]
    cpu = ok[ok["device"] == "cpu"]
    gpu = ok[ok["device"].isin(GPU_DEVICES)]
    cols = ["model", "framework", "batch"]
    merged = cpu[cols + ["host", "backend", "p50_us"]].merge(
        gpu[cols + ["host", "backend", "p50_us"]], on=cols, suffixes=("_cpu", "_gpu"))
    merged["speedup"] = merged["p50_us_cpu"] / merged["p50_us_gpu"]
    return merged.rename(columns={"host_cpu": "cpu_host", "host_gpu": "gpu_host", "backend_cpu": "cpu_backend",
                                  "backend_gpu": "gpu_backend"})[
        ["model", "framework", "cpu_backend", "gpu_backend", "cpu_host", "gpu_host", "batch", "p50_us_cpu",
         "p50_us_gpu", "speedup"]].sort_values(["model", "framework", "batch"], ignore_index=True)


def crossover(speedup: pd.DataFrame) -> pd.DataFrame:
    """The smallest batch from which the GPU wins at every larger measured batch (None if it
    never does), and the largest speedup seen."""
    rows = []
    keys = ["model", "framework", "cpu_host", "gpu_host"]
    for key, group in speedup.groupby(keys):
        group = group.sort_values("batch")
        wins = (group["speedup"] > 1.0).tolist()
        batch = None
        for i in range(len(wins)):
            if all(wins[i:]):
                batch = int(group["batch"].iloc[i])
                break
        rows.append({**dict(zip(keys, key)), "crossover_batch": batch, "max_speedup": float(group["speedup"].max()),
                     "at_batch": int(group.loc[group["speedup"].idxmax(), "batch"])})
    return pd.DataFrame(rows, columns=keys + ["crossover_batch", "max_speedup", "at_batch"])


def best_deployment(points: pd.DataFrame, p99_bound_ms: float = 10.0) -> pd.DataFrame:
    """Per model: the host x backend x batch with the highest throughput whose p99 latency meets
    the bound, across every run given. Models with no such point are listed with none."""
    ok = points[(points["status"] == "ok") & (points["p99_us"] <= p99_bound_ms * 1e3)]
    best = ok.sort_values("throughput_sps", ascending=False).drop_duplicates("model")
    best = best[["model", "host", "backend", "device", "batch", "throughput_sps", "p50_us", "p99_us"]]
    missing = sorted(set(points["model"]) - set(best["model"]))
    if missing:
        best = pd.concat([best, pd.DataFrame({"model": missing})], ignore_index=True)
    best.insert(1, "p99_bound_ms", p99_bound_ms)
    return best.sort_values("model", ignore_index=True)
