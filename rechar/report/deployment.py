"""Sections on deployment choices (rechar.analysis.deployment): GPU/CPU speedup with the
crossover batch, and the best deployment under the latency bound."""

from __future__ import annotations

import pandas as pd

from rechar.report import charts
from rechar.report.context import ReportContext
from rechar.report.page import ms, note, num, table, text, with_ratio_interval


def speedup(ctx: ReportContext) -> str:
    sp, cross = ctx.tables["speedup"], ctx.tables["crossover"]
    if sp.empty:
        return note("No GPU run was given (no point ran on a GPU), so there is no GPU/CPU speedup: run "
                    "rechar run --backend torch-cuda,ort-cuda on a GPU machine and pass both runs.")
    chart = ctx.chart(charts.speedup_heatmap(sp, cross))
    crossover_table = table(cross, [
        ("model", "model", None), ("CPU backend", "cpu_backend", None), ("GPU backend", "gpu_backend", None),
        ("CPU host", "cpu_host", None), ("GPU host", "gpu_host", None),
        ("crossover batch", "crossover_batch", lambda v: "never" if pd.isna(v) else str(int(v))),
        ("max speedup", "max_speedup", num(".2f")), ("at batch", "at_batch", None),
    ])
    per_batch = table(sp, [
        ("model", "model", None), ("CPU backend", "cpu_backend", None), ("GPU backend", "gpu_backend", None),
        ("batch", "batch", None), ("speedup", "speedup", num(".2f")), ("95% interval", "speedup_low", None),
        ("verdict", "verdict", None),
    ], rows=with_ratio_interval(sp, "speedup"))
    return ("<p>CPU p50 / GPU p50 of each GPU stack against its CPU counterpart (torch with torch-cuda, "
            "ort-cpu with ort-cuda and ort-cuda-graph, tf on CPU with tf on GPU), also across machines. The crossover is the smallest batch from which the "
            "GPU wins at every larger measured batch.</p>" + chart + crossover_table + per_batch)


def best(ctx: ReportContext) -> str:
    best = ctx.tables["best"]
    if best.empty:
        return note("No points.")
    return (f"<p>Per model, the machine, backend and batch size with the highest throughput whose p99 "
            f"latency is at most {ctx.bound:g} ms.</p>" + table(best, [
                ("model", "model", None),
                ("host", "host", lambda v: "no point meets the bound" if pd.isna(v) else text(v)),
                ("backend", "backend", None), ("device", "device", None),
                ("batch", "batch", lambda v: "–" if pd.isna(v) else str(int(v))),
                ("samples/s", "throughput_sps", num(",.0f")), ("p50 ms", "p50_us", ms), ("p99 ms", "p99_us", ms),
            ]))
