"""``rechar predict``: a run's measured points re-costed for another scale, thread count or
machine, operator by operator. Every figure it makes is a prediction and is labelled so.

For each profiled point (model, backend, batch), each operator of its profile is re-costed by
the class of work it does, from the model's census (rechar.predict.census) at the source and the
target config and from the source and target machine cards (rechar.predict.machine):

- **gathers** (embedding ops inside an embedding table): time x (rows gathered x expected ns per
  row at the target) / (the same at the source); ns per row from the card's gather curve and the
  id stream's reuse profile at each cache level (rechar.predict.reuse), for the tables' sizes,
  the id distribution and the input pool the run (or rechar at the target) uses;
- **GEMMs** (FC ops of an nn.Linear): time x (card GEMM time of the layer's products at the
  target) / (at the source);
- **the rest**: time x (elements the layer reads and writes at the target / at the source) x
  (streaming bandwidth at the source / at the target).

Each op keeps a fixed part per call, the stack's floor (the median time per call of the point's
data-movement ops), which does not scale with the work; its calls scale with the layer's ATen
calls. The point's p50 moves by the change in profiled time, divided by the profile's coverage
where the profiler inflated it (profiled time over p50, when above 1): p50' = p50 + (T' - T) /
max(1, T / p50).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

import rechar.models as models
from rechar.analysis.ops import load_ops
from rechar.errors import UserError
from rechar.models.config import SCALES
from rechar.predict.census import census
from rechar.predict.machine import PLAIN, POOLED, Card
from rechar.measure.inputs import FALLBACK_CACHE_BYTES, PoolRule
from rechar.results.store import load_points, read_manifest, write_parquet

KIND = "prediction"
CLASSES = ("embedding", "fc", "other")  # the shares a prediction reports, by the ops' category
POINT_COLUMNS = [
    "kind", "run_id", "model", "backend", "batch", "source_scale", "target_scale", "source_threads", "target_threads",
    "source_machine", "target_machine", "target_table_bytes", "source_p50_us", "predicted_p50_us", "source_min_us",
    "predicted_min_us",
    *[f"share_{c}" for c in CLASSES], "source_gather_ns", "target_gather_ns", "profile_coverage",
]


@dataclasses.dataclass
class Target:
    """What to predict for: every field left None keeps the run's."""

    scale: str | None = None
    threads: int | None = None
    tables_rows: str | None = None  # "10x": every table 10 times its rows; "5000000": every table that many rows
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # per model, after the rest
    models: list[str] | None = None
    backends: list[str] | None = None
    batches: list[int] | None = None

    def validate(self) -> None:
        if self.scale is not None and self.scale not in SCALES:
            raise UserError(f"unknown scale {self.scale!r} (choose from {', '.join(SCALES)})")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be at least 1, got {self.threads}")
        if self.tables_rows is not None:
            _rows_rule(self.tables_rows)


def _rows_rule(text: str):
    """'10x' -> rows * 10; '5000000' -> 5000000 rows."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            factor = float(t[:-1])
            if factor > 0:
                return lambda rows: max(1, int(round(rows * factor)))
        else:
            value = int(t)
            if value > 0:
                return lambda rows: value
    except ValueError:
        pass
    raise UserError(f"bad --tables-rows {text!r}: give a factor such as 10x or a row count such as 5000000")


def target_config(name: str, run_config: dict, run_overrides: dict, target: Target, run_scale: str) -> models.ModelConfig:
    """The model's config at the target: the run's (at the target's scale, with the run's
    overrides), table rows changed by ``tables_rows``, then the target's own overrides."""
    if target.scale is None or target.scale == run_scale:
        config = models.resolve_config(name, "paper", run_config)
    else:
        config = models.resolve_config(name, target.scale, run_overrides)
    if target.tables_rows:
        rule = _rows_rule(target.tables_rows)
        changes = {}
        for f in dataclasses.fields(config):
            if f.metadata.get("role") == "rows":
                value = getattr(config, f.name)
                changes[f.name] = tuple(rule(v) for v in value) if isinstance(value, tuple) else rule(value)
        config = dataclasses.replace(config, **changes)
    if target.overrides.get(name):
        config = config.with_overrides(target.overrides[name], where=f"target config for {name}")
    return config


