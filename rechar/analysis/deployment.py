"""Deployment choices: GPU/CPU speedup with the crossover batch size, and the best backend x
batch per model under a tail-latency bound."""

from __future__ import annotations

import pandas as pd

GPU_DEVICES = ("cuda", "gpu")


#: The CPU stack each GPU stack is compared with: the same framework, used the same way.
#: (TensorFlow is one backend, ``tf``, on whichever device it finds.)
CPU_COUNTERPART = {
    "torch-cuda": "torch", "torch-compile-cuda": "torch-compile", "ort-cuda": "ort-cpu",
    "ort-cuda-graph": "ort-cpu", "ort-trt": "ort-cpu", "tf": "tf", "tf-xla": "tf-xla",
}


def gpu_speedup(points: pd.DataFrame) -> pd.DataFrame:
    """Per model, GPU backend and batch: CPU p50 / GPU p50, pairing each GPU backend's points with
    those of its CPU counterpart (``CPU_COUNTERPART``: torch with torch-cuda, ort-cpu with
    ort-cuda and ort-cuda-graph, tf on CPU with tf on GPU, ...), also across hosts (a CPU server
    and a GPU server)."""
    ok = points[points["status"] == "ok"]
    cpu = ok[ok["device"] == "cpu"]
    gpu = ok[ok["device"].isin(GPU_DEVICES)]
    gpu = gpu.assign(cpu_backend=gpu["backend"].map(CPU_COUNTERPART))
    cols = ["model", "framework", "batch"]
    merged = cpu[cols + ["host", "backend", "p50_us"]].rename(columns={"backend": "cpu_backend"}).merge(
        gpu[cols + ["host", "backend", "cpu_backend", "p50_us"]], on=cols + ["cpu_backend"], suffixes=("_cpu", "_gpu"))
    merged["speedup"] = merged["p50_us_cpu"] / merged["p50_us_gpu"]
    return merged.rename(columns={"host_cpu": "cpu_host", "host_gpu": "gpu_host", "backend": "gpu_backend"})[
        ["model", "framework", "cpu_backend", "gpu_backend", "cpu_host", "gpu_host", "batch", "p50_us_cpu",
         "p50_us_gpu", "speedup"]].sort_values(["model", "gpu_backend", "batch"], ignore_index=True)


def crossover(speedup: pd.DataFrame) -> pd.DataFrame:
    """The smallest batch from which the GPU wins at every larger measured batch (None if it
    never does), and the largest speedup seen, per model and pair of backends (and hosts)."""
    rows = []
    keys = ["model", "cpu_backend", "gpu_backend", "cpu_host", "gpu_host"]
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
