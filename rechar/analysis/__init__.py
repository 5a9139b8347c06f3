"""Per-operator profiles and the analyses over them.

    >>> from rechar.analysis import analyze
    >>> tables = analyze(["runs/cpu-server-run", "runs/gpu-server-run"], p99_bound_ms=10)
    >>> tables["breakdown"]            # tidy pandas DataFrames, one per analysis

Each analysis is a small function over two tidy tables: ``points`` (one row per timed point,
rechar.results.store) and ``ops`` (one row per profiled operator, rechar.analysis.ops).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from rechar.analysis.comparison import fastest_stacks, noisy_points, runner_up, speedup_intervals, stack_comparison
from rechar.analysis.breakdown import (bottleneck_shift, breakdown_wide, category_breakdown, dominant_shifts,
                                      dominant_table)
from rechar.analysis.counters import counted_metrics, counter_support, counter_table, load_counters
from rechar.analysis.deployment import best_deployment, crossover, gpu_speedup
from rechar.analysis.features import feature_correlation, model_features, model_metrics
from rechar.analysis.precision import precision_shift, precision_table
from rechar.analysis.ops import OPS_COLUMNS, coverage, load_ops, profile_time_basis, unmapped_ops
from rechar.analysis.serving import best_policy, load_curve, serving_capacity
from rechar.analysis.uarch import counted_beside_simulated, load_runs as load_uarch_runs, totals as uarch_totals
from rechar.errors import UserError
from rechar.measure.counters import HARDWARE
from rechar.analysis.corrections import corrections
from rechar.results.store import load_points, read_manifest
from rechar.sweep.cluster import member_runs
from rechar.serving.trials import TRIAL_COLUMNS, is_serve_run, load_trials

__all__ = ["analyze", "load_runs", "format_tables", "Runs"]


@dataclasses.dataclass
class Runs:
    """The tidy tables of one or more runs, each row labelled with its host."""

    points: pd.DataFrame  # rechar.results.store.POINT_COLUMNS + host
    ops: pd.DataFrame  # rechar.analysis.ops.OPS_COLUMNS + host
    counters: pd.DataFrame  # rechar.analysis.counters.COUNTER_COLUMNS
    configs: dict[str, dict]  # model -> resolved config (the runs must agree)
    manifests: dict[str, dict]  # host -> manifest of its (last) run
    trials: pd.DataFrame  # rechar.serving.trials.TRIAL_COLUMNS + host: LoadGen tests of serving runs
    time_basis: pd.DataFrame  # host, backend, time_basis, points: what GPU profiles' op times cover
    corrections: pd.DataFrame  # run_id, host + rechar.results.annotations.corrections: applied on read
    simulated: pd.DataFrame  # rechar.analysis.uarch.totals: one row per simulated point (empty: no uarch pass)


def load_runs(run_dirs: list[str | Path]) -> Runs:
    if not run_dirs:
        raise UserError("give at least one run folder")
    points, ops, counters, trials, configs, manifests, bases, fixes = [], [], [], [], {}, {}, [], []
    # A cluster run made with --each-node stands for its per-node runs, one platform each.
    run_dirs = [m for r in map(Path, run_dirs) for m in member_runs(r, read_manifest(r))]
    for run_dir in run_dirs:
        manifest = read_manifest(run_dir)
        host = manifest.get("host", {}).get("hostname")
        manifests[host] = manifest
        if is_serve_run(manifest):
            trials.append(load_trials(run_dir))
        points.append(load_points(run_dir))
        run_ops = load_ops(run_dir)
        if not run_ops.empty:  # an empty, untyped frame would turn every concatenated column to object
            ops.append(run_ops.assign(host=host))
        bases.append(profile_time_basis(run_dir).assign(host=host))
        fixes.append(corrections(run_dir).assign(run_id=manifest.get("run_id"), host=host))
        run_counters = load_counters(run_dir)
        if not run_counters.empty:
            counters.append(run_counters)
        for name, config in manifest.get("configs", {}).items():
            if configs.setdefault(name, config) != config:
                raise UserError(f"runs disagree on the config of {name}; compare runs of the same models")
    all_ops = pd.concat(ops, ignore_index=True) if ops else pd.DataFrame(columns=[*OPS_COLUMNS, "host"])
    all_counters = pd.concat(counters, ignore_index=True) if counters else counter_table([])
    all_trials = pd.concat(trials, ignore_index=True) if trials else pd.DataFrame(columns=[*TRIAL_COLUMNS, "host"])
    return Runs(pd.concat(points, ignore_index=True), all_ops, all_counters, configs, manifests, all_trials,
                pd.concat(bases, ignore_index=True), pd.concat(fixes, ignore_index=True),
                uarch_totals(load_uarch_runs(run_dirs)))


def analyze(run_dirs: list[str | Path], p99_bound_ms: float = 10.0, reference: str = "torch") -> dict[str, pd.DataFrame]:
    """All analyses over the given runs, as named tidy tables."""
    runs = load_runs(run_dirs)
    points, ops, counters = runs.points, runs.ops, runs.counters
    breakdown = category_breakdown(ops)
    shift = bottleneck_shift(breakdown, reference)
    speedup = speedup_intervals(gpu_speedup(points), points)
    best = best_deployment(points, p99_bound_ms)
    capacity = serving_capacity(runs.trials)
    return {
        "points": points,
        "ops": ops,
        "coverage": coverage(ops, points).merge(points[["run_id", "host"]].drop_duplicates(), on="run_id")
        if not ops.empty else pd.DataFrame(),
        "unmapped": unmapped_ops(ops) if not ops.empty else pd.DataFrame(),
        "breakdown": breakdown,
        "time_basis": runs.time_basis,
        "corrections": runs.corrections,
        "breakdown_wide": breakdown_wide(breakdown) if not breakdown.empty else pd.DataFrame(),
        "shift": shift,
        "dominant": dominant_table(shift) if not shift.empty else pd.DataFrame(),
        "dominant_shifts": dominant_shifts(shift),
        "speedup": speedup,
        "crossover": crossover(speedup),
        "precision": precision_table(points),
        "precision_shift": precision_shift(breakdown),
        "best": best,
        "runner_up": runner_up(best, points, p99_bound_ms),
        "comparison": stack_comparison(points, reference),
        "fastest": fastest_stacks(points),
        "noisy": noisy_points(points),
        "counters": counters,
        "counter_support": counter_support(runs.manifests),
        "counted_beside_simulated": counted_beside_simulated(counters, runs.simulated),
        "serving": capacity,
        "serving_best": best_policy(capacity),
        "serving_curve": load_curve(runs.trials) if not runs.trials.empty else pd.DataFrame(),
        "correlation": feature_correlation(model_features(runs.configs),
                                           model_metrics(points, breakdown, speedup, counters, runs.simulated)),
    }


def format_tables(tables: dict[str, pd.DataFrame]) -> str:
    """The printed summary of ``rechar analyze``."""
    pd.set_option("display.width", 200)
    sections = []

    def add(title: str, df: pd.DataFrame, empty: str) -> None:
        sections.append(f"== {title}\n" + (df.to_string(index=False, float_format=lambda v: f"{v:.3g}") if not df.empty else empty))

    if not tables["corrections"].empty:
        add("corrections applied to the runs' records (annotations.json; the logs are as written)",
            tables["corrections"][["run_id", "log", "match", "set", "records", "why"]], "")
    if not tables["serving"].empty:
        add("serving under load: highest rate (queries/s) within the p99 bound per policy (LoadGen Server)",
            tables["serving"][["host", "model", "backend", "offload", "policy", "capacity_qps", "result", "p99_ms",
                               "first_failing_qps", "offline_qps", "predicted_qps", "prediction_ratio", "note"]], "")
        add("serving: best policy per model and stack, its gain over whole queries, and the offline view's choice",
            tables["serving_best"], "")
        if tables["points"].empty:
            return "\n\n".join(sections)

    wide = tables["breakdown_wide"]
    if not wide.empty:
        wide = wide.copy()
        for c in wide.columns[5:]:
            wide[c] = (100 * wide[c]).round(1)
    add("1. operator-category breakdown (% of profiled time per point)", wide,
        "(no profiles: run with --profile, or rechar profile RUN_DIR)")
    add("2. bottleneck shift: dominant category per backend (same host, device, batch)", tables["dominant"],
        "(no profiles)")
    shift = tables["shift"]
    if not shift.empty:
        moved = shift[shift["delta"].abs() >= 0.05].copy()
        moved["delta"] = (100 * moved["delta"]).round(1)
        add("2b. category shares that differ by >= 5 points from the reference backend",
            moved[["host", "model", "device", "batch", "backend", "category", "delta"]], "(none)")
    add("3. GPU/CPU speedup (p50) and crossover batch", tables["crossover"],
        "(no GPU points: run on a GPU machine and pass both runs)")
    speedup = tables["speedup"]
    if not speedup.empty:
        add("3b. GPU/CPU speedup per batch, 95% interval",
            speedup[["model", "cpu_backend", "gpu_backend", "cpu_host", "gpu_host", "batch", "speedup", "speedup_low",
                     "speedup_high", "verdict"]], "")
    prec = tables["precision"]
    if not prec.empty:
        add("3c. reduced precision against fp32 (same stack, host, batch): speedup, weight memory, quality",
            prec[["host", "model", "stack", "precision", "batch", "status", "speedup", "memory_ratio",
                  "quality_logit_mean", "quality_logit_max", "quality_pair_agreement"]], "")
        moved = tables["precision_shift"]
        moved = moved[moved["delta"].abs() >= 0.05].copy()
        moved["delta"] = (100 * moved["delta"]).round(1)
        add("3d. category shares that move by >= 5 points from fp32", moved, "(none)")
    add("4. best deployment under the p99 bound", tables["best"], "(no points)")
    add("4b. best deployment against the runner-up (throughput ratio, 95% interval)", tables["runner_up"],
        "(fewer than two points meet the bound)")
    comparison = tables["comparison"]
    add("stack against stack: p50 over the reference backend's at the same point (95% interval)",
        comparison.drop(columns=["reference"]) if not comparison.empty else comparison,
        "(no point of the reference backend to compare with)")
    fastest = tables["fastest"]
    add("fastest stack per model at its smallest and largest timed batch (runner-up p50 / fastest p50, 95% interval)",
        fastest[["model", "batch", "host", "backend", "device", "p50_us", "runner_up_backend", "runner_up_p50_us",
                 "ratio", "ratio_low", "ratio_high", "ci_method", "verdict"]] if not fastest.empty else fastest,
        "(no timed point)")
    noisy = tables["noisy"]
    if not noisy.empty:
        add("noisy points: the machine was busy while they were timed (compare with care; --remeasure-noisy)",
            noisy, "")
    add("5. model features vs measured behaviour (Spearman)", tables["correlation"], "(no points)")
    counters = tables["counters"]
    ok = counters[counters["status"] == "ok"] if not counters.empty else counters
    add("6. CPU event counts per point (perf stat over the counting pass)",
        ok[["host", "model", "backend", "device", "batch", *counted_metrics(ok)]] if not ok.empty else ok,
        "(no counts: run with --counters, or rechar counters RUN_DIR)")
    failed = counters[counters["status"] != "ok"] if not counters.empty else counters
    if not failed.empty:
        add("counting passes that failed", failed[["host", "model", "backend", "batch", "error"]], "")
    if not tables["counted_beside_simulated"].empty:
        add("the same points counted (perf) and simulated (callgrind): instructions per sample, simulated/counted",
            tables["counted_beside_simulated"], "")
    for row in tables["counter_support"].itertuples():
        if row.hardware_events < len(HARDWARE):
            sections.append(f"note ({row.host}): {row.note}")
    cov = tables["coverage"]
    if not cov.empty:
        add("profile coverage (profiled time per iteration / timed p50)",
            cov[["host", "model", "backend", "device", "batch", "profiled_us", "p50_us", "coverage"]], "")
    if not tables["unmapped"].empty:
        add("native ops with no category (counted as other)", tables["unmapped"], "")
    return "\n\n".join(sections)
