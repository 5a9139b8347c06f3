"""Sections on timing: the points that were not timed, latency and throughput per model, and
the noisy points with the stack-against-stack comparisons (rechar.analysis.comparison)."""

from __future__ import annotations

from rechar.report import charts
from rechar.report.context import ReportContext
from rechar.report.page import ms, note, num, pct, table, text, with_interval, with_ratio_interval


def not_timed(ctx: ReportContext) -> str:
    bad = ctx.points[ctx.points["status"] != "ok"].sort_values(["host", "model", "backend", "batch"])
    if bad.empty:
        return note("Every point was timed (status ok).")
    return (f"<p>{len(bad)} point(s) were not timed: <b>invalid</b> (outputs outside tolerance of eager "
            "PyTorch), <b>failed</b> (an error or a crashed worker) or <b>timeout</b>.</p>"
            + table(bad, [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                          ("device", "device", None), ("batch", "batch", None), ("status", "status", None),
                          ("reason", "error", None)], mono=("error",)))


def latency(ctx: ReportContext) -> str:
    out = ['<p>Per model: p50 (solid) and p99 (dashed) latency and throughput vs batch size, log axes, one '
           "line per backend (and machine). Hover a point for its values; click a legend entry to hide "
           "its line. Points that were not timed are left out of the charts. Inputs: <i>fresh</i> points "
           "ran each call on the next batch of a pool sized to overflow the last-level cache (the pool "
           "column: its batches); <i>replay</i> points ran every call on one batch, which keeps its "
           "embedding rows in cache (the best case). The 95% interval of the p50 is over the point's "
           "rounds (<i>rounds</i>) or, for a point measured once, over its iterations (<i>iterations</i>, "
           "optimistic). <b>noisy</b>: the machine was busy while the point was timed (see the next "
           "section).</p>"]
    for model in ctx.models:
        pts = ctx.points[ctx.points["model"] == model].sort_values(["series", "batch"])
        ok = pts[pts["status"] == "ok"]
        chart = ctx.chart(charts.latency_chart(ok, ctx.style, model)) if not ok.empty else note(
            f"No timed point of {model}.")
        out.append(f'<div class="model-block"><h3>{text(model)}</h3>{chart}</div>' + table(pts, [
            ("series", "series", ctx.series_cell), ("batch", "batch", None), ("status", "status", None),
            ("p50 ms", "p50_us", ms), ("95% interval, ms", "p50_ci_low_us", None), ("over", "ci_method", None),
            ("p99 ms", "p99_us", ms), ("samples/s", "throughput_sps", num(",.0f")),
            ("inputs", "inputs", None), ("pool", "pool_batches", num(",.0f")),
            ("noisy", "noisy", lambda v: "<b>noisy</b>" if v is True else ""),
        ], rows=with_interval(pts)))
    return "".join(out)


def noise(ctx: ReportContext) -> str:
    noisy, comparison, runner = ctx.tables["noisy"], ctx.tables["comparison"], ctx.tables["runner_up"]
    out = []
    if noisy.empty:
        out.append(note("No point was timed while the machine was busy (others' CPU use and steal time under "
                        "the run's thresholds, or not measurable)."))
    else:
        out.append(f"<p>{len(noisy)} point(s) were timed while the machine was busy: other processes took "
                   "CPU time, or the hypervisor stole it. Their figures are unreliable; re-measure them with "
                   "<code>--remeasure-noisy</code>.</p>" + table(noisy, [
                       ("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                       ("batch", "batch", None), ("others' CPU", "others_cpu_share", pct),
                       ("steal", "steal_share", pct), ("why", "noise", None)]))
    if not comparison.empty:
        ref = text(comparison["reference"].iloc[0])
        out.append(f"<h3>Stack against stack</h3><p>p50 of each backend over {ref}'s at the same point, with "
                   "the 95% interval of the ratio; where it contains 1 the two are not significantly "
                   "different.</p>" + table(comparison, [
                       ("host", "host", None), ("model", "model", None), ("batch", "batch", None),
                       ("backend", "backend", None), ("p50 ms", "p50_us", ms), (f"{ref} p50 ms", "reference_p50_us", ms),
                       ("ratio", "ratio", num(".2f")), ("95% interval", "ratio_low", None),
                       ("verdict", "verdict", None)], rows=with_ratio_interval(comparison)))
    if not runner.empty:
        out.append("<h3>Best deployment against the runner-up</h3><p>Throughput (batch / p50) of the best "
                   "deployment under the bound over the next best's.</p>" + table(runner, [
                       ("model", "model", None), ("best", "best", None), ("runner-up", "runner_up", None),
                       ("ratio", "ratio", num(".2f")), ("95% interval", "ratio_low", None),
                       ("verdict", "verdict", None)], rows=with_ratio_interval(runner)))
    return "".join(out)
