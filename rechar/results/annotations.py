"""Corrections to a run's records, kept beside them: the logs stay as the workers wrote them.

    RUN_DIR/annotations.json
    [
      {"match": {"log": "profiles", "model": "ncf", "backend": "ort-cuda", "batch": 1},
       "set": {"time_basis": "host"},
       "why": "ONNX Runtime's start time was read on the wrong clock: no kernel matched a node"}
    ]

``match.log`` names the log the correction applies to (LOGS: ``points`` for points.jsonl and
the tables built from it, ``profiles``, ``trials``); every other ``match`` field must equal the
record's (a list: any of its values; numbers compare as numbers, so batch 1 matches 1.0).
``set`` gives fields their corrected values; ``why`` says what was wrong. The readers of the
analysis apply them on read (``apply_to_records``, ``apply_to_table``), later annotations over
earlier ones, and the report lists each with how many records it changed (``corrections``).
A record's identity (IDENTITY) is not correctable: a record of another point belongs in the log.
The ``points`` log is read as two tables, one row per round (rounds.parquet) and one per point
(points.parquet, figures over the rounds): a correction applies to the rows of each it matches,
so one that names a ``round`` corrects that round's row, not the point's figures over its rounds.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rechar.errors import UserError

ANNOTATIONS = "annotations.json"
#: the logs an annotation can correct -> the file each is read from
LOGS = {"points": "points.jsonl", "profiles": "profiles.jsonl", "trials": "trials.jsonl"}
#: fields that say which point a record is: matched on, never set
IDENTITY = {"run_id", "model", "backend", "batch", "round", "attempt", "trial", "policy"}


def read_annotations(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run folder's annotations (none without the file), checked: a malformed one is a
    UserError naming the file and the entry."""
    path = Path(run_dir) / ANNOTATIONS
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable: {e}") from None
    if not isinstance(entries, list):
        raise UserError(f"{path} must hold a list of annotations ({{match, set, why}} each)")
    for i, entry in enumerate(entries):
        where = f"{path}: annotation {i + 1}"
        if not isinstance(entry, dict) or set(entry) != {"match", "set", "why"}:
            raise UserError(f"{where} must have exactly the keys match, set and why")
        match, fields, why = entry["match"], entry["set"], entry["why"]
        if not isinstance(match, dict) or match.get("log") not in LOGS:
            raise UserError(f"{where}: match.log must be one of {', '.join(LOGS)}")
        if not isinstance(fields, dict) or not fields:
            raise UserError(f"{where}: set must give at least one field its corrected value")
        if IDENTITY & set(fields):
            raise UserError(f"{where}: set may not change {', '.join(sorted(IDENTITY & set(fields)))} "
                            "(which point a record is)")
        if not isinstance(why, str) or not why.strip():
            raise UserError(f"{where}: why must say what was wrong")
    return entries


def matches(match: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``record`` has every field of ``match`` but ``log``."""
    return all(any(_equal(record.get(field), v) for v in (want if isinstance(want, list) else [want]))
               for field, want in match.items() if field != "log")


def _equal(got: Any, want: Any) -> bool:
    flags = isinstance(got, (bool, np.bool_)), isinstance(want, (bool, np.bool_))
    if any(flags):  # a flag matches a flag only (True == 1 in Python)
        return all(flags) and bool(got) == bool(want)
    if isinstance(got, numbers.Number) and isinstance(want, numbers.Number):
        return float(got) == float(want)
    return got == want


def apply_to_records(records: list[dict[str, Any]], run_dir: str | Path, log: str) -> list[dict[str, Any]]:
    """``records`` (of ``log``) with the run's corrections applied: changed records are copies,
    the others the same objects."""
    entries = [a for a in read_annotations(run_dir) if a["match"]["log"] == log]
    if not entries:
        return records
    out = []
    for rec in records:
        for a in entries:
            if matches(a["match"], rec):
                rec = {**rec, **a["set"]}
        out.append(rec)
    return out


def apply_to_table(table: pd.DataFrame, run_dir: str | Path, log: str) -> pd.DataFrame:
    """A table built from ``log`` (one row per record, or per point) with the run's corrections
    applied to the rows they match."""
    entries = [a for a in read_annotations(run_dir) if a["match"]["log"] == log]
    if not entries or table.empty:
        return table
    table = table.copy()
    rows = table.to_dict("records")
    for a in entries:
        hit = [i for i, row in enumerate(rows) if matches(a["match"], row)]
        for field, value in a["set"].items():
            if field not in table:
                table[field] = None
            if not isinstance(value, numbers.Number) and pd.api.types.is_numeric_dtype(table[field]):
                table[field] = table[field].astype(object)  # a note where a figure was: keep both kinds
            column = table.columns.get_loc(field)
            for i in hit:
                table.iat[i, column] = value
                rows[i][field] = value
    return table
