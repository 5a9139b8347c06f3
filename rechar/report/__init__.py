"""A self-contained HTML report over one or more runs (e.g. a CPU server's and a GPU server's).

    >>> from rechar.report import write_report
    >>> write_report(["runs/cpu-server-run", "runs/gpu-server-run"], "reports/cpu-vs-gpu.html")

One file with every script and style inlined (BokehJS once, core only), so that it opens from
``file://`` with no network, and a print stylesheet. Its sections follow ``rechar analyze``:
the runs, points that were not timed, latency and throughput, operator-category breakdown,
bottleneck shift, GPU/CPU speedup, best deployment, CPU event counts, feature correlation, top
operators with links to the raw traces, and profile coverage.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from bokeh.embed import components
from bokeh.resources import Resources

from rechar.analysis import analyze
from rechar.analysis.counters import counted_metrics
from rechar.analysis.ops import read_profiles
from rechar.analysis.taxonomy import CATEGORIES
from rechar.errors import UserError
from rechar.report import charts, serving, uarch
from rechar.report.charts import CATEGORY_COLORS
from rechar.sweep.cluster import member_runs
from rechar.report.page import definitions, ms, note, num, page, pct, section, swatch, table, text
from rechar.measure.counters import HARDWARE
from rechar.results.store import POINTS, POINTS_LOG, read_manifest
from rechar.serving.trials import TRIALS_LOG

__all__ = ["write_report", "default_report_path"]

TOP_OPS = 8
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
SHIFT_THRESHOLD = 0.05  # category shares that move by at least 5 points are listed
REFERENCE = "torch"
# columns that name a machine
HOSTS = {"host", "cpu_host", "gpu_host"}


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
    report = _Report(tables, run_dirs, manifests, out_path.parent, p99_bound_ms)
    html = report.render()
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out_path)
    except OSError as e:
        raise UserError(f"cannot write {out_path}: {e.strerror}") from None
    return out_path


class _Report:
    """Builds the sections; charts are collected as they are made and embedded at the end, in
    one Bokeh document, so that BokehJS and the chart data appear once."""

    def __init__(self, tables: dict[str, pd.DataFrame], run_dirs: list[Path], manifests: list[dict],
                 out_dir: Path, p99_bound_ms: float):
        self.t = {name: _tidy(df) for name, df in tables.items()}
        self.run_dirs = run_dirs
        self.manifests = manifests
        self.out_dir = out_dir
        self.bound = p99_bound_ms
        self.roots: list = []
        points = self.t["points"]
        self.several_hosts = points["host"].nunique() > 1
        self.multi_device = set(points.groupby("backend")["device"].nunique().loc[lambda n: n > 1].index)
        self.points = points.assign(series=self._series(points))
        self.models = sorted(self.points["model"].unique())
        self.style = self._series_style(self.points)
        self.profiles = [(str(m.get("host", {}).get("hostname")), run_dir, rec)
                         for run_dir, m in zip(run_dirs, manifests) for rec in read_profiles(run_dir)]

    # -- series: one line / one panel per host x backend x device --------------------------------

    def _series(self, df: pd.DataFrame) -> pd.Series:
        """Series label: the backend, with the device when a backend ran on several, and the
        host when the runs come from several machines."""
        label = df["backend"].astype(str)
        label = label.where(~df["backend"].isin(self.multi_device), label + " (" + df["device"].astype(str) + ")")
        return label + (" @ " + df["host"] if self.several_hosts else "")

    @staticmethod
    def _series_style(points: pd.DataFrame) -> dict[str, tuple[str, str]]:
        """series -> (colour, marker): colour by backend and device, marker by host, the same in
        every chart; the dict's order is the order series are shown in."""
        keys = points[["series", "backend", "device", "host"]].drop_duplicates()
        keys = keys.sort_values(["backend", "device", "host"])
        stacks = list(dict.fromkeys(zip(keys["backend"], keys["device"])))
        hosts = sorted(set(keys["host"]))
        return {
            s: (charts.SERIES_COLORS[stacks.index((b, d)) % len(charts.SERIES_COLORS)],
                charts.HOST_MARKERS[hosts.index(h) % len(charts.HOST_MARKERS)])
            for s, b, d, h in keys.itertuples(index=False)
        }

    def _ordered(self, series) -> list[str]:
        present = set(series)
        return [s for s in self.style if s in present]

    def _chart(self, root) -> str:
        self.roots.append(root)
        return f"<!--chart:{len(self.roots) - 1}-->"

    def _series_cell(self, series: str) -> str:
        return swatch(self.style[series][0]) + text(series)

    # -- the document ------------------------------------------------------------------------------

    def render(self) -> str:
        serving_only = self.points.empty and not self.t["serving"].empty
        sections = [("runs", "Runs", self.runs())] + ([] if serving_only else [

            ("not-timed", "Points not timed", self.not_timed()),
            ("latency", "Latency and throughput", self.latency()),
            ("noise", "Noisy points and comparisons", self.comparisons()),
            ("breakdown", "Operator-category breakdown", self.breakdown()),
            ("shift", "Bottleneck shift across stacks", self.shift()),
            ("speedup", "GPU/CPU speedup", self.speedup()),
            ("precision", "Precision", self.precision()),
            ("best", "Best deployment under the latency bound", self.best()),
        ]) + ([("serving", "Serving under load", serving.section(self.t, self._chart))]
              if not self.t["serving"].empty else []) + ([] if serving_only else [
            ("counters", "CPU event counts", self.counters()),
            ("uarch", "Microarchitecture (simulated)", uarch.section(self.run_dirs)),
            ("correlation", "Model features vs measured behaviour", self.correlation()),
            ("operators", "Top operators per model", self.operators()),
            ("coverage", "Profile coverage", self.coverage()),
        ])
        ids = [str(m.get("run_id")) for m in self.manifests]
        title = f"rechar report: {', '.join(ids)}"
        nav = "<nav><ol>" + "".join(f'<li><a href="#{a}">{text(t)}</a></li>' for a, t, _ in sections) + "</ol></nav>"
        lead = serving.summary(self.t, self.manifests) if serving_only else self.summary()
        body = f"<h1>{text(title)}</h1>{lead}{nav}" + "".join(section(a, t, b) for a, t, b in sections)
        script, divs = components(self.roots) if self.roots else ("", [])
        for i, div in enumerate(divs):
            body = body.replace(f"<!--chart:{i}-->", f'<div class="chart">{div}</div>', 1)
        bokeh_js = Resources(mode="inline", components=["bokeh"]).render_js() if self.roots else ""
        return page(title, bokeh_js, script, body)

    def summary(self) -> str:
        p = self.points
        starts = sorted(str(m.get("started")) for m in self.manifests)
        hosts = sorted(p["host"].unique()) or [str(m.get("host", {}).get("hostname")) for m in self.manifests]
        return (f'<p class="lead">{len(self.manifests)} run(s), started {text(starts[0])}'
                f"{' to ' + text(starts[-1]) if len(starts) > 1 else ''}, on {text(', '.join(hosts))}: "
                f"{len(self.models)} model(s) ({text(', '.join(self.models))}), backends "
                f"{text(', '.join(sorted(p['backend'].unique())))}, batch sizes "
                f"{text(', '.join(map(str, sorted(p['batch'].unique()))))}; {len(p)} points, "
                f"{int((p['status'] == 'ok').sum())} timed. Latency bound for the best deployment: "
                f"p99 ≤ {self.bound:g} ms.</p>")

    # -- sections ----------------------------------------------------------------------------------

    def runs(self) -> str:
        cards = []
        for run_dir, m in zip(self.run_dirs, self.manifests):
            host = m.get("host", {})
            gpus = "; ".join(f"{g.get('name')} ({g.get('memory')}, driver {g.get('driver')})"
                             for g in host.get("gpus") or []) or "none"
            memory = host.get("memory_bytes")
            machine = definitions([
                ("host", host.get("hostname")), ("CPU", host.get("cpu")),
                ("cores", f"{host.get('physical_cores')} physical, {host.get('logical_cores')} logical, "
                          f"{host.get('affinity_cores')} usable"),
                ("memory", f"{memory / 2**30:.1f} GiB" if memory else None), ("GPUs", gpus), ("OS", host.get("os")),
            ])
            software = m.get("software", {})
            versions = definitions([(k, v) for k, v in software.items() if k != "rechar_commit"]
                                   + [("rechar commit", software.get("rechar_commit"))])
            skipped = m.get("skipped_backends") or {}
            skipped_html = (definitions(skipped.items()) if skipped else note("No backend was skipped."))
            cards.append(
                f'<div class="run"><h3>run {text(m.get("run_id"))} ({text(m.get("status"))})</h3>'
                + definitions([("folder", run_dir), ("started", m.get("started")), ("finished", m.get("finished")),
                               ("resumed", ", ".join(map(str, m.get("resumed") or [])) or "never")])
                + "<h4>Machine</h4>" + machine + "<h4>Software</h4>" + versions
                + "<h4>Options</h4>" + definitions(_flatten(m.get("options", {})))
                + "<h4>Skipped backends</h4>" + skipped_html + "</div>")
        return '<div class="runs">' + "".join(cards) + "</div>"

    def not_timed(self) -> str:
        bad = self.points[self.points["status"] != "ok"].sort_values(["host", "model", "backend", "batch"])
        if bad.empty:
            return note("Every point was timed (status ok).")
        return (f"<p>{len(bad)} point(s) were not timed: <b>invalid</b> (outputs outside tolerance of eager "
                "PyTorch), <b>failed</b> (an error or a crashed worker) or <b>timeout</b>.</p>"
                + table(bad, [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                              ("device", "device", None), ("batch", "batch", None), ("status", "status", None),
                              ("reason", "error", None)], mono=("error",)))

    def latency(self) -> str:
        out = ['<p>Per model: p50 (solid) and p99 (dashed) latency and throughput vs batch size, log axes, one '
               "line per backend (and machine). Hover a point for its values; click a legend entry to hide "
               "its line. Points that were not timed are left out of the charts. Inputs: <i>fresh</i> points "
               "ran each call on the next batch of a pool sized to overflow the last-level cache (the pool "
               "column: its batches); <i>replay</i> points ran every call on one batch, which keeps its "
               "embedding rows in cache (the best case). The 95% interval of the p50 is over the point's "
               "rounds (<i>rounds</i>) or, for a point measured once, over its iterations (<i>iterations</i>, "
               "optimistic). <b>noisy</b>: the machine was busy while the point was timed (see the next "
               "section).</p>"]
        for model in self.models:
            pts = self.points[self.points["model"] == model].sort_values(["series", "batch"])
            ok = pts[pts["status"] == "ok"]
            chart = self._chart(charts.latency_chart(ok, self.style, model)) if not ok.empty else note(
                f"No timed point of {model}.")
            out.append(f'<div class="model-block"><h3>{text(model)}</h3>{chart}</div>' + table(pts, [
                ("series", "series", self._series_cell), ("batch", "batch", None), ("status", "status", None),
                ("p50 ms", "p50_us", ms), ("95% interval, ms", "p50_ci_low_us", None), ("over", "ci_method", None),
                ("p99 ms", "p99_us", ms), ("samples/s", "throughput_sps", num(",.0f")),
                ("inputs", "inputs", None), ("pool", "pool_batches", num(",.0f")),
                ("noisy", "noisy", lambda v: "<b>noisy</b>" if v is True else ""),
            ], rows=_with_interval(pts)))
        return "".join(out)

    def comparisons(self) -> str:
        noisy, comparison, runner = self.t["noisy"], self.t["comparison"], self.t["runner_up"]
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
                           ("verdict", "verdict", None)], rows=_with_ratio_interval(comparison)))
        if not runner.empty:
            out.append("<h3>Best deployment against the runner-up</h3><p>Throughput (batch / p50) of the best "
                       "deployment under the bound over the next best's.</p>" + table(runner, [
                           ("model", "model", None), ("best", "best", None), ("runner-up", "runner_up", None),
                           ("ratio", "ratio", num(".2f")), ("95% interval", "ratio_low", None),
                           ("verdict", "verdict", None)], rows=_with_ratio_interval(runner)))
        return "".join(out)

    def breakdown(self) -> str:
        bd = self.t["breakdown"]
        if bd.empty:
            return note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR).")
        bd = bd.assign(series=self._series(bd))
        legend = '<div class="legend">' + "".join(
            f"<span>{swatch(CATEGORY_COLORS[c])}{text(c)}</span>" for c in CATEGORIES) + "</div>"
        out = ["<p>Share of each point's profiled operator time by category, one panel per backend, one "
               "bar per batch size. Categories follow the op, refined by the model layer it runs in "
               "(e.g. everything inside an attention unit counts as attention).</p>", legend]
        out += self._time_basis_notes()
        for model in self.models:
            part = bd[bd["model"] == model]
            if part.empty:
                out.append(f"<h3>{text(model)}</h3>" + note("No profiles of this model."))
                continue
            chart = self._chart(charts.breakdown_chart(part, self._ordered(part["series"]), model))
            out.append(f'<div class="model-block"><h3>{text(model)}</h3>{chart}</div>')
        return "".join(out)

    def shift(self) -> str:
        shift = self.t["shift"]
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

    def precision(self) -> str:
        prec, shift = self.t["precision"], self.t["precision_shift"]
        if prec.empty:
            return note("Every point ran in fp32 (rechar run --precision fp32,bf16,int8 adds the others).")
        ratio = lambda v: "–" if pd.isna(v) else f"{v:.2f}×"
        mb = lambda v: "–" if pd.isna(v) else f"{v / 1e6:,.1f}"
        out = ["<p>Each reduced-precision variant of a stack against the same stack in fp32, same host, "
               "model and batch: speedup is fp32 p50 over the variant's p50, memory the model's weights as "
               "the stack holds them. Reduced precision passes a quality gate instead of bit parity: "
               "against eager fp32 PyTorch on 2,048 seeded samples, the largest and mean absolute "
               "difference of the predicted probabilities and the share of sample pairs ordered the same "
               "way (checked where fp32's predictions spread; a point that fails is not timed).</p>",
               table(prec, [
                   ("model", "model", None), ("stack", "stack", None), ("precision", "precision", None),
                   ("batch", "batch", None), ("status", "status", None),
                   ("p50 ms", "p50_us", lambda v: "–" if pd.isna(v) else f"{v / 1e3:.3f}"),
                   ("fp32 p50 ms", "fp32_p50_us", lambda v: "–" if pd.isna(v) else f"{v / 1e3:.3f}"),
                   ("speedup", "speedup", ratio), ("weights MB", "weight_bytes", mb),
                   ("fp32 weights MB", "fp32_weight_bytes", mb), ("memory", "memory_ratio", ratio),
                   ("max |Δp|", "quality_max_abs", lambda v: "–" if pd.isna(v) else f"{v:.2g}"),
                   ("pairs ordered alike", "quality_pair_agreement", lambda v: "–" if pd.isna(v) else f"{v:.1%}"),
               ])]
        moved = shift[shift["delta"].abs() >= SHIFT_THRESHOLD]
        if not moved.empty:
            out.append(f"<h3>Category shares that move by {100 * SHIFT_THRESHOLD:.0f} points or more from fp32</h3>")
            out.append(table(moved, [
                ("model", "model", None), ("stack", "stack", None), ("precision", "precision", None),
                ("batch", "batch", None), ("category", "category", None),
                ("share", "share", lambda v: f"{100 * v:.0f}%"), ("fp32 share", "fp32_share", lambda v: f"{100 * v:.0f}%"),
                ("change", "delta", lambda v: f"{100 * v:+.0f} pts")]))
        return "".join(out)

    def _time_basis_notes(self) -> list[str]:
        """What the GPU profiles' op times cover, where a profile says: ONNX Runtime on CUDA counts
        its kernels' device time only when CUPTI's records were matched to its nodes."""
        notes = []
        for row in self.t["time_basis"].itertuples():
            if row.time_basis == "host":
                notes.append(note(f"{row.backend} on {row.host}: {row.points} profiles hold host-side node "
                                  "times only (no device time was matched to its nodes): its shares are of "
                                  "host time, not of GPU time."))
            elif row.time_basis == "host+device":
                notes.append(note(f"{row.backend} on {row.host}: each node's time is its host-side time plus "
                                  f"the device time of the kernels it launched (CUPTI), {row.points} profiles."))
        return notes

    def speedup(self) -> str:
        sp, cross = self.t["speedup"], self.t["crossover"]
        if sp.empty:
            return note("No GPU run was given (no point ran on a GPU), so there is no GPU/CPU speedup: run "
                        "rechar run --backend torch-cuda,ort-cuda on a GPU machine and pass both runs.")
        chart = self._chart(charts.speedup_heatmap(sp, cross))
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
        ], rows=_with_ratio_interval(sp, "speedup"))
        return ("<p>CPU p50 / GPU p50 of each GPU stack against its CPU counterpart (torch with torch-cuda, "
                "ort-cpu with ort-cuda and ort-cuda-graph, tf on CPU with tf on GPU), also across machines. The crossover is the smallest batch from which the "
                "GPU wins at every larger measured batch.</p>" + chart + crossover_table + per_batch)

    def best(self) -> str:
        best = self.t["best"]
        if best.empty:
            return note("No points.")
        return (f"<p>Per model, the machine, backend and batch size with the highest throughput whose p99 "
                f"latency is at most {self.bound:g} ms.</p>" + table(best, [
                    ("model", "model", None),
                    ("host", "host", lambda v: "no point meets the bound" if pd.isna(v) else text(v)),
                    ("backend", "backend", None), ("device", "device", None),
                    ("batch", "batch", lambda v: "–" if pd.isna(v) else str(int(v))),
                    ("samples/s", "throughput_sps", num(",.0f")), ("p50 ms", "p50_us", ms), ("p99 ms", "p99_us", ms),
                ]))

    def counters(self) -> str:
        counts = self.t["counters"]
        if counts.empty:
            return note("No counting pass in these runs (run with --counters, or rechar counters RUN_DIR).")
        out = ["<p>perf stat over a pass per point separate from timing (at least --counter-seconds), every "
               "thread of the worker counted: <b>CPUs busy</b> is task clock over wall time (a thread pool that "
               "spins counts as busy), MPKI are misses per thousand instructions. A GPU backend's counts are its "
               "host side.</p>"]
        for row in self.t["counter_support"].itertuples():
            if row.hardware_events < len(HARDWARE):
                out.append(note(f"{row.host}: {row.note}."))
        ok = counts[counts["status"] == "ok"]
        metrics = counted_metrics(ok)
        if not ok.empty:
            ok = ok.assign(series=self._series(ok)).sort_values(["model", "series", "batch"])
            out.append(table(ok, [("model", "model", None), ("series", "series", self._series_cell),
                                  ("batch", "batch", None)]
                             + [(COUNTER_LABELS[m][0], m, COUNTER_LABELS[m][1]) for m in metrics]))
        bad = counts[counts["status"] != "ok"]
        if not bad.empty:
            out.append("<h3>Points whose counting pass failed</h3>" + table(
                bad.sort_values(["host", "model", "backend", "batch"]),
                [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                 ("batch", "batch", None), ("reason", "error", None)], mono=("error",)))
        return "".join(out)

    def correlation(self) -> str:
        corr = self.t["correlation"]
        return ("<p>Spearman rank correlation, over the models measured, between features computed from each "
                "model's config and what was measured (mean embedding share of the CPU profiles, best GPU/CPU "
                "speedup, best CPU throughput, mean IPC and LLC MPKI of the counted CPU points); metrics these "
                "runs did not measure are left out. Fewer than three models give no coefficient (–).</p>"
                + table(corr, [("feature", "feature", None), ("metric", "metric", None),
                               ("Spearman ρ", "spearman", num("+.2f")), ("models", "models", None)]))

    def operators(self) -> str:
        ops = self.t["ops"]
        traces = self._trace_links()
        out = [f"<p>Per model and backend, the {TOP_OPS} operators with the most self time per iteration at the "
               "largest profiled batch size, with the model layer they ran in, the ops a fused kernel combines "
               "(it counts in the highest-ranked category among them: fc, embedding, recurrent, attention, "
               "softmax, interaction, activation, elementwise, data movement), and links to the raw profiler "
               "traces (relative to this file: keep it beside the run folders to follow them).</p>"]
        if ops.empty and not traces:
            return note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR).")
        ops = ops.assign(series=self._series(ops))
        for model in self.models:
            blocks = []
            part = ops[ops["model"] == model]
            if not part.empty:
                for series in self._ordered(part["series"]):
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

    def _trace_links(self) -> dict[str, list[tuple[str, list[tuple[int, str]]]]]:
        """model -> [(series, [(batch, href)])]: each profiled point's raw trace, as a link relative to
        the report's folder."""
        found: dict[str, dict[str, list[tuple[int, str]]]] = {}
        for host, run_dir, rec in self.profiles:
            if rec.get("status", "ok") != "ok" or not rec.get("trace"):
                continue
            point = pd.DataFrame([{"host": host, "backend": rec["backend"], "device": rec.get("device")}])
            series = self._series(point).iloc[0]
            rel = os.path.relpath(run_dir.resolve() / rec["trace"], self.out_dir.resolve())
            href = quote(Path(rel).as_posix())  # percent-encodes quotes and markup, keeps '/'
            found.setdefault(rec["model"], {}).setdefault(series, []).append((int(rec["batch"]), href))
        return {model: [(s, sorted(by_series[s])) for s in self._ordered(by_series)]
                for model, by_series in found.items()}

    def coverage(self) -> str:
        cov = self.t["coverage"]
        failures = self._profile_failures()
        out = []
        if cov.empty:
            out.append(note("No operator profiles in these runs (run with --profile, or rechar profile RUN_DIR)."))
        else:
            cov = cov.assign(series=self._series(cov)).sort_values(["model", "series", "batch"])
            out.append("<p>Profiled self time per iteration over the timed p50, per point: how much of the measured "
                       "latency the profile explains (profilers add overhead, so it can pass 100%).</p>")
            out.append(table(cov, [("model", "model", None), ("series", "series", self._series_cell),
                                   ("batch", "batch", None), ("profiled µs/iter", "profiled_us", num(",.1f")),
                                   ("p50 µs", "p50_us", num(",.1f")), ("coverage", "coverage", pct)]))
        if failures is not None:
            out.append("<h3>Points whose profile failed</h3>" + failures)
        unmapped = self.t["unmapped"]
        if not unmapped.empty:
            out.append("<h3>Native ops with no category (counted as other)</h3>" + table(unmapped, [
                ("backend", "backend", None), ("op", "native_op", None),
                ("µs/iter (all points)", "self_us_per_iter", num(",.1f"))]))
        return "".join(out)

    def _profile_failures(self) -> str | None:
        rows = [{"host": host, "model": rec["model"], "backend": rec["backend"], "batch": int(rec["batch"]),
                 "error": rec.get("error")} for host, _, rec in self.profiles if rec.get("status", "ok") != "ok"]
        if not rows:
            return None
        df = pd.DataFrame(rows).sort_values(["host", "model", "backend", "batch"])
        df = df.groupby(["host", "model", "backend", "error"], as_index=False, sort=False, dropna=False)["batch"].agg(
            lambda b: ", ".join(map(str, b)))
        return table(df, [("host", "host", None), ("model", "model", None), ("backend", "backend", None),
                          ("batches", "batch", None), ("reason", "error", None)], mono=("error",))


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Host names as text: a host may be named "1", which pandas would read as a number."""
    if df.empty:
        return df
    return df.apply(lambda c: c.map(lambda h: h if pd.isna(h) else str(h)) if c.name in HOSTS else c)


def _flatten(options: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Options as key/value pairs, nested tables as dotted keys, lists comma-separated."""
    pairs = []
    for key, value in options.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            pairs.append((prefix + key, ", ".join(map(str, value))))
        else:
            pairs.append((prefix + key, json.dumps(value) if isinstance(value, dict) else value))
    return pairs


def _short_fused(fused) -> str | None:
    """A fused kernel's member ops, each once, without namespaces (aten::relu -> relu)."""
    if not isinstance(fused, str) or not fused:
        return None
    ops = dict.fromkeys(op.rpartition("::")[2] for op in fused.split("+"))
    return "+".join(ops)


def _with_interval(points: pd.DataFrame) -> list[dict]:
    """Rows whose p50_ci_low_us cell shows the p50's interval in ms."""
    rows = points.to_dict("records")
    for r in rows:
        low, high = r.get("p50_ci_low_us"), r.get("p50_ci_high_us")
        r["p50_ci_low_us"] = None if pd.isna(low) or pd.isna(high) else f"{low / 1e3:.3f} – {high / 1e3:.3f}"
    return rows


def _with_ratio_interval(df: pd.DataFrame, column: str = "ratio") -> list[dict]:
    """Rows whose <column>_low cell shows the ratio's interval."""
    rows = df.to_dict("records")
    for r in rows:
        low, high = r.get(f"{column}_low"), r.get(f"{column}_high")
        r[f"{column}_low"] = None if pd.isna(low) or pd.isna(high) else f"{low:.2f} – {high:.2f}"
    return rows
