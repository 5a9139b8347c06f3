"""The closing section: each run's folder, machine, software versions, options and skipped
backends, collapsed (a reader opens it to check how a figure was made)."""

from __future__ import annotations

import json

from rechar.report.context import ReportContext
from rechar.report.page import definitions, note, table, text
from rechar.analysis.corrections import corrections


def section(ctx: ReportContext) -> str:
    cards, fixed = [], []
    for run_dir, m in zip(ctx.run_dirs, ctx.manifests):
        fixes = corrections(run_dir)
        if not fixes.empty:  # shown open, not in the collapsed details: they change what the page reads
            fixed.append(f"<h4>Corrections applied to run {text(m.get('run_id'))}'s records</h4>" + table(fixes, [
                ("log", "log", None), ("match", "match", None), ("set", "set", None),
                ("records", "records", None), ("why", "why", None)], mono=("match", "set")))
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
    lead = ("<p>From the run folders' <code>annotations.json</code>: the analysis reads these fields as set "
            "here; the logs keep what the workers wrote.</p>" + "".join(fixed)) if fixed else ""
    return lead + (f"<details><summary>Machine, software versions, options and skipped backends of {len(cards)} "
            f'run(s)</summary><div class="runs">{"".join(cards)}</div></details>')


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
