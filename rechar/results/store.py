"""The results store of a run folder.

    RUN_DIR/
      manifest.json      run id, times, host, software versions, resolved configs, all options
      points.jsonl       append-only log, one JSON record per finished point (the durable truth)
      profiles.jsonl     append-only log of raw per-operator profiles (with --profile)
      counters.jsonl     append-only log of CPU event counts, perf stat (with --counters)
      uarch.jsonl        append-only log of simulated events per operator, callgrind (with --uarch)
      uarch.parquet      the simulated events as a table per point and category (rechar.uarch.table)
      callgrind/         callgrind's dump of each simulated point (with --uarch)
      ops.parquet        the normalised operator table (rechar.analysis.ops)
      traces/            raw profiler traces, one per profiled point
      rounds.parquet     one row per measurement (ROUND_COLUMNS): every round and attempt of
                         every point, rebuilt from points.jsonl
      points.parquet     one row per point (POINT_COLUMNS), its figures over its rounds
                         (rechar.results.rounds)
      latencies.parquet  one row per timed iteration: run_id, model, backend, device, batch,
                         round, attempt, iteration, latency_us
      logs/              each worker's stderr
      specs/             each worker's input (the exports it ran are named in the manifest)
      annotations.json   corrections to the logs' records, applied on read and listed by the
                         report; the logs themselves stay as written (rechar.results.annotations)

Schema version SCHEMA_VERSION is stored in the manifest and in both Parquet files' metadata;
a reader refuses a run written by a newer schema.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rechar.errors import UserError
from rechar.jsonfile import read_manifest_file
from rechar.results import rounds as rounds_module
from rechar.results.annotations import apply_to_table

#: 2: input pools (inputs, pool_batches, pool_gathered_bytes, pool_distinct_rows, cache_bytes);
#: compile_seconds, compile_cache_hit, compiled_graphs (compiled stacks); rounds and attempts,
#: contention (others_cpu_share, steal_share, involuntary_switches, noisy, noise), p50 intervals
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
POINTS_LOG = "points.jsonl"
PROFILES_LOG = "profiles.jsonl"
COUNTERS_LOG = "counters.jsonl"
UARCH_LOG = "uarch.jsonl"
#: the passes after timing: worker mode -> the log it writes
PASS_LOGS = {"profile": PROFILES_LOG, "counters": COUNTERS_LOG, "uarch": UARCH_LOG}
POINTS = "points.parquet"
ROUNDS = "rounds.parquet"
LATENCIES = "latencies.parquet"

_RECORD = [
    "run_id", "model", "scale", "backend", "framework", "device", "batch", "status", "error",
    "max_abs_error", "iterations", "p50_us", "p90_us", "p99_us", "mean_us", "std_us", "min_us", "max_us",
    "p50_ci_low_us", "p50_ci_high_us", "throughput_sps", "timed_seconds", "load_seconds", "peak_rss_bytes",
    "peak_device_bytes", "inputs", "pool_batches", "pool_gathered_bytes", "pool_distinct_rows", "cache_bytes",
    "compile_seconds", "compile_cache_hit", "compiled_graphs", "others_cpu_share", "steal_share",
    "involuntary_switches", "noisy", "noise", "input_hash", "settings", "started", "finished", "node", "node_host",
    "precision", "weight_bytes", "embedding_weight_bytes", "dense_weight_bytes", "quality_max_abs",
    "quality_mean_abs", "quality_pair_agreement", "quality_fp32_spread", "quality_error", "gate_logit_error",
    "gate_margin", "quality_logit_mean", "quality_logit_max", "quality_logit_spread",
]
#: Columns of rounds.parquet: one measurement (a round's attempt) each. Times in microseconds;
#: throughput in samples/s; p50_ci_*: the 95% interval of the round's p50 from its iterations.
ROUND_COLUMNS = [*_RECORD[:7], "round", "attempt", "used", *_RECORD[7:]]
#: Columns of points.parquet: one point each, its figures over its used rounds
#: (rechar.results.rounds); ``ci_method``: "rounds" or "iterations".
POINT_COLUMNS = [*_RECORD[:7], "rounds", "timed_rounds", "ci_method", *_RECORD[7:]]
#: Numeric columns: float64 even when no point of a run was timed (all null), so that readers
#: can do arithmetic on them without checking.
NUMERIC_COLUMNS = [
    "max_abs_error", "iterations", "p50_us", "p90_us", "p99_us", "mean_us", "std_us", "min_us", "max_us",
    "p50_ci_low_us", "p50_ci_high_us", "throughput_sps", "timed_seconds", "load_seconds", "peak_rss_bytes",
    "peak_device_bytes", "pool_batches", "pool_gathered_bytes", "pool_distinct_rows", "cache_bytes",
    "compile_seconds", "compiled_graphs", "others_cpu_share", "steal_share", "involuntary_switches", "started",
    "finished", "weight_bytes", "embedding_weight_bytes", "dense_weight_bytes", "quality_max_abs",
    "quality_mean_abs", "quality_pair_agreement", "quality_fp32_spread", "gate_logit_error", "gate_margin",
    "quality_logit_mean", "quality_logit_max", "quality_logit_spread",
]
#: status values: ok (timed), invalid (outputs outside tolerance: not timed), failed (an error or
#: a crashed worker), timeout (the worker was killed after --timeout seconds).
STATUSES = ("ok", "invalid", "failed", "timeout")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    manifest = read_manifest_file(run_dir, MANIFEST, "a run", "schema_version")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise UserError(f"{run_dir} was written by a newer rechar (schema {manifest['schema_version']}, "
                        f"this one reads up to {SCHEMA_VERSION}); upgrade rechar")
    return manifest


def append_point(run_dir: Path, record: dict[str, Any], log: str = POINTS_LOG) -> None:
    """Append one record as a JSON line, flushed to disk before returning: a finished point
    survives a kill of the process that measured it."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(Path(run_dir) / log, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class PointLogTail:
    """Follows points.jsonl as workers append to it, reading only new complete lines (the
    parent polls it while a worker measures, so it must stay cheap)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / POINTS_LOG
        self.offset = 0

    def new_keys(self) -> list[tuple]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        keys = []
        for line in data[:end].splitlines():
            try:
                keys.append(point_key(json.loads(line)))
            except (json.JSONDecodeError, KeyError):
                continue  # a torn record left by a killed worker
        return keys


def repair_point_log(run_dir: Path) -> None:
    """Cut a torn last record (its writer was killed mid-line), so that the next append starts
    on a line of its own instead of being glued to the fragment."""
    for log in (POINTS_LOG, *PASS_LOGS.values()):
        _repair(Path(run_dir) / log)


def _repair(path: Path) -> None:
    if not path.exists():
        return
    with open(path, "r+b") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def read_log(run_dir: Path, log: str = POINTS_LOG, key=None) -> list[dict[str, Any]]:
    """Records of an append-only log (points.jsonl, profiles.jsonl, counters.jsonl, trials.jsonl),
    one per ``key`` (point_key by default): the first, should a key appear twice, unless that one
    is marked ``retry`` (a point lost with its cluster node) and a later one exists. A torn last
    line (a writer killed mid-write) is ignored."""
    key = key or point_key
    path = Path(run_dir) / log
    if not path.exists():
        return []
    records: dict[tuple, dict[str, Any]] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last record, cut short
                continue
            raise UserError(f"{path}: line {i + 1} is corrupt") from None
        k = key(rec)
        if k not in records or records[k].get("retry"):
            records[k] = rec
    return list(records.values())


def read_point_log(run_dir: Path) -> list[dict[str, Any]]:
    return read_log(run_dir, POINTS_LOG)


def point_key(rec: dict[str, Any]) -> tuple:
    """A measurement's identity in every log: the point, its round and its attempt."""
    return rec["model"], rec["backend"], int(rec["batch"]), int(rec.get("round", 0)), int(rec.get("attempt", 0))


