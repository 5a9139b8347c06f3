"""The simulation pass of a run as one tidy table, ``uarch.parquet``: one row per point and
operator category (and a ``total`` row per point), columns rechar.uarch.cycles.UARCH_COLUMNS."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from rechar.results.store import UARCH_LOG, read_log, read_manifest, write_parquet
from rechar.uarch.cycles import point_rows, uarch_table

UARCH_TABLE = "uarch.parquet"
DUMP_DIR = "callgrind"


def load_uarch(run_dir: str | Path) -> pd.DataFrame:
    run_dir = Path(run_dir)
    host = read_manifest(run_dir).get("host", {}).get("hostname")
    rows = [row for rec in read_log(run_dir, UARCH_LOG) for row in point_rows(rec, host)]
    return uarch_table(rows)


def write_uarch_table(run_dir: str | Path) -> pd.DataFrame:
    """Rebuild uarch.parquet from uarch.jsonl; drop the dumps callgrind writes when a worker
    exits (its counts since the last point's dump: the worker's teardown, not a point)."""
    run_dir = Path(run_dir)
    for dump in (run_dir / DUMP_DIR).glob("callgrind.out.*"):
        if re.fullmatch(r"callgrind\.out\.\d+", dump.name):
            dump.unlink(missing_ok=True)
    table = load_uarch(run_dir)
    write_parquet(table, run_dir / UARCH_TABLE)
    return table
