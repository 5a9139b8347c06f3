"""A cycle estimate from simulated events, split into the study's Top-down classes, and the tidy
per-point, per-category table of the simulation pass (``uarch.parquet``).

The estimate charges every simulated event a fixed cost in cycles (rechar.uarch.machines gives
each machine's constants and their sources)::

    retiring        = Ir / width
    front-end       = I1mr x L2_latency + ILmr x memory_latency
    back-end memory = (D1mr + D1mw) x L2_latency + (DLmr + DLmw) x memory_latency
    bad speculation = (Bcm + Bim) x branch_penalty
    cycles          = retiring + front-end + back-end memory + bad speculation

It is a simulation proxy for Top-down, not Top-down: it assumes no overlap between misses and
execution (an out-of-order core hides part of every latency, so the memory classes are upper
bounds), knows nothing of port contention or dependencies (the back-end core class is missing),
and inherits the cache model's simplifications (no L2, no prefetchers, no TLB). Its use is
comparing points under one model: which class grows from batch 1 to 1024, which stack spends
its cycles where.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from rechar.uarch.profile import EVENTS

CLASSES = ("retiring", "frontend", "backend_memory", "bad_speculation")
KEYS = ["host", "run_id", "model", "backend", "batch", "machine"]
UARCH_COLUMNS = [
    *KEYS, "category", "status", "error", "calls", "samples", *EVENTS,
    "instructions_per_sample", "i1_mpki", "d1_mpki", "ll_mpki", "branch_mpki",
    "cycles_simulated", *(f"{c}_cycles" for c in CLASSES), *(f"{c}_share" for c in CLASSES),
    "coverage", "isa", "valgrind", "seconds",
]


def cycle_split(costs: dict[str, float], constants: dict[str, float]) -> dict[str, float]:
    """The four classes in cycles for event totals ``costs`` (callgrind event names)."""
    c = {e: float(costs.get(e, 0) or 0) for e in EVENTS}
    return {
        "retiring": c["Ir"] / constants["width"],
        "frontend": c["I1mr"] * constants["l2_latency"] + c["ILmr"] * constants["memory_latency"],
        "backend_memory": ((c["D1mr"] + c["D1mw"]) * constants["l2_latency"]
                           + (c["DLmr"] + c["DLmw"]) * constants["memory_latency"]),
        "bad_speculation": (c["Bcm"] + c["Bim"]) * constants["branch_penalty"],
    }


def metrics(costs: dict[str, float], samples: float, constants: dict[str, float]) -> dict[str, float]:
    """Per-sample instructions, misses per kilo-instruction and the cycle estimate of one row."""
    ir = float(costs.get("Ir", 0) or 0)
    per_ki = (lambda n: n / ir * 1e3) if ir else (lambda n: np.nan)
    split = cycle_split(costs, constants)
    cycles = sum(split.values())
    row = {
        "instructions_per_sample": ir / samples if samples else np.nan,
        "i1_mpki": per_ki(costs.get("I1mr", 0)),
        "d1_mpki": per_ki(costs.get("D1mr", 0) + costs.get("D1mw", 0)),
        "ll_mpki": per_ki(costs.get("ILmr", 0) + costs.get("DLmr", 0) + costs.get("DLmw", 0)),
        "branch_mpki": per_ki(costs.get("Bcm", 0) + costs.get("Bim", 0)),
        "cycles_simulated": cycles,
    }
    for name, value in split.items():
        row[f"{name}_cycles"] = value
        row[f"{name}_share"] = value / cycles if cycles else np.nan
    return row


def point_rows(record: dict[str, Any], host: str | None) -> list[dict[str, Any]]:
    """Rows of one uarch.jsonl record: one per category and one ``total`` (status ok), or one
    row carrying the error."""
    base = {"host": host, "run_id": record.get("run_id"), "model": record.get("model"),
            "backend": record.get("backend"), "batch": record.get("batch"),
            "machine": (record.get("machine") or {}).get("machine"), "status": record.get("status"),
            "error": record.get("error"), "calls": record.get("calls"), "isa": isa_text(record.get("isa")),
            "valgrind": record.get("valgrind"), "seconds": record.get("seconds"),
            "coverage": record.get("coverage")}
    if record.get("status") != "ok":
        return [{**base, "category": None}]
    samples = (record.get("calls") or 0) * (record.get("batch") or 0)
    constants = record["machine"]
    rows = []
    categories = {**record["categories"], "total": record["total"]}
    for category, costs in categories.items():
        rows.append({**base, "category": category, "samples": samples, **{e: costs.get(e, 0) for e in EVENTS},
                     **metrics(costs, samples, constants)})
    return rows


def isa_text(isa: dict[str, Any] | None) -> str | None:
    """The widest SIMD extension the simulated process was offered, and PyTorch's choice if any."""
    if not isa:
        return None
    text = str(isa.get("widest"))
    if isa.get("torch_cpu_capability"):
        text += f" (PyTorch kernels: {isa['torch_cpu_capability']})"
    return text


def uarch_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=UARCH_COLUMNS)
    numeric = ["calls", "samples", *EVENTS, "coverage", "seconds"]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    return df
