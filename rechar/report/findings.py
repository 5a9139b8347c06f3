"""The report's opening section: what was found, in a few lines computed from the analysis
tables (rechar.analysis), each topic linking to the section that holds its figures:

- per model, the fastest stack at the smallest and at the largest timed batch, and how much
  faster it is than the runner-up (with the ratio's 95% interval where both points were
  measured in rounds);
- where the dominant operator category differs between stacks profiled at the same point;
- the best deployment under the p99 bound, against the runner-up;
- the best serving policy per model and stack (serving runs);
- the points flagged noisy, the points not timed and the backends skipped.
"""

from __future__ import annotations

import pandas as pd

from rechar.report import serving
from rechar.report.context import ReportContext
from rechar.report.page import ms, text

#: At most this many lines per topic; the rest are counted and left to the topic's section.
MAX_LINES = 8


def section(ctx: ReportContext) -> str:
    if ctx.serving_only:
        topics = [("Best serving policy", "serving", _serving(ctx))]
        scope = serving.summary(ctx.tables, ctx.manifests)
    else:
        topics = [
            ("Fastest stack per model", "noise", _fastest(ctx)),
            ("Bottleneck shift across stacks", "shift", _shifts(ctx)),
            (f"Best deployment under p99 ≤ {ctx.bound:g} ms", "best", _best(ctx)),
            ("Best serving policy", "serving", _serving(ctx) if not ctx.tables["serving"].empty else []),
            ("Noisy points", "noise", _noisy(ctx)),
            ("Points not timed", "not-timed", _not_timed(ctx)),
        ]
        scope = _scope(ctx)
    body = "".join(f'<h3>{text(title)} <a class="more" href="#{anchor}">(details)</a></h3>'
                   f"<ul>{''.join(f'<li>{line}</li>' for line in lines)}</ul>"
                   for title, anchor, lines in topics if lines)
    return scope + body


def _scope(ctx: ReportContext) -> str:
    """What the runs measured, in one paragraph."""
    p = ctx.points
    starts = sorted(str(m.get("started")) for m in ctx.manifests)
    hosts = sorted(p["host"].unique()) or [str(m.get("host", {}).get("hostname")) for m in ctx.manifests]
    return (f'<p class="lead">{len(ctx.manifests)} run(s), started {text(starts[0])}'
            f"{' to ' + text(starts[-1]) if len(starts) > 1 else ''}, on {text(', '.join(hosts))}: "
            f"{len(ctx.models)} model(s) ({text(', '.join(ctx.models))}), backends "
            f"{text(', '.join(sorted(p['backend'].unique())))}, batch sizes "
            f"{text(', '.join(map(str, sorted(p['batch'].unique()))))}; {len(p)} points, "
            f"{int((p['status'] == 'ok').sum())} timed. Latency bound for the best deployment: "
            f"p99 ≤ {ctx.bound:g} ms.</p>")


def _fastest(ctx: ReportContext) -> list[str]:
    fastest = ctx.tables["fastest"]
    if fastest.empty:
        return ["No point was timed."]
    fastest = fastest.assign(
        label=ctx.series(fastest),
        runner_up=ctx.series(fastest[["runner_up_host", "runner_up_backend", "runner_up_device"]].rename(
            columns=lambda c: c.removeprefix("runner_up_"))))
    lines, measured_once = [], False  # a ratio shown without an interval over rounds
    for model, group in fastest.groupby("model", sort=True):
        parts = []
        for row in group.to_dict("records"):
            lead = f"at batch {row['batch']}, <b>{text(row['label'])}</b> ({ms(row['p50_us'])} ms p50)"
            if row["stacks"] < 2:
                parts.append(f"{lead} is the only stack timed")
                continue
            runner = f"{text(row['runner_up'])} ({ms(row['runner_up_p50_us'])} ms)"
            if row["ci_method"] != "rounds" or pd.isna(row["ratio_low"]):
                measured_once = True
                parts.append(f"{lead} is {row['ratio']:.2f}× faster than {runner}")
            elif row["ratio_low"] <= 1.0:
                parts.append(f"{lead} is not significantly faster than {runner}: {row['ratio']:.2f}×, 95% interval "
                             f"{row['ratio_low']:.2f}–{row['ratio_high']:.2f} over rounds")
            else:
                parts.append(f"{lead} is {row['ratio']:.2f}× faster than {runner} (95% interval "
                             f"{row['ratio_low']:.2f}–{row['ratio_high']:.2f} over rounds)")
        lines.append(f"<b>{text(model)}</b>: " + "; ".join(parts) + ".")
    if measured_once:
        lines.append("A ratio without an interval compares points measured in one round: its interval over "
                     "iterations is optimistic (the comparison tables give it); <code>--rounds N</code> measures "
                     "each point in N fresh workers and gives intervals over rounds.")
    return lines


