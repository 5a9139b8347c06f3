"""The normalised operator table of a run: every profiled op of every point, with its canonical
category and model layer, per iteration.

Workers append raw profiles to ``profiles.jsonl`` (native op, ONNX node, layer, totals over the
trace); this module turns them into ``ops.parquet``:

    run_id, model, backend, device, batch, round, native_op, op_category, category, layer, node,
    fused, calls_per_iter, self_us_per_iter, share

``share`` is the op's part of the point's profiled time in that round (with ``--rounds``, each
round of a point is profiled); ``fused`` lists the member ops of a
kernel that fused several ('+'-joined; '' otherwise), attributed by the taxonomy's rule.
Normalising at read time means a taxonomy change needs no new profiling.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

import rechar.models as models
from rechar import taxonomy
from rechar.taxonomy import attribute, categorize
from rechar.stacks.base import PROFILE_COLUMNS
from rechar.results.annotations import ANNOTATIONS, apply_to_records
from rechar.results.store import PROFILES_LOG, read_log, read_manifest, write_parquet

OPS = "ops.parquet"
#: ops.parquet's label of the taxonomy that categorized it (rechar.taxonomy.digest)
TAXONOMY_ATTR = "rechar.taxonomy"
OPS_COLUMNS = [
    "run_id", "model", "backend", "device", "batch", "round", "native_op", "op_category", "category", "layer",
    "node", "fused", "calls_per_iter", "self_us_per_iter", "share",
]
POINT_KEYS = ["run_id", "model", "backend", "device", "batch"]


@functools.lru_cache(maxsize=32)
def _layer_classes(name: str, config_json: str) -> dict[str, str]:
    config = models.resolve_config(name, "paper", json.loads(config_json))
    model = models.shell(name, config)
    return {path: type(module).__name__ for path, module in model.named_modules() if path}


def layer_classes(name: str, config: dict) -> dict[str, str]:
    """Module path -> class name of a model, built on the meta device (no weights allocated)."""
    return _layer_classes(name, json.dumps(config, sort_keys=True))


def normalize(raw: pd.DataFrame, iterations: int, point: dict, classes: dict[str, str]) -> pd.DataFrame:
    """One point's raw profile (PROFILE_COLUMNS: totals per native_op, node, layer and fused
    members) -> OPS_COLUMNS rows."""
    raw = raw.copy()
    members = raw["members"] if "members" in raw else pd.Series([()] * len(raw), index=raw.index)
    raw["members"] = [tuple((m[0], m[2]) for m in ms) if isinstance(ms, (list, tuple)) else () for ms in members]
    raw["layer"] = [attribute(op, layer, ms)[1] for op, layer, ms in zip(raw["native_op"], raw["layer"], raw["members"])]
    df = raw.groupby(["native_op", "node", "layer", "members"], as_index=False)[["calls", "self_us"]].sum()
    cats = [categorize(op, layer, classes, ms) for op, layer, ms in zip(df["native_op"], df["layer"], df["members"])]
    df["fused"] = ["+".join(op for op, _ in ms) for ms in df["members"]]
    df["op_category"] = [c[0] for c in cats]
    df["category"] = [c[1] for c in cats]
    df["calls_per_iter"] = df["calls"] / iterations
    df["self_us_per_iter"] = df["self_us"] / iterations
    total = df["self_us_per_iter"].sum()
    df["share"] = df["self_us_per_iter"] / total if total > 0 else 0.0
    for key in POINT_KEYS:
        df[key] = point[key]
    df["round"] = int(point.get("round", 0))
    return df[OPS_COLUMNS]


def read_profiles(run_dir: Path) -> list[dict]:
    """Records of profiles.jsonl, one per point, with the run's annotations.json applied."""
    return apply_to_records(read_log(run_dir, PROFILES_LOG), run_dir, "profiles")


def profile_time_basis(run_dir: Path) -> pd.DataFrame:
    """What the op times of each backend's profiles cover, where the profile says (ORT on CUDA:
    ``host+device`` when CUPTI's kernels were matched to its nodes, ``host`` otherwise): one row
    per (backend, time_basis) with its number of points."""
    rows = [(rec["backend"], rec["time_basis"]) for rec in read_profiles(run_dir)
            if rec.get("status") == "ok" and rec.get("time_basis")]
    df = pd.DataFrame(rows, columns=["backend", "time_basis"])
    return df.groupby(["backend", "time_basis"], as_index=False).size().rename(columns={"size": "points"})


def build_ops_table(run_dir: Path, write: bool = True) -> pd.DataFrame:
    """Normalise every raw profile of a run and write ops.parquet (atomically), labelled with
    the taxonomy's digest."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    frames = []
    for rec in read_profiles(run_dir):
        if rec.get("status") != "ok":  # a failed profiling pass: listed by the report, no ops
            continue
        classes = layer_classes(rec["model"], manifest["configs"][rec["model"]])
        raw = pd.DataFrame(rec["ops"]).reindex(columns=PROFILE_COLUMNS)  # older profiles have no members
        frames.append(normalize(raw, rec["iterations"], rec, classes))
    ops = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OPS_COLUMNS)
    ops.attrs[TAXONOMY_ATTR] = taxonomy.digest()
    if write:
        write_parquet(ops, run_dir / OPS)
    return ops


def load_ops(run_dir: Path) -> pd.DataFrame:
    """ops.parquet of a run, rebuilt from profiles.jsonl when missing or older than it, and
    categorized again (in memory: the file is left as it is) when the taxonomy changed since it
    was written."""
    run_dir = Path(run_dir)
    path = run_dir / OPS
    sources = [p for p in (run_dir / PROFILES_LOG, run_dir / ANNOTATIONS) if p.exists()]
    if not path.exists() or any(p.stat().st_mtime > path.stat().st_mtime for p in sources):
        return build_ops_table(run_dir)
    read_manifest(run_dir)
    ops = pd.read_parquet(path)
    if ops.attrs.get(TAXONOMY_ATTR) != taxonomy.digest() and (run_dir / PROFILES_LOG).exists():
        return build_ops_table(run_dir, write=False)
    return ops


def unmapped_ops(ops: pd.DataFrame) -> pd.DataFrame:
    """Native ops the taxonomy does not know (counted as ``other``): reported, never dropped."""
    other = ops[ops["op_category"] == "other"]
    return other.groupby(["backend", "native_op"], as_index=False)["self_us_per_iter"].sum()


def coverage(ops: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """How much of each point's measured latency the profile explains: profiled self time per
    iteration / p50 of the timing pass (profilers add overhead, so this can pass 1)."""
    ops = ops if "round" in ops else ops.assign(round=0)
    per_round = ops.groupby([*POINT_KEYS, "round"], as_index=False)["self_us_per_iter"].sum()
    profiled = per_round.groupby(POINT_KEYS, as_index=False)["self_us_per_iter"].mean().rename(
        columns={"self_us_per_iter": "profiled_us"})
    merged = profiled.merge(points[POINT_KEYS + ["p50_us"]], on=POINT_KEYS, how="left")
    merged["coverage"] = merged["profiled_us"] / merged["p50_us"]
    return merged
