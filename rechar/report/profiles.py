"""Sections over the operator profiles (rechar.analysis.ops, rechar.analysis.breakdown): the
category breakdown, the bottleneck shift across stacks, the top operators with links to the raw
traces, and profile coverage."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from rechar.taxonomy import CATEGORIES
from rechar.report import charts
from rechar.report.charts import CATEGORY_COLORS
from rechar.report.context import REFERENCE, ReportContext
from rechar.report.page import note, num, pct, swatch, table, text

TOP_OPS = 8
SHIFT_THRESHOLD = 0.05  # category shares that move by at least 5 points are listed


def breakdown(ctx: ReportContext) -> str:
    bd = ctx.tables["breakdown"]
    if bd.empty:
        return note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR).")
    bd = bd.assign(series=ctx.series(bd))
    legend = '<div class="legend">' + "".join(
        f"<span>{swatch(CATEGORY_COLORS[c])}{text(c)}</span>" for c in CATEGORIES) + "</div>"
    out = ["<p>Share of each point's profiled operator time by category, one panel per backend, one "
           "bar per batch size. Categories follow the op, refined by the model layer it runs in "
           "(e.g. everything inside an attention unit counts as attention).</p>", legend]
    out += _time_basis_notes(ctx)
    for model in ctx.models:
        part = bd[bd["model"] == model]
        if part.empty:
            out.append(f"<h3>{text(model)}</h3>" + note("No profiles of this model."))
            continue
        chart = ctx.chart(charts.breakdown_chart(part, ctx.ordered(part["series"]), model))
        out.append(f'<div class="model-block"><h3>{text(model)}</h3>{chart}</div>')
    return "".join(out)


def _time_basis_notes(ctx: ReportContext) -> list[str]:
    """What the GPU profiles' op times cover, where a profile says: ONNX Runtime on CUDA counts
    its kernels' device time only when CUPTI's records were matched to its nodes."""
    notes = []
    for row in ctx.tables["time_basis"].itertuples():
        if row.time_basis == "host":
            notes.append(note(f"{row.backend} on {row.host}: {row.points} profiles hold host-side node "
                              "times only (no device time was matched to its nodes): its shares are of "
                              "host time, not of GPU time."))
        elif row.time_basis == "host+device":
            notes.append(note(f"{row.backend} on {row.host}: each node's time is its host-side time plus "
                              f"the device time of the kernels it launched (CUPTI), {row.points} profiles."))
    return notes


def shift(ctx: ReportContext) -> str:
    shift = ctx.tables["shift"]
    if shift.empty:
        return note("No operator profiles in these runs, so no bottleneck shift to show.")
    keys = ["host", "model", "device", "batch"]
    top = shift.drop_duplicates(keys + ["backend"])
    backends = sorted(top["backend"].unique())
    cells = top.assign(cell=[swatch(CATEGORY_COLORS[c]) + text(c) + f" ({100 * s:.0f}%)"
                             for c, s in zip(top["dominant"], top["dominant_share"])])
    wide = cells.pivot_table(index=keys, columns="backend", values="cell", aggfunc="first").reset_index()
    dominant = table(wide, [(k, k, None) for k in keys]
                     + [(b, b, lambda v: "–" if pd.isna(v) else v) for b in backends if b in wide])
    moved = shift[shift["delta"].abs() >= SHIFT_THRESHOLD]
    moved = moved.assign(size=moved["delta"].abs()).sort_values(keys + ["backend", "size"],
                                                                ascending=[True] * 5 + [False])
    moved = moved.groupby(keys + ["backend"], as_index=False, sort=False).agg(
        changes=("category", lambda c: list(zip(c, moved.loc[c.index, "delta"]))))
    moved_html = table(moved, [(k, k, None) for k in keys] + [
        ("backend", "backend", None),
        (f"share minus share on {REFERENCE}", "changes", lambda changes: ", ".join(
            swatch(CATEGORY_COLORS[c]) + f"{text(c)} {100 * d:+.1f} pts" for c, d in changes)),
    ]) if not moved.empty else note(f"No category share differs by {100 * SHIFT_THRESHOLD:.0f} points or more "
                                    f"from {REFERENCE} (or {REFERENCE} was not profiled).")
    return ("<p>Dominant category (and its share) per backend, on the same host, device and batch size.</p>"
            + dominant + f"<h3>Category shares that differ by {100 * SHIFT_THRESHOLD:.0f} points or more from "
            f"{REFERENCE}</h3>" + moved_html)


def operators(ctx: ReportContext) -> str:
    ops = ctx.tables["ops"]
    traces = _trace_links(ctx)
    out = [f"<p>Per model and backend, the {TOP_OPS} operators with the most self time per iteration at the "
           "largest profiled batch size, with the model layer they ran in, the ops a fused kernel combines "
           "(it counts in the highest-ranked category among them: fc, embedding, recurrent, attention, "
           "softmax, interaction, activation, elementwise, data movement), and links to the raw profiler "
           "traces (relative to this file: keep it beside the run folders to follow them).</p>"]
    if ops.empty and not traces:
        return note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR).")
    ops = ops.assign(series=ctx.series(ops))
    for model in ctx.models:
        blocks = []
        part = ops[ops["model"] == model]
        if not part.empty:
            for series in ctx.ordered(part["series"]):
                rows = part[part["series"] == series]
                batch = rows["batch"].max()
                top = rows[rows["batch"] == batch].nlargest(TOP_OPS, "self_us_per_iter")
                blocks.append(f"<div><h4>{text(series)}, batch {int(batch)}</h4>" + table(top, [
                    ("op", "native_op", None), ("layer", "layer", lambda v: text(v or "–")),
                    ("fuses", "fused", lambda v: text(_short_fused(v))),
                    ("category", "category", lambda c: swatch(CATEGORY_COLORS[c]) + text(c)),
                    ("µs/iter", "self_us_per_iter", num(",.1f")), ("share", "share", pct),
                ]) + "</div>")
        links = traces.get(model, [])
        trace_html = ("<p>Raw traces: " + "; ".join(
            f"{text(series)}: " + ", ".join(f'<a href="{href}">b{int(b)}</a>' for b, href in items)
            for series, items in links) + "</p>") if links else note("No raw traces for this model.")
        body = f'<div class="side">{"".join(blocks)}</div>' if blocks else note("No profiles of this model.")
        out.append(f"<h3>{text(model)}</h3>{body}{trace_html}")
    return "".join(out)


def _trace_links(ctx: ReportContext) -> dict[str, list[tuple[str, list[tuple[int, str]]]]]:
    """model -> [(series, [(batch, href)])]: each profiled point's raw trace, as a link relative to
    the report's folder."""
    found: dict[str, dict[str, list[tuple[int, str]]]] = {}
    for host, run_dir, rec in ctx.profiles:
        if rec.get("status", "ok") != "ok" or not rec.get("trace"):
            continue
        point = pd.DataFrame([{"host": host, "backend": rec["backend"], "device": rec.get("device")}])
        series = ctx.series(point).iloc[0]
        rel = os.path.relpath(run_dir.resolve() / rec["trace"], ctx.out_dir.resolve())
        href = quote(Path(rel).as_posix())  # percent-encodes quotes and markup, keeps '/'
        found.setdefault(rec["model"], {}).setdefault(series, []).append((int(rec["batch"]), href))
    return {model: [(s, sorted(by_series[s])) for s in ctx.ordered(by_series)]
            for model, by_series in found.items()}


