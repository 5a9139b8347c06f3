"""Export time and peak memory per model and scale, each export in its own process.

    python benchmarks/export_cost.py --scale small --scale paper [--out DIR] [--keep]

Each export runs as ``rechar export --force`` in a fresh process, so that its peak RSS (sampled
by the exporter and written to export.json) is its own. Paper-scale exports take 2.5-5 GB of
disk each; without --keep each is deleted once measured. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rechar.models as models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="append", choices=list(models.SCALES))
    parser.add_argument("--model", action="append", choices=models.names())
    parser.add_argument("--out", type=Path, default=None, help="export folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the exported files")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rechar-export-cost-"))
    print("| model | scale | export s (wall) | export s (rechar) | peak RSS GB | files GB | parity max error |")
    print("|---|---|---|---|---|---|---|")
    for scale in args.scale or ["small"]:
        for name in args.model or models.names():
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "rechar.cli", "export", "-m", name, "--scale", scale, "--out", str(out), "--force"],
                capture_output=True, text=True,
            )
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(f"| {name} | {scale} | failed: {proc.stderr.strip().splitlines()[-1]} |||||", flush=True)
                continue
            folder = out / name / scale
            m = json.loads((folder / "export.json").read_text())
            print(f"| {name} | {scale} | {wall:.1f} | {m['export_seconds']:.1f} | {m['peak_rss_bytes'] / 1e9:.2f} "
                  f"| {sum(m['sizes'].values()) / 1e9:.2f} | {m['parity']['max_abs_error']:.1e} |", flush=True)
            if not args.keep:
                shutil.rmtree(folder)
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
