"""The corrections a run's annotations make (rechar.results.annotations): one row per annotation,
with how many records it matches, for ``rechar analyze`` and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from rechar.results.annotations import LOGS, matches, read_annotations
from rechar.results.store import read_log
from rechar.serving.trials import trial_key


def corrections(run_dir: str | Path) -> pd.DataFrame:
    """One row per annotation of the run: log, match and set as text, why, and how many records
    of its log it matches (0 says it corrects nothing: a typo in its match)."""
    keys = {"trials": trial_key}  # the others' records are one per point (and round): the store's key
    rows = []
    for a in read_annotations(run_dir):
        log = a["match"]["log"]
        records = read_log(Path(run_dir), LOGS[log], key=keys.get(log))
        rows.append({"log": log, "match": _text({k: v for k, v in a["match"].items() if k != "log"}),
                     "set": _text(a["set"]), "why": a["why"], "records": sum(matches(a["match"], r) for r in records)})
    return pd.DataFrame(rows, columns=["log", "match", "set", "why", "records"])



def _text(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, list) else json.dumps(v)}" for k, v in fields.items())
