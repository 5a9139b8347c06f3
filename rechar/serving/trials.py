"""The results store of a serving run folder.

    RUN_DIR/
      manifest.json   kind "serve": run id, times, host, software, options, configs, exports
      trials.jsonl    append-only log, one JSON record per finished LoadGen test (the durable truth)
      trials.parquet  TRIAL_COLUMNS, rebuilt from the log after each worker
      loadgen/        LoadGen's summary and detail logs, one folder per trial (``log_dir``)
      logs/, specs/   each worker's output and input

A configuration is (model, backend, offload, policy); its trials are numbered: 0 is the Offline
test, 1... the Server search's. Rates are queries per second, latencies are of whole queries
in milliseconds, from LoadGen (issue to completion, queueing included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from rechar.errors import UserError
from rechar.results.annotations import apply_to_table

from rechar.results.store import SCHEMA_VERSION, read_log, read_manifest, write_parquet

TRIALS_LOG = "trials.jsonl"
TRIALS = "trials.parquet"
#: status values: ok (LoadGen ran: see ``result``), invalid (the gate failed: nothing timed),
#: failed (an error or a crashed worker), timeout (the worker was killed). sub_batch_sizes: the
#: distinct sub-batch sizes the stack was given ("4,8": a static-shape stack's padded buckets);
#: retry_reason: why a Server trial repeats a rate (rechar.serving.search)
TRIAL_COLUMNS = [
    "run_id", "model", "scale", "backend", "offload", "policy", "batch", "workers", "threads_per_executor",
    "trial", "scenario", "status", "error", "target_qps", "achieved_qps", "scheduled_qps", "result", "reason",
    "passed", "meets_bound", "inconclusive", "p99_bound_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "queries",
    "overlatency_queries", "min_queries", "queries_wanted", "shed", "offloaded_queries", "test_seconds",
    "predicted_qps", "predicted_saturation_qps", "predicted_p99_ms", "query_sizes", "sub_batch_sizes", "pool_queries",
    "mean_query_items", "p99_query_items", "pool_gathered_bytes", "input_hash", "others_cpu_share", "steal_share",
    "noisy", "retry_reason", "log_dir", "started", "finished",
]
NUMERIC = [
    "batch", "workers", "threads_per_executor", "trial", "target_qps", "achieved_qps", "scheduled_qps", "p99_bound_ms",
    "p50_ms", "p90_ms", "p99_ms", "max_ms", "queries", "overlatency_queries", "min_queries", "queries_wanted", "shed",
    "offloaded_queries", "test_seconds", "predicted_qps", "predicted_saturation_qps", "predicted_p99_ms",
    "pool_queries", "mean_query_items", "p99_query_items", "pool_gathered_bytes", "others_cpu_share", "steal_share",
    "started", "finished",
]


def config_key(rec: dict[str, Any]) -> tuple:
    return rec["model"], rec["backend"], rec.get("offload") or "", rec["policy"]


def trial_key(rec: dict[str, Any]) -> tuple:
    return (*config_key(rec), int(rec["trial"]))


def read_trials(run_dir: Path) -> list[dict[str, Any]]:
    return read_log(Path(run_dir), TRIALS_LOG, key=trial_key)


def write_trials(run_dir: Path) -> pd.DataFrame:
    """Rebuild trials.parquet from the log (atomically) and return it."""
    table = _typed(pd.DataFrame(read_trials(run_dir)))
    write_parquet(table, Path(run_dir) / TRIALS)
    return table


def load_trials(run_dir: Path) -> pd.DataFrame:
    """trials.parquet of a serving run, with the run's host name added."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    path = run_dir / TRIALS
    if path.exists():
        version = int((pq.read_schema(path).metadata or {}).get(b"rechar.schema_version", b"0"))
        if version > SCHEMA_VERSION:
            raise UserError(f"{path} was written by a newer rechar (schema {version}); upgrade rechar")
        table = pd.read_parquet(path)
    else:
        table = write_trials(run_dir) if (run_dir / TRIALS_LOG).exists() else None
    table = apply_to_table(_typed(table if table is not None else pd.DataFrame()), run_dir, "trials")
    table["host"] = manifest.get("host", {}).get("hostname")
    return table


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    table = table.reindex(columns=TRIAL_COLUMNS)
    table[NUMERIC] = table[NUMERIC].apply(pd.to_numeric, errors="coerce").astype("float64")
    for flag in ("passed", "meets_bound", "inconclusive", "noisy"):
        table[flag] = table[flag].astype("object")
    return table.sort_values(["model", "backend", "offload", "policy", "trial"], kind="stable", ignore_index=True)


def is_serve_run(manifest: dict[str, Any]) -> bool:
    return manifest.get("kind") == "serve"