def _stack(backend: str) -> str:
    name = backend.partition("@")[0]
    return "ort" if name.startswith("ort") else "tf" if name.startswith("tf") else "torch" if name.startswith("torch") else name


def _pool_samples(config: models.ModelConfig, name: str, batch: int, streams, cache_bytes: int, rule: PoolRule,
                  mode: str) -> float:
    """Samples in the input pool rechar would draw for this config (rechar.measure.inputs)."""
    if mode == "replay":
        return float(batch)
    gathered = batch * sum(s.lookups * s.row_bytes for s in streams)
    input_bytes, tables = _sizes(name, json.dumps(config.to_dict(), sort_keys=True))
    return float(rule.size(gathered, input_bytes * batch, cache_bytes, tables) * batch)


@functools.lru_cache(maxsize=64)
def _sizes(name: str, config_json: str) -> tuple[int, int]:
    """(input bytes per sample, embedding-table bytes) of a config."""
    model = models.shell(name, models.resolve_config(name, "paper", json.loads(config_json)))
    input_bytes = sum(a.nbytes for a in model.make_inputs(1).values())
    return input_bytes, sum(t.weight.shape[0] * t.weight.shape[1] * t.weight.element_size() for t in model.embedding_tables())


@dataclasses.dataclass
class Side:
    """One side of a prediction (source or target): config, machine and threads."""

    config: models.ModelConfig
    card: Card
    threads: int
    pool_samples: float | None = None


def recost_point(name: str, batch: int, stack: str, ops: pd.DataFrame, p50_us: float, src: Side, tgt: Side,
                 ids: str, alpha: float, explain: list | None = None, min_us: float | None = None) -> dict[str, Any]:
    """Predicted p50 and class shares of one point (see the module docstring). ``ops``: the
    point's profile rows (native_op, op_category, category, layer, calls_per_iter,
    self_us_per_iter), averaged over rounds."""
    cs, ct = census(name, src.config, batch), census(name, tgt.config, batch)
    def gather_ns(side, c, kernel):
        return side.card.gather_ns(side.threads, c.streams, ids, alpha, side.pool_samples, kernel) if c.streams else {}

    g_src, g_tgt = gather_ns(src, cs, PLAIN), gather_ns(tgt, ct, PLAIN)
    pooled = {}  # PyTorch's embedding_bag sums rows as it gathers them: the pooled curve
    rows_src = _rows_per_table(cs, batch)
    rows_tgt = _rows_per_table(ct, batch)
    gemm_all_src = sum(src.card.gemm_us(src.threads, *g) for g in cs.work("", inclusive=True).gemms)
    gemm_all_tgt = sum(tgt.card.gemm_us(tgt.threads, *g) for g in ct.work("", inclusive=True).gemms)
    stream_ratio = src.card.stream_gbps(src.threads) / tgt.card.stream_gbps(tgt.threads)
    call_src, call_tgt = src.card.call_us(stack), tgt.card.call_us(stack)
    floor_ratio = call_tgt / call_src if call_src and call_tgt and src.card is not tgt.card else 1.0

    ops = same_work_median(ops, cs)
    per_call = ops["self_us_per_iter"] / ops["calls_per_iter"].where(ops["calls_per_iter"] > 0)
    movement = per_call[ops["op_category"] == "data-movement"].dropna()
    floor = float(movement.median()) if len(movement) else 0.0

    before = {c: 0.0 for c in CLASSES}
    after = {c: 0.0 for c in CLASSES}
    for op in ops.itertuples(index=False):
        t, calls = float(op.self_us_per_iter), float(op.calls_per_iter)
        fixed = min(t, calls * floor)
        var = t - fixed
        layer = op.layer if isinstance(op.layer, str) else ""
        ws, wt = cs.work(layer), ct.work(layer)
        call_ratio = wt.calls / ws.calls if ws.calls else 1.0
        table = cs.table(layer)
        if op.op_category == "embedding" and table is not None and table in g_src and table in g_tgt:
            gs, gt = g_src, g_tgt
            if "embedding_bag" in op.native_op:
                if not pooled:
                    pooled.update(src=gather_ns(src, cs, POOLED), tgt=gather_ns(tgt, ct, POOLED))
                gs, gt = pooled["src"], pooled["tgt"]
            ratio = (rows_tgt.get(table, 0) * gt[table]) / (rows_src[table] * gs[table])
            call_ratio = 1.0
        elif op.op_category == "fc":
            gs, gt = _linear_gemms(cs, layer), _linear_gemms(ct, layer)
            if gs:
                ratio = (sum(tgt.card.gemm_us(tgt.threads, *g) for g in gt)
                         / sum(src.card.gemm_us(src.threads, *g) for g in gs))
            else:  # an FC op no Linear claims (a fused op named after its activation): the model's mix
                ratio = gemm_all_tgt / gemm_all_src if gemm_all_src else 1.0
        else:
            ratio = (wt.elements / ws.elements if ws.elements else 1.0) * stream_ratio
        cls = op.category if op.category in CLASSES else "other"
        new = fixed * call_ratio * floor_ratio + var * ratio
        before[cls] += t
        after[cls] += new
        if explain is not None:
            explain.append({"native_op": op.native_op, "layer": layer, "class": cls, "source_us": t,
                            "fixed_us": fixed, "call_ratio": call_ratio, "work_ratio": ratio, "predicted_us": new})
    t_src, t_tgt = sum(before.values()), sum(after.values())
    coverage = t_src / p50_us if p50_us else math.nan
    call_delta = call_tgt - call_src if call_src and call_tgt and src.card is not tgt.card else 0.0
    predicted = p50_us + (t_tgt - t_src) / max(1.0, coverage) + call_delta
    # The same for the fastest timed call: on a busy machine, the figure least touched by neighbours.
    fastest = (min_us + (t_tgt - t_src) / max(1.0, t_src / min_us) + call_delta) if min_us else math.nan
    return {
        "source_p50_us": p50_us, "predicted_p50_us": predicted, "source_min_us": min_us or math.nan,
        "predicted_min_us": fastest,
        **{f"share_{c}": after[c] / t_tgt if t_tgt else math.nan for c in CLASSES},
        "source_gather_ns": g_src.get("", math.nan), "target_gather_ns": g_tgt.get("", math.nan),
        "profile_coverage": coverage,
    }


