"""HTML building blocks of the report: escaped text, tables, and the page around them.

Everything here escapes what it is given: callers pass plain strings (from run folders a user
may have edited) and get markup that shows them as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

import pandas as pd

Cell = Callable[[Any], str]


def text(value: Any) -> str:
    """A value as escaped text; missing values (None, NaN) as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return escape(str(value))


def ms(us: Any) -> str:
    """Microseconds shown as milliseconds with three decimals, as ``rechar show`` prints them."""
    return "–" if pd.isna(us) else f"{us / 1e3:.3f}"


def num(fmt: str) -> Cell:
    return lambda v: "–" if pd.isna(v) else format(v, fmt)


def pct(v: Any) -> str:
    return "–" if pd.isna(v) else f"{100 * v:.1f}%"


def swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{escape(color)}"></span>'


def table(df: pd.DataFrame, columns: list[tuple[str, str, Cell | None]], mono: tuple[str, ...] = (),
          rows: list[dict] | None = None) -> str:
    """An HTML table of ``df`` (or of ``rows``, its records already prepared): (header, column,
    formatter) per column; a formatter returns markup from the cell's value (``None``: the value
    as escaped text). Numbers are right-aligned; columns named in ``mono`` (error messages) keep
    their line breaks in a monospace font."""
    head = "".join(f"<th>{escape(h)}</th>" for h, _, _ in columns)
    body = []
    for rec in df.to_dict("records") if rows is None else rows:
        cells = []
        for _, col, fmt in columns:
            v = rec.get(col)
            cls = "error" if col in mono else "n" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f'<td{f" class={cls}" if cls else ""}>{fmt(v) if fmt else text(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def with_interval(points: pd.DataFrame) -> list[dict]:
    """Rows (for :func:`table`) whose p50_ci_low_us cell shows the p50's interval in ms."""
    rows = points.to_dict("records")
    for r in rows:
        low, high = r.get("p50_ci_low_us"), r.get("p50_ci_high_us")
        r["p50_ci_low_us"] = None if pd.isna(low) or pd.isna(high) else f"{low / 1e3:.3f} – {high / 1e3:.3f}"
    return rows


def with_ratio_interval(df: pd.DataFrame, column: str = "ratio") -> list[dict]:
    """Rows (for :func:`table`) whose <column>_low cell shows the ratio's interval."""
    rows = df.to_dict("records")
    for r in rows:
        low, high = r.get(f"{column}_low"), r.get(f"{column}_high")
        r[f"{column}_low"] = None if pd.isna(low) or pd.isna(high) else f"{low:.2f} – {high:.2f}"
    return rows


def definitions(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f"<tr><th>{text(k)}</th><td>{text(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>'


def note(message: str) -> str:
    return f'<p class="note">{escape(message)}</p>'


CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --rule: #d9dde5; --head: #f3f5f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); margin: 0 auto; padding: 24px; max-width: 1040px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--rule); padding-bottom: 4px; margin-top: 36px; }
h3 { font-size: 15px; margin: 22px 0 8px; }
h4 { font-size: 13px; margin: 12px 0 6px; color: var(--muted); }
p.lead, p.note { color: var(--muted); }
p.note { font-style: italic; }
nav ol { columns: 2; margin: 8px 0; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 12.5px; }
th, td { border: 1px solid var(--rule); padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: var(--head); }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: var(--head); font-weight: 600; white-space: nowrap; }
td.error { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11.5px; white-space: pre-wrap;
           word-break: break-word; max-width: 560px; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
.run { border: 1px solid var(--rule); border-radius: 6px; padding: 10px 14px; }
details > summary { cursor: pointer; color: var(--muted); margin: 6px 0 10px; }
a.more { font-size: 12px; font-weight: normal; }
#findings li { margin: 2px 0; }
.run h3 { margin-top: 4px; }
.side { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.side > div { min-width: 300px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 6px 0 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px;
          vertical-align: -1px; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.chart { margin: 8px 0 18px; }
.model { margin-top: 10px; }
code { font-size: 12.5px; }
a { color: #1a5fb4; }
@page { size: A4 landscape; margin: 10mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  nav { display: none; }
  h2 { break-after: avoid; margin-top: 18px; }
  h3, h4 { break-after: avoid; }
  .chart, table, .run, .model-block { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


def page(title: str, bokeh_js: str, bokeh_script: str, body: str) -> str:
    """The whole document: inline style, BokehJS once, the charts' script, then the body."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
{bokeh_js}
{bokeh_script}
</head>
<body>
{body}
</body>
</html>
"""
