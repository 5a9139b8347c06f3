"""The Markdown tables of docs/microarchitecture.md from a run's simulation pass.

    python benchmarks/uarch_tables.py RUN_DIR
    python benchmarks/uarch_tables.py --readme RUN_DIR [RUN_DIR ...]

Per point (totals, MPKI, the cycle estimate's split, coverage, pass seconds); where each
point's instructions and last-level misses go (categories with >= 5% of the instructions); the
simulated cost of one embedding lookup per stack (rechar.analysis.uarch). ``--readme``: the
README's compact table (torch and ort-cpu at batch 1 and 256); a point that failed in one run
is taken from the next run that simulated it.
"""

import sys
from pathlib import Path

import pandas as pd

from rechar.analysis import uarch as a


def f(v, fmt):
    return "–" if pd.isna(v) else format(v, fmt)


def main(run: Path) -> None:
    df = a.load_runs([run])
    t = a.totals(df)
    rows = []
    for r in t.itertuples():
        rows.append(f"| {r.model} | {r.backend} | {r.batch} | {int(r.calls)} | {f(r.instructions_per_sample, ',.0f')} | {f(r.i1_mpki,'.2f')} | {f(r.d1_mpki,'.1f')} | {f(r.ll_mpki,'.2f')} | {f(r.branch_mpki,'.2f')} | {f(100*r.retiring_share,'.0f')} / {f(100*r.frontend_share,'.0f')} / {f(100*r.backend_memory_share,'.0f')} / {f(100*r.bad_speculation_share,'.0f')} | {f(100*r.coverage,'.2f')}% | {f(r.seconds,'.0f')} |")
    print("| model | stack | batch | calls | instr/sample | I1 MPKI | D1 MPKI | LL MPKI | br MPKI | ret / FE / BE-mem / bad-spec % | attributed | point s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    w = a.where_it_goes(df)
    top = w.sort_values(["model","backend","batch","instruction_share"], ascending=[True,True,True,False])
    lines = []
    for (m,b,bs), g in top.groupby(["model","backend","batch"]):
        g = g[g.instruction_share >= 0.05]
        cells = ", ".join(f"{c} {100*i:.0f}% (LL {100*l:.0f}%)" if pd.notna(l) else f"{c} {100*i:.0f}%" for c,i,l in zip(g.category, g.instruction_share, g.ll_miss_share))
        lines.append(f"| {m} | {b} | {bs} | {cells} |")
    print("| model | stack | batch | categories >= 5% of instructions (their share of LL misses) |")
    print("|---|---|---|---|")
    print("\n".join(lines))
    print()
    lk = a.embedding_lookup_cost(a.load_ops([run]), a.lookups_per_sample([run]))
    print("| model | stack | batch | lookups/sample | instr/lookup | D1 misses/lookup | LL misses/lookup |")
    print("|---|---|---|---|---|---|---|")
    for r in lk.itertuples():
        print(f"| {r.model} | {r.backend} | {r.batch} | {r.lookups_per_sample:.0f} | {r.instructions_per_lookup:,.1f} | {r.d1_misses_per_lookup:.2f} | {r.ll_misses_per_lookup:.2f} |")


def readme(runs: list[Path]) -> None:
    t = pd.concat([a.totals(a.load_runs([run])) for run in runs])  # in the order given
    t = t[t["status"] == "ok"].drop_duplicates(["model", "backend", "batch"]).set_index(["model", "backend", "batch"])

    def pair(model, batch, column, fmt):
        return " / ".join(f(t[column].get((model, b, batch)), fmt) for b in ("torch", "ort-cpu"))

    print("| model | instr/sample b1 | front-end share b1 | LL MPKI b256 | back-end memory share b256 | instr/sample b256 |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in sorted({m for m, _, _ in t.index}):
        print(f"| {model} | {pair(model, 1, 'instructions_per_sample', ',.0f')} | "
              f"{pair(model, 1, 'frontend_share', '.0%')} | {pair(model, 256, 'll_mpki', '.1f')} | "
              f"{pair(model, 256, 'backend_memory_share', '.0%')} | {pair(model, 256, 'instructions_per_sample', ',.0f')} |")


if __name__ == "__main__":
    if sys.argv[1] == "--readme":
        readme([Path(p) for p in sys.argv[2:]])
    else:
        main(Path(sys.argv[1]))