def write_tables(run_dir: Path) -> pd.DataFrame:
    """Rebuild rounds.parquet, points.parquet and latencies.parquet from the log (atomically);
    return points."""
    run_dir = Path(run_dir)
    records = read_point_log(run_dir)
    rows = []
    for r in records:
        row = {c: (json.dumps(r.get(c)) if c == "settings" else r.get(c)) for c in ROUND_COLUMNS}
        row.update(round=int(r.get("round", 0)), attempt=int(r.get("attempt", 0)))
        row["p50_ci_low_us"], row["p50_ci_high_us"] = rounds_module.iteration_interval(r.get("latencies_ns"))
        rows.append(row)
    table = _typed(pd.DataFrame(rows, columns=ROUND_COLUMNS), ROUND_COLUMNS)
    table["used"] = rounds_module.used_attempts(table) if len(table) else pd.Series(dtype=bool)
    table = table.sort_values(["model", "backend", "batch", "round", "attempt"], kind="stable").reset_index(drop=True)
    points = _typed(rounds_module.point_table(table, POINT_COLUMNS), POINT_COLUMNS)
    points = points.sort_values(["model", "backend", "batch"], kind="stable").reset_index(drop=True)
    lat_parts = []
    for r in records:
        if r.get("latencies_ns"):
            n = len(r["latencies_ns"])
            lat_parts.append(pd.DataFrame({
                "run_id": r["run_id"], "model": r["model"], "backend": r["backend"], "device": r["device"],
                "batch": r["batch"], "round": int(r.get("round", 0)), "attempt": int(r.get("attempt", 0)),
                "iteration": range(n), "latency_us": [v / 1e3 for v in r["latencies_ns"]],
            }))
    latencies = pd.concat(lat_parts, ignore_index=True) if lat_parts else pd.DataFrame(
        {c: [] for c in ("run_id", "model", "backend", "device", "batch", "round", "attempt", "iteration",
                         "latency_us")})
    write_parquet(table, run_dir / ROUNDS)
    write_parquet(points, run_dir / POINTS)
    write_parquet(latencies, run_dir / LATENCIES)
    return points


