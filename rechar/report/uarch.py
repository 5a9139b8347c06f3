"""The report's Microarchitecture section: the simulation pass (rechar.uarch) of the runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rechar.analysis import uarch as analysis
from rechar.report.page import note, num, pct, table


def section(run_dirs: list[Path], counters: pd.DataFrame | None = None) -> str:
    """HTML of the section for these runs (a note when none has a simulation pass); ``counters``,
    the runs' counting passes (rechar.analysis.counters), set hardware-counted figures beside the
    simulated ones where the same point has both."""
    df = analysis.load_runs(run_dirs)
    if df.empty:
        return note("No simulation pass in these runs (run with --uarch, or rechar uarch RUN_DIR; needs valgrind).")
    out = ["<p>Simulated, not counted: each point's steady-state calls ran under valgrind's callgrind with "
           "one intra-op thread, its caches given explicitly (the simulated machine below; the last level "
           "as one core's share), and every function's cost was charged to the operator whose entry "
           "encloses it (<code>runtime</code>: the interpreter, dispatch, the executor, allocation outside "
           "any operator). Valgrind emulates AVX2 at most, so the kernels ran their AVX2 paths; the cache "
           "model is an inclusive two-level LRU without prefetchers or a TLB. The cycle estimate charges "
           "each event a fixed latency, with no overlap: its classes are a proxy for Top-down, comparable "
           "across points, not a prediction of time.</p>"]
    totals = analysis.totals(df)
    machines = totals[["machine", "isa", "valgrind"]].drop_duplicates() if not totals.empty else totals
    for row in machines.itertuples():
        out.append(note(f"simulated machine: {row.machine}; kernels' ISA: {row.isa}; {row.valgrind}"))
    if not totals.empty:
        out.append("<h3>Per point</h3>" + table(totals, [
            ("model", "model", None), ("backend", "backend", None), ("batch", "batch", None),
            ("calls", "calls", num(".0f")), ("instructions/sample", "instructions_per_sample", num(",.0f")),
            ("I1 MPKI", "i1_mpki", num(".2f")), ("D1 MPKI", "d1_mpki", num(".1f")), ("LL MPKI", "ll_mpki", num(".2f")),
            ("branch MPKI", "branch_mpki", num(".2f")), ("retiring", "retiring_share", pct),
            ("front-end", "frontend_share", pct), ("back-end memory", "backend_memory_share", pct),
            ("bad speculation", "bad_speculation_share", pct), ("attributed", "coverage", pct),
            ("pass s", "seconds", num(".1f")),
        ]))
    where = analysis.where_it_goes(df)
    if not where.empty:
        out.append("<h3>Where instructions, last-level misses and estimated cycles go</h3>" + table(
            where[where["instruction_share"] >= 0.01], [
                ("model", "model", None), ("backend", "backend", None), ("batch", "batch", None),
                ("category", "category", None), ("instructions", "instruction_share", pct),
                ("LL misses", "ll_miss_share", pct), ("cycles (est.)", "cycle_share", pct)]))
    lookups = analysis.embedding_lookup_cost(analysis.load_ops(run_dirs), analysis.lookups_per_sample(run_dirs))
    if not lookups.empty:
        out.append("<h3>Cost of one embedding lookup</h3><p>Simulated events of the embedding ops and the "
                   "pooling reductions per embedding row read: PyTorch's embedding_bag against ONNX Runtime's "
                   "Gather + ReduceSum at the same point.</p>" + table(lookups, [
                       ("model", "model", None), ("backend", "backend", None), ("batch", "batch", None),
                       ("lookups/sample", "lookups_per_sample", num(".0f")),
                       ("instructions/lookup", "instructions_per_lookup", num(",.1f")),
                       ("D1 misses/lookup", "d1_misses_per_lookup", num(".2f")),
                       ("LL misses/lookup", "ll_misses_per_lookup", num(".2f"))]))
    shift = analysis.batch_shift(df)
    if not shift.empty:
        shift = shift.assign(batches=shift["small_batch"].astype(str) + " → " + shift["large_batch"].astype(str))
        out.append("<h3>Small batch against large batch</h3>" + table(shift, [
            ("model", "model", None), ("backend", "backend", None), ("batches", "batches", None),
            ("front-end small", "frontend_small", pct), ("front-end large", "frontend_large", pct),
            ("back-end memory small", "backend_memory_small", pct),
            ("back-end memory large", "backend_memory_large", pct),
            ("instr/sample small", "instructions_per_sample_small", num(",.0f")),
            ("instr/sample large", "instructions_per_sample_large", num(",.0f"))]))
    out.append(_counted_beside_simulated(counters, df))
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        out.append("<h3>Points whose simulation failed</h3>" + table(
            bad, [("model", "model", None), ("backend", "backend", None), ("batch", "batch", None),
                  ("reason", "error", None)], mono=("error",)))
    return "".join(out)


def _counted_beside_simulated(counters: pd.DataFrame | None, df: pd.DataFrame) -> str:
    both = analysis.counted_beside_simulated(counters if counters is not None else pd.DataFrame(), df)
    if both.empty:
        return ("<h3>Counted beside simulated</h3>" + note(
            "No simulated point of these runs has hardware-counted instructions (a counting pass on a "
            "machine with a PMU: rechar counters RUN_DIR), so no simulated figure is checked against a "
            "counted one here."))
    spread = (both["instructions_ratio"] - 1).abs()
    return ("<h3>Counted beside simulated</h3><p>The same points counted by perf (every thread of the "
            "worker, the kernels' native ISA) and simulated (one thread, AVX2 at most): instructions agree "
            f"within {spread.max():.1%} (median {spread.median():.1%}) over {len(both)} points. Count "
            "with --threads 1 for the like-for-like comparison; LL and L1D misses differ also because the "
            "simulated caches have no prefetchers.</p>" + table(both, [
                ("model", "model", None), ("backend", "backend", None), ("batch", "batch", None),
                ("instr/sample counted", "instructions_per_sample_counted", num(",.0f")),
                ("instr/sample simulated", "instructions_per_sample_simulated", num(",.0f")),
                ("simulated/counted", "instructions_ratio", num(".3f")),
                ("branch MPKI counted", "branch_mpki_counted", num(".2f")),
                ("branch MPKI simulated", "branch_mpki_simulated", num(".2f")),
                ("LLC MPKI counted", "llc_mpki_counted", num(".2f")),
                ("LL MPKI simulated", "llc_mpki_simulated", num(".2f")),
                ("L1D MPKI counted", "l1d_mpki_counted", num(".1f")),
                ("D1 MPKI simulated", "l1d_mpki_simulated", num(".1f"))]))
