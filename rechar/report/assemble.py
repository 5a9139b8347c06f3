"""The page: what was found first, then one section per analysis in ``SECTIONS``' order, then the
runs' machines, software and options (collapsed); the charts of every section embedded at the
end in one Bokeh document, so that BokehJS and the chart data appear once.

A section is one line of ``SECTIONS``: its anchor, its title, the function that builds its body
from a :class:`~rechar.report.context.ReportContext`, and which runs it needs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path

from bokeh.embed import components
from bokeh.resources import Resources

from rechar.analysis import analyze
from rechar.errors import UserError
from rechar.report import counters, deployment, features, findings, latency, precision, profiles, runs, serving, uarch
from rechar.report.context import REFERENCE, ReportContext
from rechar.report.page import page, section, text
from rechar.sweep.cluster import member_runs
from rechar.results.store import POINTS, POINTS_LOG, read_manifest
from rechar.serving.trials import TRIALS_LOG


@dataclasses.dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    build: Callable[[ReportContext], str]
    #: "points": shown when the runs hold timed points (not for serving runs alone); "serving":
    #: when they hold serving trials; "any": always
    needs: str = "points"


#: The findings come first, the runs' details last; the rest in the order ``rechar analyze`` prints.
SECTIONS = [
    Section("findings", "What was found", findings.section, needs="any"),
    Section("not-timed", "Points not timed", latency.not_timed),
    Section("latency", "Latency and throughput", latency.latency),
    Section("noise", "Noisy points and comparisons", latency.noise),
    Section("breakdown", "Operator-category breakdown", profiles.breakdown),
    Section("shift", "Bottleneck shift across stacks", profiles.shift),
    Section("speedup", "GPU/CPU speedup", deployment.speedup),
    Section("precision", "Precision", precision.section),
    Section("best", "Best deployment under the latency bound", deployment.best),
    Section("serving", "Serving under load", serving.section, needs="serving"),
    Section("counters", "CPU event counts", counters.section),
    Section("uarch", "Microarchitecture (simulated)", lambda ctx: uarch.section(ctx.run_dirs, ctx.tables["counters"])),
    Section("correlation", "Model features vs measured behaviour", features.section),
    Section("operators", "Top operators per model", profiles.operators),
    Section("coverage", "Profile coverage", profiles.coverage),
    Section("runs", "Runs: machines, software and options", runs.section, needs="any"),
]


def default_report_path(run_dirs: list[str | Path]) -> Path:
    """reports/<run id>.html, the run ids joined with '+' for several runs."""
    ids = [str(read_manifest(Path(d))["run_id"]) for d in run_dirs]
    return Path("reports") / (re.sub(r"[^A-Za-z0-9._+-]", "_", "+".join(ids)) + ".html")


def write_report(run_dirs: list[str | Path], out_path: str | Path, p99_bound_ms: float = 10.0) -> Path:
    """Write the HTML report of the given runs to ``out_path`` and return its path."""
    # An --each-node cluster run stands for its per-node runs (rechar.sweep.cluster).
    run_dirs = [m for d in map(Path, run_dirs) for m in member_runs(d, read_manifest(d))]
    out_path = Path(out_path)
    manifests = [read_manifest(d) for d in run_dirs]
    if not any((d / POINTS_LOG).exists() or (d / POINTS).exists() or (d / TRIALS_LOG).exists() for d in run_dirs):
        raise UserError(f"no finished point in {', '.join(map(str, run_dirs))}: nothing to report")
    tables = analyze(run_dirs, p99_bound_ms=p99_bound_ms, reference=REFERENCE)
    html = render(ReportContext(tables, run_dirs, manifests, out_path.parent, p99_bound_ms))
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out_path)
    except OSError as e:
        raise UserError(f"cannot write {out_path}: {e.strerror}") from None
    return out_path


def render(ctx: ReportContext) -> str:
    """The whole HTML document."""
    has = {"any": True, "points": not ctx.serving_only, "serving": not ctx.tables["serving"].empty}
    built = [(s.anchor, s.title, s.build(ctx)) for s in SECTIONS if has[s.needs]]
    ids = [str(m.get("run_id")) for m in ctx.manifests]
    title = f"rechar report: {', '.join(ids)}"
    # the findings open the page; the table of contents follows them
    (first_anchor, first_title, first_body), rest = built[0], built[1:]
    nav = "<nav><ol>" + "".join(f'<li><a href="#{a}">{text(t)}</a></li>' for a, t, _ in rest) + "</ol></nav>"
    body = (f"<h1>{text(title)}</h1>" + section(first_anchor, first_title, first_body) + nav
            + "".join(section(a, t, b) for a, t, b in rest))
    script, divs = components(ctx.roots) if ctx.roots else ("", [])
    for i, div in enumerate(divs):
        body = body.replace(f"<!--chart:{i}-->", f'<div class="chart">{div}</div>', 1)
    bokeh_js = Resources(mode="inline", components=["bokeh"]).render_js() if ctx.roots else ""
    return page(title, bokeh_js, script, body)
