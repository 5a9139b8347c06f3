"""The section on model features against measured behaviour (rechar.analysis.features)."""

from __future__ import annotations

from rechar.report.context import ReportContext
from rechar.report.page import num, table


def section(ctx: ReportContext) -> str:
    corr = ctx.tables["correlation"]
    return ("<p>Spearman rank correlation, over the models measured, between features computed from each "
            "model's config and what was measured (mean embedding share of the CPU profiles, best GPU/CPU "
            "speedup, best CPU throughput, mean IPC and LLC MPKI of the counted CPU points); metrics these "
            "runs did not measure are left out. Fewer than three models give no coefficient (–).</p>"
            + table(corr, [("feature", "feature", None), ("metric", "metric", None),
                           ("Spearman ρ", "spearman", num("+.2f")), ("models", "models", None)]))
