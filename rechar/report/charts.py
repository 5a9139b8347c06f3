"""The report's Bokeh charts.

Every string that comes from a run (model, host, backend names) travels in a chart's data and is
shown through ``@field`` tooltips (which Bokeh escapes) or drawn on the canvas (titles, legends,
axis factors): none is written into a tooltip template, so none can become markup.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from bokeh.layouts import gridplot, row
from bokeh.models import (BasicTicker, ColorBar, ColumnDataSource, FactorRange, HoverTool, Legend, LegendItem,
                          LinearColorMapper, NumeralTickFormatter, Scatter)
from bokeh.palettes import Category20, Colorblind8, RdBu11
from bokeh.plotting import figure

from rechar.taxonomy import CATEGORIES, LATER_CATEGORIES

#: The page's width budget: at most this many pixels per chart row, so that a chart fits an A4
#: or Letter page printed in landscape (the print stylesheet asks for it) without being cut.
WIDTH = 960

#: One colour per operator category, fixed across every chart and table of the report. "other"
#: is grey, "runtime" (framework work outside operators) a light grey, the study's nine others take
#: Category10's colours in the taxonomy's order (Category20's dark half), the later models' six
#: categories the light half.
_GREY, _LIGHT_GREY = "#7f7f7f", "#c7c7c7"
_STUDY = [c for c in CATEGORIES if c not in ("other", "runtime", "quantize") and c not in LATER_CATEGORIES]
CATEGORY_COLORS: dict[str, str] = {
    **dict(zip(_STUDY, [c for c in Category20[20][0::2] if c != _GREY], strict=True)),
    **dict(zip(LATER_CATEGORIES, [c for c in Category20[20][1::2] if c != _LIGHT_GREY][:len(LATER_CATEGORIES)],
               strict=True)),
    "quantize": "#393b79", "runtime": _LIGHT_GREY, "other": _GREY,
}
CATEGORY_COLORS = {c: CATEGORY_COLORS[c] for c in CATEGORIES}  # the taxonomy's order

SERIES_COLORS = Colorblind8
HOST_MARKERS = ("circle", "square", "triangle", "diamond", "inverted_triangle", "hex")

TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


def _log_figure(title: str, y_label: str, batches: list[int], values: pd.Series) -> figure:
    fig = figure(title=title, width=WIDTH // 2, height=330, x_axis_type="log", y_axis_type="log", tools=TOOLS,
                 x_axis_label="batch size", y_axis_label=y_label)
    # ticks at the measured batch sizes and at 1-2-5 steps, written out: Bokeh's log ticks pile up
    # or go missing over the one to three decades these charts span, and label 16 as 10^1
    fig.xaxis.ticker = batches
    fig.yaxis.ticker = _log_ticks(values)
    fig.axis.formatter = NumeralTickFormatter(format="0,0.[000]")
    fig.toolbar.logo = None
    return fig


def _log_ticks(values: pd.Series) -> list[float]:
    """1-2-5 ticks (1 only, over more than two decades) spanning the values."""
    low, high = float(values.min()), float(values.max())
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    mantissas = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in mantissas]
    inside = [t for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [t for t in ticks if low / 10 <= t <= high * 10]


def _inputs_label(mode, pool_batches) -> str:
    if mode == "fresh":
        return f"fresh, a pool of {int(pool_batches)} batches"
    return "one batch, replayed" if mode == "replay" else "unknown"


def latency_chart(points: pd.DataFrame, style: dict[str, tuple[str, str]], model: str):
    """Latency (p50 solid, p99 dashed) and throughput vs batch size of one model, one line per
    series; ``points`` has the model's ok points with a ``series`` column, ``style`` maps a series
    to (colour, marker). Clicking a legend entry hides the series in both charts."""
    batches = sorted(int(b) for b in points["batch"].unique())
    latencies = pd.concat([points["p50_us"], points["p99_us"]]) / 1e3
    lat = _log_figure(f"{model}: latency (p50 solid, p99 dashed)", "latency (ms)", batches, latencies)
    tput = _log_figure(f"{model}: throughput", "samples/s", batches, points["throughput_sps"])
    hover = [("series", "@label"), ("batch", "@batch"), ("p50", "@p50_ms{0.000} ms"), ("p99", "@p99_ms{0.000} ms"),
             ("throughput", "@sps{0,0} samples/s"), ("inputs", "@inputs")]
    lat_items, tput_items = [], []
    for series in [s for s in style if s in set(points["series"])]:
        color, marker = style[series]
        group = points[points["series"] == series].sort_values("batch")
        source = ColumnDataSource({
            "label": [series] * len(group), "batch": group["batch"].astype(int).tolist(),
            "p50_ms": (group["p50_us"] / 1e3).tolist(), "p99_ms": (group["p99_us"] / 1e3).tolist(),
            "sps": group["throughput_sps"].tolist(),
            "inputs": [_inputs_label(mode, n) for mode, n in zip(group["inputs"], group["pool_batches"])],
        })
        lat_renderers = [
            lat.line("batch", "p50_ms", source=source, color=color, line_width=2),
            lat.scatter("batch", "p50_ms", source=source, color=color, marker=marker, size=7),
            lat.line("batch", "p99_ms", source=source, color=color, line_width=2, line_dash="dashed"),
            lat.scatter("batch", "p99_ms", source=source, color=color, marker=marker, size=7, fill_color="white"),
        ]
        tput_renderers = [
            tput.line("batch", "sps", source=source, color=color, line_width=2),
            tput.scatter("batch", "sps", source=source, color=color, marker=marker, size=7),
        ]
        # a legend hides only its own figure's renderers: the first line of each figure carries
        # the series' visibility over to every other renderer of the series
        for leader, others in ((lat_renderers[0], lat_renderers[1:] + tput_renderers),
                               (tput_renderers[0], tput_renderers[1:] + lat_renderers)):
            for other in others:
                leader.js_link("visible", other, "visible")
        lat_items.append(LegendItem(label=series, renderers=lat_renderers))
        tput_items.append(LegendItem(label=series, renderers=tput_renderers))
    for fig, items in ((lat, lat_items), (tput, tput_items)):
        markers = [r for item in items for r in item.renderers if isinstance(r.glyph, Scatter)]
        fig.add_tools(HoverTool(tooltips=hover, renderers=markers))
        fig.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="9pt", spacing=0, padding=4,
                              border_line_alpha=0), "below")
    return row(lat, tput)


def breakdown_chart(breakdown: pd.DataFrame, panels: list[str], model: str):
    """Operator-category breakdown of one model: one panel per series (host x backend x device)
    side by side, one stacked bar per batch size, shares of the point's profiled time.
    ``breakdown`` holds the model's rows of the analysis's breakdown table with a ``series``
    column; ``panels`` lists the series in display order."""
    ncols = min(len(panels), 5)
    width = max(WIDTH // ncols, 180)
    figures = []
    for series in panels:
        part = breakdown[breakdown["series"] == series]
        batches = sorted(part["batch"].unique())
        part = part.assign(order=part["category"].map({c: i for i, c in enumerate(CATEGORIES)}))
        part = part.sort_values(["batch", "order"])
        top = 100 * part.groupby("batch")["share"].cumsum()
        source = ColumnDataSource({
            "batch": part["batch"].astype(str).tolist(), "category": part["category"].tolist(),
            "color": part["category"].map(CATEGORY_COLORS).tolist(), "top": top.tolist(),
            "bottom": (top - 100 * part["share"]).tolist(), "share": (100 * part["share"]).tolist(),
            "us": part["self_us_per_iter"].tolist(), "label": [series] * len(part),
        })
        fig = figure(title=f"{model}: {series}", x_range=FactorRange(*[str(b) for b in batches]), y_range=(0, 100),
                     width=width, height=300, tools="save", x_axis_label="batch size",
                     y_axis_label="% of profiled time" if not figures else None)
        fig.toolbar.logo = None
        fig.vbar(x="batch", top="top", bottom="bottom", width=0.8, source=source, fill_color="color",
                 line_color="white")
        fig.add_tools(HoverTool(tooltips=[("series", "@label"), ("batch", "@batch"), ("category", "@category"),
                                          ("share", "@share{0.0}%"), ("time", "@us{0.0} µs/iter")]))
        fig.xgrid.grid_line_color = None
        figures.append(fig)
    return gridplot(figures, ncols=ncols, toolbar_location="right")


def speedup_heatmap(speedup: pd.DataFrame, crossover: pd.DataFrame):
    """GPU/CPU speedup (CPU p50 / GPU p50) per row (model x CPU → GPU backend, and host pair when several)
    and batch size; the crossover batch of each row is boxed."""
    pairs = speedup[["cpu_host", "gpu_host"]].drop_duplicates()
    several_pairs = len(pairs) > 1

    def row_key(df: pd.DataFrame) -> list[tuple[str, str]]:
        fw = df["cpu_backend"].astype(str) + " → " + df["gpu_backend"].astype(str)
        if several_pairs:
            fw = fw + " (" + df["cpu_host"].astype(str) + " → " + df["gpu_host"].astype(str) + ")"
        return list(zip(df["model"].astype(str), fw))

    rows = row_key(speedup)
    batches = [str(b) for b in sorted(speedup["batch"].unique())]
    log2 = np.log2(speedup["speedup"].to_numpy(dtype=float))
    source = ColumnDataSource({
        "y": rows, "batch": speedup["batch"].astype(str).tolist(), "model": speedup["model"].tolist(),
        "framework": (speedup["cpu_backend"] + " → " + speedup["gpu_backend"]).tolist(), "cpu_host": speedup["cpu_host"].tolist(),
        "gpu_host": speedup["gpu_host"].tolist(), "cpu_ms": (speedup["p50_us_cpu"] / 1e3).tolist(),
        "gpu_ms": (speedup["p50_us_gpu"] / 1e3).tolist(), "speedup": speedup["speedup"].tolist(),
        "log2": log2.tolist(), "text": [f"{v:.2g}×" for v in speedup["speedup"]],
    })
    bound = max(1.0, math.ceil(float(np.nanmax(np.abs(log2)))))
    source.data["text_color"] = ["white" if abs(v) > 0.6 * bound else "black" for v in log2]  # legible on dark cells
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)), low=-bound, high=bound)
    y_factors = list(dict.fromkeys(sorted(rows)))
    fig = figure(title="CPU p50 / GPU p50 (blue: GPU faster; boxed: crossover batch)",
                 x_range=FactorRange(*batches), y_range=FactorRange(*reversed(y_factors)),
                 width=min(WIDTH, max(560, 300 + 70 * len(batches))), height=90 + 32 * len(y_factors), tools="save",
                 x_axis_label="batch size", toolbar_location="right")
    fig.toolbar.logo = None
    cells = fig.rect(x="batch", y="y", width=1, height=1, source=source, line_color="white",
                     fill_color={"field": "log2", "transform": mapper})
    fig.text(x="batch", y="y", text="text", source=source, text_align="center", text_baseline="middle",
             text_font_size="9pt", text_color="text_color")
    marked = crossover.dropna(subset=["crossover_batch"])
    if not marked.empty:
        fig.rect(x=[str(int(b)) for b in marked["crossover_batch"]], y=row_key(marked), width=0.94, height=0.9,
                 fill_alpha=0, line_color="black", line_width=3)
    fig.add_tools(HoverTool(renderers=[cells], tooltips=[
        ("model", "@model"), ("backends", "@framework"), ("batch", "@batch"),
        ("CPU p50", "@cpu_ms{0.000} ms (@cpu_host)"), ("GPU p50", "@gpu_ms{0.000} ms (@gpu_host)"),
        ("speedup", "@speedup{0.00}×")]))
    fig.add_layout(ColorBar(color_mapper=mapper, ticker=BasicTicker(), title="log2 speedup", width=12), "right")
    fig.grid.grid_line_color = None
    fig.axis.major_tick_line_color = None
    return fig
