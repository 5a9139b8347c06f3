"""The noise floor of this machine: how much the same points vary between rounds, quiet and
beside a competing load, and how many loaded rounds the ``noisy`` flag catches.

    python benchmarks/noise_floor.py [--models ncf,dlrm-rmc1] [--backends torch,ort-cpu]
                                     [--batch-sizes 1,64] [--rounds 5] [--scale small]

Two sweeps of the same points, each in ``--rounds`` interleaved rounds (rechar's own rounds, a
fresh worker per round): one on the quiet machine, one while a competing load runs (one busy
loop in a process of its own, started before the sweep and stopped after it, never longer than
30 minutes). Prints, per point, the coefficient of variation of the per-round p50s in each, the
loaded/quiet ratio of the p50s, and how many rounds of each sweep were flagged noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from rechar.measure.timing import TimingOptions
from rechar.results.store import load_rounds
from rechar.sweep import RunOptions, run_sweep

LOAD = "import time\nend = time.time() + 1800\nwhile time.time() < end: pass"


def sweep(args, out: Path):
    options = RunOptions(models=args.models.split(","), backends=args.backends.split(","),
                         batch_sizes=[int(b) for b in args.batch_sizes.split(",")], scale=args.scale,
                         rounds=args.rounds, timing=TimingOptions(min_seconds=args.seconds))
    rounds = load_rounds(run_sweep(options, out))
    return rounds[rounds["status"] == "ok"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ncf,dlrm-rmc1")
    parser.add_argument("--backends", default="torch,ort-cpu")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per point and round, at least")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        quiet = sweep(args, Path(tmp) / "quiet")
        load = subprocess.Popen([sys.executable, "-c", LOAD])
        try:
            loaded = sweep(args, Path(tmp) / "loaded")
        finally:
            load.kill()
            load.wait()
    keys = ["model", "backend", "batch"]

    def per_point(rounds):
        g = rounds.groupby(keys)
        return g["p50_us"].agg(lambda s: s.std(ddof=1) / s.mean()).rename("cv"), g["p50_us"].median(), \
            g["noisy"].apply(lambda s: int((s == True).sum()))  # noqa: E712

    q_cv, q_p50, q_flag = per_point(quiet)
    l_cv, l_p50, l_flag = per_point(loaded)
    print(f"{args.rounds} rounds per point, {args.scale} scale; competing load: one busy loop "
          f"(the machine has {len(__import__('os').sched_getaffinity(0))} CPUs)")
    print("| model | backend | batch | CV quiet | CV loaded | loaded / quiet p50 | noisy rounds quiet | noisy rounds loaded |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in q_cv.index:
        print(f"| {' | '.join(map(str, key))} | {100 * q_cv[key]:.1f}% | {100 * l_cv[key]:.1f}% | "
              f"{l_p50[key] / q_p50[key]:.2f} | {q_flag[key]}/{args.rounds} | {l_flag[key]}/{args.rounds} |")
    print(f"\nmedian CV: quiet {100 * q_cv.median():.1f}%, loaded {100 * l_cv.median():.1f}%; rounds flagged: "
          f"quiet {int(q_flag.sum())}/{len(quiet)}, loaded {int(l_flag.sum())}/{len(loaded)}")


if __name__ == "__main__":
    main()