def coverage(ctx: ReportContext) -> str:
    cov = ctx.tables["coverage"]
    failures = _profile_failures(ctx)
    out = []
    if cov.empty:
        out.append(note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR)."))
    else:
        cov = cov.assign(series=ctx.series(cov)).sort_values(["model", "series", "batch"])
        out.append("<p>Profiled self time per iteration over the timed p50, per point: how much of the measured "
                   "latency the profile explains (profilers add overhead, so it can pass 100%).</p>")
        out.append(table(cov, [("model", "model", None), ("series", "series", ctx.series_cell),
                               ("batch", "batch", None), ("profiled µs/iter", "profiled_us", num(",.1f")),
                               ("p50 µs", "p50_us", num(",.1f")), ("coverage", "coverage", pct)]))
    if failures is not None:
        out.append("<h3>Points whose profile failed</h3>" + failures)
    unmapped = ctx.tables["unmapped"]
    if not unmapped.empty:
        out.append("<h3>Native ops with no category (counted as other)</h3>" + table(unmapped, [
            ("backend", "backend", None), ("op", "native_op", None),
            ("µs/iter (all points)", "self_us_per_iter", num(",.1f"))]))
    return "".join(out)


def _profile_failures(ctx: ReportContext) -> str | None:
    rows = [{"host": host, "model": rec["model"], "backend": rec["backend"], "batch": int(rec["batch"]),
             "error": rec.get("error")} for host, _, rec in ctx.profiles if rec.get("status", "ok") != "ok"]
    if not rows:
        return None
    df = pd.DataFrame(rows).sort_values(["host", "model", "backend", "batch"])
    df = df.groupby(["host", "model", "backend", "error"], as_index=False, sort=False, dropna=False)["batch"].agg(
        lambda b: ", ".join(map(str, b)))
    return table(df, [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                      ("batches", "batch", None), ("reason", "error", None)], mono=("error",))


def _short_fused(fused) -> str | None:
    """A fused kernel's member ops, each once, without namespaces (aten::relu -> relu)."""
    if not isinstance(fused, str) or not fused:
        return None
    ops = dict.fromkeys(op.rpartition("::")[2] for op in fused.split("+"))
    return "+".join(ops)
