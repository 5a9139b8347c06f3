"""The README's table from a run folder: p50 latency (ms) per model on each stack at the smallest
and largest batch size, and the dominant operator category at the largest, per stack.

    python benchmarks/readme_table.py RUN_DIR [--backends torch,ort-cpu,tf]

Prints a Markdown table; points that are not ``ok`` print as their status, so a failed point
cannot be mistaken for a figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rechar.analysis import analyze


def table(run_dir: Path, backends: list[str]) -> str:
    tables = analyze([run_dir])
    points, shift = tables["points"], tables["shift"]
    points = points[points["backend"].isin(backends)]
    small, large = int(points["batch"].min()), int(points["batch"].max())
    top = shift.drop_duplicates(["model", "batch", "backend"]).set_index(["model", "batch", "backend"])
    head = ([f"{b} b{small}" for b in backends] + [f"{b} b{large}" for b in backends]
            + [f"dominant at {large} ({' / '.join(backends)})"])
    lines = ["| model | " + " | ".join(head) + " |", "|---|" + "---:|" * (2 * len(backends)) + "---|"]
    for model in dict.fromkeys(points["model"]):
        cells = []
        for batch in (small, large):
            for backend in backends:
                row = points[(points["model"] == model) & (points["backend"] == backend) & (points["batch"] == batch)]
                if row.empty:
                    cells.append("–")
                elif (row["status"] != "ok").any():
                    cells.append(str(row["status"].iloc[0]))
                else:
                    cells.append(f"{row['p50_us'].median() / 1000:.2f}")
        dominant = []
        for backend in backends:
            key = (model, large, backend)
            dominant.append(f"{top.loc[key, 'dominant']} ({100 * top.loc[key, 'dominant_share']:.0f}%)"
                            if key in top.index else "–")
        lines.append(f"| {model} | " + " | ".join(cells) + " | " + " / ".join(dominant) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--backends", default="torch,ort-cpu,tf")
    args = parser.parse_args()
    print(table(args.run_dir, args.backends.split(",")))


if __name__ == "__main__":
    main()
