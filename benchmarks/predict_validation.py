"""How close are rechar's predictions? Each kind of prediction made from one measured run and
compared with another run that measured the target.

    python benchmarks/predict_validation.py --card CARD.json --runs DIR [--measure] [--threads 2]
                                            [--backends torch,ort-cpu,tf] [--batch-sizes 1,64,1024]

With ``--measure``, first makes the runs it needs under DIR (``rechar run --profile``, all eight
models; skipped where the folder exists): ``tiny-t1``, ``small-t1`` (1 thread) and ``tiny-tN``,
``small-tN`` (N = --threads). Then validates, each as ``rechar predict SRC --against DST``:

- scale, tiny -> small, at 1 thread and at N threads (tables from inside the caches to beyond them,
  DIN/DIEN sequences from 8 steps to 250/40);
- threads, 1 -> N, at small scale;

and prints, per kind and per backend, the median and worst absolute error of the predicted p50,
the share of points within 15%, and, for reference, the error of no prediction at all (the
source's p50 taken unchanged). Writes every point's comparison to DIR/validation.parquet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from rechar.predict import Card, error_summary, validate


def _run(folder: Path, scale: str, threads: int, backends: str, batches: str) -> None:
    if (folder / "manifest.json").exists():
        print(f"{folder}: exists, kept")
        return
    subprocess.run([sys.executable, "-m", "rechar.cli", "run", "--scale", scale, "--threads", str(threads), "--profile",
                    "--backend", backends, "--batch-sizes", batches, "--out", str(folder), "-q"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--card", required=True, help="this machine's card (rechar probe)")
    parser.add_argument("--runs", required=True, help="folder of the runs")
    parser.add_argument("--measure", action="store_true", help="make the runs that are missing first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="torch,ort-cpu,tf")
    parser.add_argument("--batch-sizes", default="1,64,1024")
    args = parser.parse_args()
    runs = Path(args.runs)
    n = args.threads
    names = {"tiny-t1": ("tiny", 1), "small-t1": ("small", 1), f"tiny-t{n}": ("tiny", n), f"small-t{n}": ("small", n)}
    if args.measure:
        runs.mkdir(parents=True, exist_ok=True)
        for name, (scale, threads) in names.items():
            _run(runs / name, scale, threads, args.backends, args.batch_sizes)
    card = Card.load(args.card)
    kinds = [("scale tiny->small, 1 thread", "tiny-t1", "small-t1"),
             (f"scale tiny->small, {n} threads", f"tiny-t{n}", f"small-t{n}"),
             (f"threads 1->{n}, small", "small-t1", f"small-t{n}")]
    tables = []
    for kind, src, dst in kinds:
        if not ((runs / src / "manifest.json").exists() and (runs / dst / "manifest.json").exists()):
            print(f"{kind}: skipped ({src} or {dst} missing under {runs})")
            continue
        tables.append(validate(runs / src, runs / dst, card, kind=kind))
    if not tables:
        sys.exit("no pair of runs to validate")
    table = pd.concat(tables, ignore_index=True)
    table.to_parquet(runs / "validation.parquet")
    pd.set_option("display.width", 200)
    print(error_summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(error_summary(table, ["validation", "backend"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nevery point: {runs / 'validation.parquet'}")


if __name__ == "__main__":
    main()