def same_work_median(ops: pd.DataFrame, c) -> pd.DataFrame:
    """Each op's time replaced by the median over the ops that do the same work: the same native
    op, calls and category in layers of equal work (identical tables: same id stream; identical
    FC layers: same products; other layers: same elements). A profile holds per-op totals, so a
    neighbour that stalled one op for milliseconds in one profiled call shows as that op alone
    costing more; seen here at tiny scale: two of DLRM-RMC3's ten identical tables at 160-240x
    the other eight's embedding_bag time."""
    def signature(op) -> tuple:
        layer = op.layer if isinstance(op.layer, str) else ""
        table = c.table(layer)
        if table is not None:
            work = tuple(sorted((s.rows, s.row_bytes, s.lookups) for s in c.streams if s.table == table))
            inner = layer[len(table):]
        else:
            w = c.work(layer)
            work, inner = (w.elements, tuple(w.gemms)), ""
        return op.native_op, op.op_category, op.category, op.calls_per_iter, inner, work

    keys = [signature(op) for op in ops.itertuples(index=False)]
    out = ops.copy()
    out["self_us_per_iter"] = out.groupby(pd.Series(keys, index=out.index).astype(str))["self_us_per_iter"].transform(
        "median")
    return out


def _rows_per_table(c, batch: int) -> dict[str, int]:
    rows: dict[str, int] = {}
    for s in c.streams:
        rows[s.table] = rows.get(s.table, 0) + s.lookups * batch
    return rows


def _linear_gemms(c, layer: str) -> list[tuple[int, int, int]]:
    """GEMMs of the Linear an FC op belongs to: its layer, or (TensorFlow and ONNX Runtime name a
    fused matmul + activation after the activation) the Linear just before it in its Sequential."""
    if c.is_linear(layer):
        return c.work(layer).gemms
    parent, _, index = layer.rpartition(".")
    if index.isdigit() and int(index) > 0:
        previous = f"{parent}.{int(index) - 1}" if parent else str(int(index) - 1)
        if c.is_linear(previous):
            return c.work(previous).gemms
    return []