def _shifts(ctx: ReportContext) -> list[str]:
    if ctx.tables["breakdown"].empty:
        return ["Not profiled (rechar run --profile, or rechar profile RUN_DIR): no breakdown to compare."]
    shifts = ctx.tables["dominant_shifts"]
    if shifts.empty:
        return ["Wherever two or more stacks were profiled at the same point, they agree on the dominant category."]
    shifts = shifts.assign(series=ctx.series(shifts))
    groups: dict[tuple, list[int]] = {}  # (model, device, host, ((series, category), ...)) -> batches
    shares: dict[tuple, list[float]] = {}  # (group, series) -> its dominant shares
    for (host, model, device, batch), point in shifts.groupby(["host", "model", "device", "batch"], sort=True):
        point = point.set_index("series").loc[ctx.ordered(point["series"])]
        key = (model, device, host, tuple(zip(point.index, point["dominant"])))
        groups.setdefault(key, []).append(int(batch))
        for series, share in point["dominant_share"].items():
            shares.setdefault((key, series), []).append(share)
    lines = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], groups[k][0])):
        model, device, host, pattern = key
        where = f"<b>{text(model)}</b> on {text(device)}{' @ ' + text(host) if ctx.several_hosts else ''}"
        dominant = "; ".join(f"{text(category)} ({_share_range(shares[(key, series)])}) on {text(series)}"
                             for series, category in pattern)
        lines.append(f"{where}, {_batches(groups[key])}: {dominant}.")
    return _capped(lines)


def _best(ctx: ReportContext) -> list[str]:
    best, runner = ctx.tables["best"], ctx.tables["runner_up"].set_index("model")
    if best.empty:
        return []
    met = best[best["backend"].notna()]
    labels = dict(zip(met["model"], ctx.series(met))) if not met.empty else {}
    lines = []
    for row in best.to_dict("records"):
        model = row["model"]
        if pd.isna(row["backend"]):
            lines.append(f"<b>{text(model)}</b>: no point meets the bound.")
            continue
        line = (f"<b>{text(model)}</b>: <b>{text(labels[model])}</b> at batch {int(row['batch'])}, "
                f"{row['throughput_sps']:,.0f} samples/s (p99 {ms(row['p99_us'])} ms)")
        if model in runner.index:
            r = runner.loc[model]
            over_rounds = r["ci_method"] == "rounds" and pd.notna(r["ratio_low"])
            if over_rounds and r["ratio_low"] <= 1.0:
                line += (f", not significantly more than the runner-up, {text(r['runner_up'])} ({r['ratio']:.2f}×, "
                         f"95% interval {r['ratio_low']:.2f}–{r['ratio_high']:.2f} over rounds)")
            else:
                line += f", {r['ratio']:.2f}× the throughput of the runner-up, {text(r['runner_up'])}"
                if over_rounds:
                    line += f" (95% interval {r['ratio_low']:.2f}–{r['ratio_high']:.2f} over rounds)"
        else:
            line += ", the only point that meets the bound"
        lines.append(line + ".")
    return lines


def _serving(ctx: ReportContext) -> list[str]:
    best = ctx.tables["serving_best"]
    if best.empty:
        return ["No serving configuration ran to the end."]
    lines = []
    for row in best.sort_values(["model", "backend", "host"]).to_dict("records"):
        where = f"<b>{text(row['model'])}</b> on {text(row['backend'])}"
        where += f" (offload {text(row['offload'])})" if isinstance(row["offload"], str) and row["offload"] else ""
        where += f" @ {text(row['host'])}" if best["host"].nunique() > 1 else ""
        if not isinstance(row["best_policy"], str):
            lines.append(f"{where}: no policy met the bound.")
            continue
        gain = ""
        if pd.notna(row["gain_over_query"]) and not row["best_policy"].startswith("query"):
            gain = f", {row['gain_over_query']:.2f}× whole queries"
        elif row["query_policy_qps"] == 0:
            gain = "; whole queries met the bound at no rate tried"
        lines.append(f"{where}: policy {text(row['best_policy'])}, {row['capacity_qps']:,.0f} queries/s "
                     f"within the bound{gain}.")
    return _capped(lines)


def _noisy(ctx: ReportContext) -> list[str]:
    noisy = ctx.tables["noisy"]
    if noisy.empty:
        return ["No point was flagged noisy."]
    noisy = noisy.assign(series=ctx.series(noisy))
    groups = noisy.groupby(["model", "series"], sort=True)["batch"].agg(sorted)
    lines = [f"{len(noisy)} point(s) were timed while the machine was busy; re-measure them with "
             "<code>--remeasure-noisy</code>:"]
    return lines + _capped([f"<b>{text(model)}</b> on {text(series)}, {_batches(batches)}."
                            for (model, series), batches in groups.items()])


def _not_timed(ctx: ReportContext) -> list[str]:
    bad = ctx.points[ctx.points["status"] != "ok"]
    lines = []
    if not bad.empty:
        groups = bad.groupby(["model", "series", "status"], sort=True)["batch"].agg(sorted)
        lines.append(f"{len(bad)} point(s) were not timed:")
        lines += _capped([f"<b>{text(model)}</b> on {text(series)}, {_batches(batches)}: {text(status)}."
                          for (model, series, status), batches in groups.items()])
    for m in ctx.manifests:
        host = m.get("host", {}).get("hostname")
        for backend, reason in (m.get("skipped_backends") or {}).items():
            lines.append(f"{text(backend)} was skipped on {text(host)}: {text(reason)}")
    return lines or ["Every point was timed."]


def _batches(batches: list[int]) -> str:
    """'batch 4', 'batches 2 and 4', 'batches 1, 16 and 64'."""
    b = [str(int(x)) for x in batches]
    return f"batch {b[0]}" if len(b) == 1 else f"batches {', '.join(b[:-1])} and {b[-1]}"


def _share_range(shares: list[float]) -> str:
    low, high = round(100 * min(shares)), round(100 * max(shares))
    return f"{low}%" if low == high else f"{low}–{high}%"


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"… and {len(lines) - MAX_LINES} more."]
