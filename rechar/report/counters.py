"""The section on CPU event counts (rechar.analysis.counters)."""

from __future__ import annotations

from rechar.analysis.counters import counted_metrics
from rechar.report.context import ReportContext
from rechar.report.page import note, num, pct, table
from rechar.measure.counters import HARDWARE

#: counter metric -> (column header, cell format)
COUNTER_LABELS = {
    "cpus_utilized": ("CPUs busy", num(".2f")),
    "ipc": ("IPC", num(".2f")),
    "instructions_per_sample": ("instructions/sample", num(",.0f")),
    "l1d_mpki": ("L1D MPKI", num(".1f")),
    "llc_mpki": ("LLC MPKI", num(".2f")),
    "cache_mpki": ("cache MPKI", num(".2f")),
    "dtlb_mpki": ("dTLB MPKI", num(".2f")),
    "branch_mpki": ("branch MPKI", num(".2f")),
    "frontend_stall_share": ("front-end stalls", pct),
    "backend_stall_share": ("back-end stalls", pct),
    "page_faults_per_iter": ("page faults/iter", num(".2f")),
    "context_switches_per_iter": ("context switches/iter", num(".2f")),
}


def section(ctx: ReportContext) -> str:
    counts = ctx.tables["counters"]
    if counts.empty:
        return note("No counting pass in these runs (run with --counters, or rechar counters RUN_DIR).")
    out = ["<p>perf stat over a pass per point separate from timing (at least --counter-seconds), every "
           "thread of the worker counted: <b>CPUs busy</b> is task clock over wall time (a thread pool that "
           "spins counts as busy), MPKI are misses per thousand instructions. A GPU backend's counts are its "
           "host side.</p>"]
    for row in ctx.tables["counter_support"].itertuples():
        if row.hardware_events < len(HARDWARE):
            out.append(note(f"{row.host}: {row.note}."))
    ok = counts[counts["status"] == "ok"]
    metrics = counted_metrics(ok)
    if not ok.empty:
        ok = ok.assign(series=ctx.series(ok)).sort_values(["model", "series", "batch"])
        out.append(table(ok, [("model", "model", None), ("series", "series", ctx.series_cell),
                              ("batch", "batch", None)]
                         + [(COUNTER_LABELS[m][0], m, COUNTER_LABELS[m][1]) for m in metrics]))
    bad = counts[counts["status"] != "ok"]
    if not bad.empty:
        out.append("<h3>Points whose counting pass failed</h3>" + table(
            bad.sort_values(["host", "model", "backend", "batch"]),
            [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
             ("batch", "batch", None), ("reason", "error", None)], mono=("error",)))
    return "".join(out)
