"""CPU event counts per point (counters.jsonl, written by the counting pass) as one tidy table,
with the derived metrics of the study's microarchitecture section.

    host, run_id, model, backend, device, batch, status, error, iterations, seconds,
    <one column per event of rechar.measure.counters.EVENTS: its total over the pass, NaN where
    it did not count>, min_running_pct, <one column per METRICS entry>

The counts cover every thread of the worker (the framework's pool included) while the model ran
``iterations`` times; on a GPU backend they are the host side of the inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rechar.measure.counters import EVENTS
from rechar.results.store import COUNTERS_LOG, read_log, read_manifest

#: metric -> (numerator, denominator, factor): numerator / denominator * factor, per point.
#: wall_ms and samples (iterations x batch) are columns of the table too.
METRICS: dict[str, tuple[str, str, float]] = {
    "cpus_utilized": ("task_clock_ms", "wall_ms", 1.0),  # cores kept busy, spinning included
    "ipc": ("instructions", "cycles", 1.0),
    "instructions_per_sample": ("instructions", "samples", 1.0),
    "l1d_mpki": ("l1d_load_misses", "instructions", 1e3),
    "llc_mpki": ("llc_load_misses", "instructions", 1e3),
    "cache_mpki": ("cache_misses", "instructions", 1e3),
    "dtlb_mpki": ("dtlb_load_misses", "instructions", 1e3),
    "branch_mpki": ("branch_misses", "instructions", 1e3),
    "frontend_stall_share": ("stalled_cycles_frontend", "cycles", 1.0),
    "backend_stall_share": ("stalled_cycles_backend", "cycles", 1.0),
    "page_faults_per_iter": ("page_faults", "iterations", 1.0),
    "context_switches_per_iter": ("context_switches", "iterations", 1.0),
}
KEYS = ["host", "run_id", "model", "backend", "device", "batch"]
COUNTER_COLUMNS = [*KEYS, "status", "error", "iterations", "seconds", *EVENTS, "min_running_pct", *METRICS]


def counter_table(rows: list[dict]) -> pd.DataFrame:
    """COUNTER_COLUMNS from rows of the counted columns (typed even when there are none)."""
    return derive(pd.DataFrame(rows, columns=[c for c in COUNTER_COLUMNS if c not in METRICS]))


def load_counters(run_dir: str | Path) -> pd.DataFrame:
    """The counting pass of a run, one row per point (COUNTER_COLUMNS)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    rows = []
    for rec in read_log(run_dir, COUNTERS_LOG):
        counts = rec.get("counts") or {}
        running = list((rec.get("running_pct") or {}).values())
        rows.append({
            "host": manifest.get("host", {}).get("hostname"), "run_id": rec.get("run_id"),
            **{k: rec.get(k) for k in ["model", "backend", "device", "batch", "status", "error", "iterations",
                                        "seconds"]},
            **{event: counts.get(event) for event in EVENTS},
            "min_running_pct": min(running) if running else None,
        })
    return counter_table(rows)


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Add the METRICS columns (NaN where an input did not count)."""
    df = df.copy()
    numeric = [*EVENTS, "iterations", "seconds", "min_running_pct"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    df["batch"] = df["batch"].astype("int64")
    base = df.assign(wall_ms=df["seconds"] * 1e3, samples=df["iterations"] * df["batch"])
    for metric, (numerator, denominator, factor) in METRICS.items():
        df[metric] = base[numerator] / base[denominator].replace(0, np.nan) * factor
    return df[COUNTER_COLUMNS]


def counted_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics with at least one value: on a machine without hardware counters, only the
    software ones (CPUs utilized, page faults, context switches)."""
    return [m for m in METRICS if m in df and df[m].notna().any()]


def counter_support(manifests: dict[str, dict]) -> pd.DataFrame:
    """host -> what perf could count there, from the run manifests (runs without a counting pass
    are left out)."""
    rows = []
    for host, manifest in manifests.items():
        support = manifest.get("counters")
        if support:
            rows.append({"host": host, "hardware_events": len(support.get("hardware") or []),
                         "note": support.get("reason") or "every event counted"})
    return pd.DataFrame(rows, columns=["host", "hardware_events", "note"])