def source_card_for(run_dir: Path, manifest: dict, target_card: Card, source_card: Card | None) -> Card:
    """The card of the machine the run was measured on: given, or the target card when it
    describes the same machine, or ``RUN/machine-card.json``."""
    if source_card is not None:
        return source_card
    host = manifest.get("host", {})
    same = all(host.get(k) == target_card.host.get(k) for k in ("hostname", "cpu", "logical_cores"))
    if same:
        return target_card
    own = Path(run_dir) / "machine-card.json"
    if own.exists():
        return Card.load(own)
    raise UserError(f"{run_dir} was measured on {host.get('hostname')} ({host.get('cpu')}), not on the target card's "
                    f"machine: give that machine's card with --source-card (rechar probe there), or put it at {own}")


def predict(run_dir: str | Path, target_card: Card, target: Target | None = None,
            source_card: Card | None = None) -> pd.DataFrame:
    """Predicted p50 and class shares of every profiled, timed point of a run (POINT_COLUMNS)."""
    target = target or Target()
    target.validate()
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    options = manifest.get("options", {})
    if "configs" not in manifest:
        raise UserError(f"{run_dir} is not a sweep run (no model configs)")
    src_card = source_card_for(run_dir, manifest, target_card, source_card)
    points = load_points(run_dir)
    points = points[points["status"] == "ok"]
    ops = load_ops(run_dir)
    if ops.empty:
        raise UserError(f"{run_dir} has no operator profiles: predictions need them (rechar profile {run_dir})")
    ops = (ops.groupby(["model", "backend", "batch", "native_op", "node", "layer", "op_category", "category"],
                       as_index=False, dropna=False)[["calls_per_iter", "self_us_per_iter"]].mean())
    src_threads = int(options.get("threads") or 1)
    tgt_threads = target.threads or src_threads
    run_scale = options.get("scale", "small")
    ids, alpha = options.get("ids", "uniform"), float(options.get("zipf_alpha", 1.05))
    rule = PoolRule(**options.get("pool_rule", {}))
    tgt_cache = options.get("cache_bytes") or target_card.host.get("llc_bytes") or FALLBACK_CACHE_BYTES
    mode = options.get("inputs", "fresh")
    chosen = target.models or sorted(set(points["model"]))
    unknown = set(chosen) - set(manifest["configs"])
    if unknown:
        raise UserError(f"{run_dir} has no model {sorted(unknown)[0]!r} (it has {', '.join(manifest['configs'])})")
    rows = []
    for name in chosen:
        src_config = models.resolve_config(name, "paper", manifest["configs"][name])
        tgt_config = target_config(name, manifest["configs"][name], options.get("overrides", {}).get(name, {}),
                                   target, run_scale)
        for p in points[points["model"] == name].itertuples(index=False):
            if (target.backends and p.backend not in target.backends) or (target.batches and p.batch not in target.batches):
                continue
            point_ops = ops[(ops["model"] == name) & (ops["backend"] == p.backend) & (ops["batch"] == p.batch)]
            if point_ops.empty or p.device != "cpu":
                continue
            batch = int(p.batch)
            ct = census(name, tgt_config, batch)
            src = Side(src_config, src_card, src_threads,
                       float(p.pool_batches) * batch if not pd.isna(p.pool_batches) else None)
            tgt = Side(tgt_config, target_card, tgt_threads,
                       _pool_samples(tgt_config, name, batch, ct.streams, int(tgt_cache), rule, mode) if ct.streams else None)
            result = recost_point(name, batch, _stack(p.backend), point_ops, float(p.p50_us), src, tgt, ids, alpha,
                                  min_us=None if pd.isna(p.min_us) else float(p.min_us))
            rows.append({
                "kind": KIND, "run_id": manifest["run_id"], "model": name, "backend": p.backend, "batch": batch,
                "source_scale": run_scale, "target_scale": target.scale or run_scale,
                "source_threads": src_threads, "target_threads": tgt_threads,
                "source_machine": src_card.label(), "target_machine": target_card.label(),
                "target_table_bytes": sum(s.rows * s.row_bytes for s in _distinct_tables(ct.streams)),
                **result,
            })
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def _distinct_tables(streams):
    seen = {}
    for s in streams:
        seen[s.table] = s if s.table not in seen or s.rows > seen[s.table].rows else seen[s.table]
    return seen.values()