def _typed(points: pd.DataFrame, columns: list[str] = POINT_COLUMNS) -> pd.DataFrame:
    points = points.reindex(columns=[*columns, *points.columns.difference(columns)])
    # Schema 1 timed every point on one replayed batch; points from before precisions were fp32.
    if len(points):  # from the backend's name where a record has none (a crashed worker's, say)
        named = points["backend"].astype(str).str.partition("@")[2].replace("", "fp32")
        points["precision"] = points["precision"].fillna(named)
    replayed = points["inputs"].isna() & (points["status"] == "ok")
    points.loc[replayed, ["inputs", "pool_batches"]] = ["replay", 1]
    points[NUMERIC_COLUMNS] = points[NUMERIC_COLUMNS].apply(pd.to_numeric, errors="coerce").astype("float64")
    return points


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"rechar.schema_version": str(SCHEMA_VERSION).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def load_points(run_dir: Path) -> pd.DataFrame:
    """points.parquet of a run (schema checked): one row per point, its figures over its
    rounds, with the run's host name added."""
    return _load(Path(run_dir), POINTS, POINT_COLUMNS)


def load_rounds(run_dir: Path) -> pd.DataFrame:
    """rounds.parquet of a run: every measurement (round and attempt) of every point."""
    return _load(Path(run_dir), ROUNDS, ROUND_COLUMNS)


def _load(run_dir: Path, name: str, columns: list[str]) -> pd.DataFrame:
    manifest = read_manifest(run_dir)
    if not (run_dir / ROUNDS).exists() and (run_dir / POINTS_LOG).exists():
        write_tables(run_dir)  # a run from before rounds.parquet: its tables gain rounds and intervals
    path = run_dir / name
    if not path.exists():
        df = pd.DataFrame(columns=columns)
    else:
        version = int(pq.read_schema(path).metadata.get(b"rechar.schema_version", b"0"))
        if version > SCHEMA_VERSION:
            raise UserError(f"{path} was written by a newer rechar (schema {version}); upgrade rechar")
        df = pd.read_parquet(path)
    df = apply_to_table(_typed(df, columns), run_dir, "points")  # annotations.json: corrections, on read
    host = manifest.get("host", {}).get("hostname")
    # A point measured on a cluster node names its node's machine (rechar.sweep.cluster).
    df["host"] = df["node_host"].where(df["node_host"].notna(), host) if len(df) else host
    return df


def load_latencies(run_dir: Path) -> pd.DataFrame:
    read_manifest(run_dir)
    return pd.read_parquet(Path(run_dir) / LATENCIES)


def summary(points: pd.DataFrame) -> str:
    """A plain-text table of a run's points."""
    if points.empty:
        return "(no points)"
    view = pd.DataFrame({
        "model": points["model"], "backend": points["backend"], "device": points["device"],
        "batch": points["batch"], "status": points["status"],
        "pool": points["pool_batches"].map(lambda v: "" if pd.isna(v) else f"{int(v)}"),
        "p50 ms": (points["p50_us"] / 1e3).round(3),
        "95% CI": [_interval(lo, hi) for lo, hi in zip(points["p50_ci_low_us"], points["p50_ci_high_us"])],
        "p99 ms": (points["p99_us"] / 1e3).round(3), "samples/s": points["throughput_sps"].round(0),
        "max err": points["max_abs_error"].map(lambda v: "" if pd.isna(v) else f"{v:.1e}"),
        "noisy": points["noisy"].map(lambda v: "NOISY" if v is True else ""),
    })
    if points["rounds"].max() > 1:
        view.insert(5, "rounds", points["rounds"].astype("Int64"))
    if points["compile_seconds"].notna().any():  # compiled stacks: the compile, never in a latency
        view["compile s"] = points["compile_seconds"].round(1)
    text = view.to_string(index=False, na_rep="")
    problems = points[points["status"] != "ok"]
    if not problems.empty:
        text += "\n\nnot timed:\n" + "\n".join(
            f"  {r.model} {r.backend} batch {r.batch}: {r.status}: {r.error}" for r in problems.itertuples())
    noisy = points[points["noisy"] == True]  # noqa: E712
    if not noisy.empty:
        text += ("\n\nnoisy (the machine was busy while they were timed; compare them with care, or re-measure "
                 "with --remeasure-noisy):\n" + "\n".join(
                     f"  {r.model} {r.backend} batch {r.batch}: {r.noise}" for r in noisy.itertuples()))
    return text


def _interval(low: float, high: float) -> str:
    if pd.isna(low) or pd.isna(high):
        return ""
    return f"{low / 1e3:.3f}-{high / 1e3:.3f}"
