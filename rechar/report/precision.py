"""The section on reduced precision against fp32 (rechar.analysis.precision)."""

from __future__ import annotations

import pandas as pd

from rechar.report.context import ReportContext
from rechar.report.page import note, table
from rechar.report.profiles import SHIFT_THRESHOLD


def section(ctx: ReportContext) -> str:
    prec, shift = ctx.tables["precision"], ctx.tables["precision_shift"]
    if prec.empty:
        return note("Every point ran in fp32 (rechar run --precision fp32,bf16,int8 adds the others).")
    ratio = lambda v: "–" if pd.isna(v) else f"{v:.2f}×"
    mb = lambda v: "–" if pd.isna(v) else f"{v / 1e6:,.1f}"
    out = ["<p>Each reduced-precision variant of a stack against the same stack in fp32, same host, "
           "model and batch: speedup is fp32 p50 over the variant's p50, memory the model's weights as "
           "the stack holds them. Reduced precision passes a quality gate instead of bit parity: "
           "against eager fp32 PyTorch on 2,048 seeded samples run through the model timed at the "
           "point's batch size, the mean and largest logit error as fractions of the spread (std) of "
           "fp32's logits, and the share of sample pairs ordered the same way (a point that fails is "
           "not timed; runs before this gate show probability errors instead).</p>",
           table(prec, [
               ("model", "model", None), ("stack", "stack", None), ("precision", "precision", None),
               ("batch", "batch", None), ("status", "status", None),
               ("p50 ms", "p50_us", lambda v: "–" if pd.isna(v) else f"{v / 1e3:.3f}"),
               ("fp32 p50 ms", "fp32_p50_us", lambda v: "–" if pd.isna(v) else f"{v / 1e3:.3f}"),
               ("speedup", "speedup", ratio), ("weights MB", "weight_bytes", mb),
               ("fp32 weights MB", "fp32_weight_bytes", mb), ("memory", "memory_ratio", ratio),
               ("mean |Δlogit| / spread", "quality_logit_mean", lambda v: "–" if pd.isna(v) else f"{v:.2g}"),
               ("max |Δlogit| / spread", "quality_logit_max", lambda v: "–" if pd.isna(v) else f"{v:.2g}"),
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