def write_predictions(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(df, path)
    except OSError as e:
        raise UserError(f"cannot write predictions to {path}: {e.strerror}") from None
    return path


def format_predictions(df: pd.DataFrame) -> str:
    """The printed table: every figure is a prediction, and the header says so."""
    if df.empty:
        return "PREDICTED (not measured): no profiled points to predict"
    first = df.iloc[0]
    head = (f"PREDICTED p50 (not measured) for {first.target_machine}, scale {first.target_scale}, "
            f"{first.target_threads} thread(s); from run {first.run_id} measured at scale {first.source_scale}, "
            f"{first.source_threads} thread(s) on {first.source_machine}")
    view = pd.DataFrame({
        "model": df["model"], "backend": df["backend"], "batch": df["batch"],
        "measured p50 ms (source)": (df["source_p50_us"] / 1e3).round(3),
        "PREDICTED p50 ms": (df["predicted_p50_us"] / 1e3).round(3),
        **{f"{c} %": (df[f"share_{c}"] * 100).round(0) for c in CLASSES},
        "tables GB": (df["target_table_bytes"] / 1e9).round(3),
    })
    return head + "\n" + view.to_string(index=False)


# Validation: predict a measured run from another and compare.

def validate(source_run: str | Path, measured_run: str | Path, card: Card, kind: str | None = None,
             source_card: Card | None = None) -> pd.DataFrame:
    """Predict ``measured_run``'s points from ``source_run`` (its scale, threads and exact
    configs) and compare with what ``measured_run`` measured: one row per point with both p50s
    and the error (predicted / measured - 1)."""
    measured_manifest = read_manifest(Path(measured_run))
    mopts = measured_manifest.get("options", {})
    target = Target(scale=mopts.get("scale"), threads=mopts.get("threads"),
                    overrides={m: c for m, c in measured_manifest.get("configs", {}).items()})
    sopts = read_manifest(Path(source_run)).get("options", {})
    predicted = predict(source_run, card, target, source_card=source_card)
    measured = load_points(Path(measured_run))
    measured = measured[measured["status"] == "ok"][["model", "backend", "batch", "p50_us", "min_us", "others_cpu_share"]]
    measured = measured.rename(columns={"p50_us": "measured_p50_us", "min_us": "measured_min_us",
                                        "others_cpu_share": "measured_others_cpu_share"})
    merged = predicted.merge(measured, on=["model", "backend", "batch"])
    merged["error"] = merged["predicted_p50_us"] / merged["measured_p50_us"] - 1
    merged["min_error"] = merged["predicted_min_us"] / merged["measured_min_us"] - 1
    # The naive prediction, for reference: the source's p50 unchanged.
    merged["unchanged_error"] = merged["source_p50_us"] / merged["measured_p50_us"] - 1
    merged.insert(0, "validation", kind or f"{sopts.get('scale')} t{sopts.get('threads')} -> "
                                           f"{mopts.get('scale')} t{mopts.get('threads')}")
    return merged


def error_summary(v: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    by = by or ["validation"]
    g = v.assign(abs_error=v["error"].abs(), abs_unchanged=v["unchanged_error"].abs(),
                 abs_min_error=v["min_error"].abs()).groupby(by)
    return pd.DataFrame({
        "points": g.size(),
        "median_abs_error": g["abs_error"].median(), "worst_abs_error": g["abs_error"].max(),
        "within_15pct": g["abs_error"].apply(lambda s: float((s <= 0.15).mean())),
        "unchanged_median_abs_error": g["abs_unchanged"].median(),
        "fastest_call_median_abs_error": g["abs_min_error"].median(),
        "fastest_call_worst_abs_error": g["abs_min_error"].max(),
    }).reset_index()
