"""The report's section on serving under load (rechar.serving, rechar.analysis.serving): the
highest rate per policy within the bound, the best policy per model and stack against the
offline view's choice, and p99 against offered load (the knee) per configuration."""

from __future__ import annotations

import pandas as pd
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, Span
from bokeh.plotting import figure

from rechar.report.charts import SERIES_COLORS, TOOLS, WIDTH
from rechar.report.context import ReportContext
from rechar.report.page import note, num, table, text


def section(ctx: ReportContext) -> str:
    capacity, best, curve = ctx.tables["serving"], ctx.tables["serving_best"], ctx.tables["serving_curve"]
    if capacity.empty:
        return note("No serving run among these runs (rechar serve measures serving under load).")
    bound = capacity["p99_bound_ms"].dropna()
    bound_text = f"{bound.iloc[0]:g} ms" if not bound.empty else "the bound"
    out = [
        f"<p>MLPerf LoadGen's Server scenario: queries arrive at random (Poisson) at a target rate; a rate "
        f"passes when LoadGen calls the test VALID (its early-stopping rule confirms the 99th percentile of "
        f"query latency, queueing included, is within {text(bound_text)}) and the measured p99 meets the bound. "
        f"<i>capacity</i>: the highest rate that passed (a bisection over rates); <i>first failing</i>: the "
        f"lowest rate above it that failed, with LoadGen's reason. <i>Offline</i>: LoadGen's Offline scenario, "
        f"the saturation throughput with no bound. <i>predicted</i>: what the isolated-batch view predicts "
        f"(the same sub-batches run back to back on an idle executor, throughput where the idle p99 meets the "
        f"bound); <i>predicted / measured</i> above 1 means the offline view promised more than the server "
        f"delivered. Policy <i>bNx W</i>: queries split into sub-batches of at most N items, W parallel "
        f"executors; <i>query</i>: whole queries.</p>",
        "<h3>Best policy per model and stack</h3>",
        table(best, [
            ("host", "host", None), ("model", "model", None), ("backend", "backend", None), ("offload", "offload", None),
            ("best policy", "best_policy", None), ("queries/s", "capacity_qps", num(",.0f")),
            ("whole queries, queries/s", "query_policy_qps", num(",.0f")), ("gain", "gain_over_query", num(".2f")),
            ("offline view's policy", "predicted_policy", None), ("its prediction", "predicted_qps", num(",.0f")),
            ("predicted / measured", "prediction_ratio", num(".2f")),
        ]),
        "<h3>Every configuration</h3>",
        table(capacity, [
            ("host", "host", None), ("model", "model", None), ("backend", "backend", None), ("offload", "offload", None),
            ("policy", "policy", None), ("status", "status", None), ("capacity, queries/s", "capacity_qps", num(",.0f")),
            ("LoadGen", "result", None), ("p99 ms", "p99_ms", num(".2f")), ("first failing", "first_failing_qps", num(",.0f")),
            ("why it failed", "failing_reason", None), ("Offline, queries/s", "offline_qps", num(",.0f")),
            ("predicted", "predicted_qps", num(",.0f")), ("idle p99 ms", "predicted_p99_ms", num(".2f")),
            ("predicted / measured", "prediction_ratio", num(".2f")), ("trials", "trials", num("d")),
            ("noisy trials", "noisy_trials", num("d")), ("note", "note", None),
        ], mono=("failing_reason", "note")),
        "<h3>p99 against offered load</h3>",
    ]
    if curve.empty:
        out.append(note("No Server trial ran."))
    for model in sorted(curve["model"].unique()) if not curve.empty else []:
        out.append(ctx.chart(knee_chart(curve[curve["model"] == model], model)))
    return "".join(out)


def summary(tables: dict[str, pd.DataFrame], manifests: list[dict]) -> str:
    """The lead paragraph of a report over serving runs only."""
    capacity = tables["serving"]
    starts = sorted(str(m.get("started")) for m in manifests)
    hosts = sorted(set(capacity["host"].astype(str)))
    return (f'<p class="lead">{len(manifests)} serving run(s), started {text(starts[0])}, on {text(", ".join(hosts))}: '
            f"{text(', '.join(sorted(capacity['model'].unique())))} on {text(', '.join(sorted(capacity['backend'].unique())))}, "
            f"{capacity['policy'].nunique()} batching policies, {int(capacity['trials'].sum())} LoadGen tests.</p>")


def knee_chart(curve: pd.DataFrame, model: str):
    """p99 query latency against the offered rate of every Server trial of one model, one line
    per configuration (filled markers: passed; hollow: failed), the bound as a dashed line."""
    fig = figure(title=f"{model}: p99 against offered load", width=WIDTH, height=360, x_axis_type="log",
                 y_axis_type="log", tools=TOOLS, x_axis_label="offered load (queries/s)", y_axis_label="p99 latency (ms)")
    fig.toolbar.logo = None
    items, markers = [], []
    configs = curve.groupby(["host", "backend", "offload", "policy"], dropna=False, sort=True)
    for i, ((host, backend, offload, policy), group) in enumerate(configs):
        label = " ".join(str(v) for v in (backend, offload, policy) if isinstance(v, str) and v)
        if curve["host"].nunique() > 1:
            label += f" @ {host}"
        group = group.sort_values("target_qps")
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        source = ColumnDataSource({
            "label": [label] * len(group), "qps": group["target_qps"].tolist(), "p99": group["p99_ms"].tolist(),
            "result": group["result"].tolist(), "fill": [color if p is True else "white" for p in group["passed"]],
        })
        line = fig.line("qps", "p99", source=source, color=color, line_width=2)
        dots = fig.scatter("qps", "p99", source=source, color=color, fill_color="fill", size=8)
        line.js_link("visible", dots, "visible")
        markers.append(dots)
        items.append(LegendItem(label=label, renderers=[line, dots]))
    bound = curve["p99_bound_ms"].dropna()
    if not bound.empty:
        fig.add_layout(Span(location=float(bound.iloc[0]), dimension="width", line_dash="dashed", line_color="#444"))
    fig.add_tools(HoverTool(tooltips=[("configuration", "@label"), ("offered", "@qps{0,0.0} queries/s"),
                                      ("p99", "@p99{0.00} ms"), ("LoadGen", "@result")], renderers=markers))
    fig.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="9pt", spacing=0, padding=4,
                          border_line_alpha=0), "right")
    return fig
