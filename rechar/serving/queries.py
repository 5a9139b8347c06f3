"""Queries: how many items each carries, the items themselves, and how a policy splits them.

A query is one LoadGen sample: a user request to rank N candidate items. Sizes come from a
spec (``--query-sizes``), clipped to [1, max_query] and drawn from the run's seed; every query
carries its own ids and features (``RecModel.make_inputs`` with the query's index as pool
member), drawn from the run's id distribution before the test starts. LoadGen picks queries
from this pool at random; the pool is sized like the sweep's input pools (rechar.measure.inputs):
enough queries that one pass gathers four times the last-level cache in embedding rows, at
least 64 and at most 4,096 of them, within 512 MiB of inputs.

A batching policy splits a query into sub-batches of at most ``batch`` items (``None``: the
query is one batch). Stacks with static shapes (``Backend.static_shapes``: a compiled artefact
per batch size) get every sub-batch padded to a fixed bucket, as a server of such a stack
does: ``batch`` items for a split policy, the next power of two for whole queries.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from rechar.errors import UserError
from rechar.models import RecModel
from rechar.measure.inputs import PoolRule, gathered_bytes, pool_hash

#: The query pool's size rule (see the module docstring).
QUERY_POOL_RULE = PoolRule(llc_multiple=4.0, min_batches=64, max_batches=4096, budget_bytes=512 << 20)
QUERY_SIZE_KINDS = ("fixed", "lognormal", "normal", "file")
#: Named query-size distributions, each a list drawn from uniformly (inverse transform sampling
#: of a quantile table). ``mlperf-dlrm``: MLPerf Inference's DLRM-v2 (and DLRM-v1) samples per
#: query, the 5%-step quantiles in mlcommons/inference recommendation/dlrm_v2/pytorch/tools/
#: dist_quantile.txt (100-700, 60% at 200, mean 270), which its dataset draws from the same way.
QUERY_SIZE_PRESETS: dict[str, tuple[int, ...]] = {
    "mlperf-dlrm": (100, 100, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 300, 300, 400, 500, 600,
                    700),
}


@dataclasses.dataclass(frozen=True)
class QuerySizes:
    """A query-size distribution: ``fixed:N``, ``lognormal:MU,SIGMA`` (numpy's mean and sigma of
    the log), ``normal:MEAN,STD``, ``file:PATH`` (one size per line, drawn from uniformly) or a
    preset's name (QUERY_SIZE_PRESETS, drawn from the same way)."""

    spec: str
    max_query: int

    def __post_init__(self):
        if self.max_query < 1:
            raise UserError(f"--max-query must be at least 1, got {self.max_query}")
        self._parse()

    def _parse(self) -> tuple[str, list[float]]:
        if self.spec in QUERY_SIZE_PRESETS:
            return "file", [float(v) for v in QUERY_SIZE_PRESETS[self.spec]]
        kind, _, args = self.spec.partition(":")
        if kind not in QUERY_SIZE_KINDS or not args:
            raise UserError(f"bad query sizes {self.spec!r}: use fixed:N, lognormal:MU,SIGMA, normal:MEAN,STD, "
                            f"file:PATH or a preset ({', '.join(QUERY_SIZE_PRESETS)})")
        if kind == "file":
            return kind, self._file_sizes(args)
        try:
            values = [float(v) for v in args.split(",")]
        except ValueError:
            raise UserError(f"bad query sizes {self.spec!r}: {args!r} is not a list of numbers") from None
        want = {"fixed": 1, "lognormal": 2, "normal": 2}[kind]
        if len(values) != want:
            raise UserError(f"bad query sizes {self.spec!r}: {kind} takes {want} number(s)")
        if kind == "fixed" and (values[0] < 1 or values[0] != int(values[0])):
            raise UserError(f"bad query sizes {self.spec!r}: a fixed size must be a positive integer")
        if kind in ("lognormal", "normal") and values[1] < 0:
            raise UserError(f"bad query sizes {self.spec!r}: the spread must not be negative")
        if kind == "normal" and values[0] < 1:
            raise UserError(f"bad query sizes {self.spec!r}: the mean must be at least 1")
        return kind, values

    @staticmethod
    def _file_sizes(path: str) -> list[float]:
        try:
            lines = Path(path).read_text().split()
        except OSError as e:
            raise UserError(f"cannot read query sizes from {path}: {e.strerror}") from None
        try:
            sizes = [int(v) for v in lines]
        except ValueError:
            raise UserError(f"{path}: query sizes must be integers, one per line") from None
        if not sizes or min(sizes) < 1:
            raise UserError(f"{path}: needs at least one size, every size at least 1")
        return [float(v) for v in sizes]

    def sample(self, count: int, seed: int) -> np.ndarray:
        """``count`` sizes, int64, in [1, max_query]; the same for the same seed."""
        kind, values = self._parse()
        rng = np.random.default_rng([seed, 0x5E12])
        if kind == "fixed":
            raw = np.full(count, values[0])
        elif kind == "lognormal":
            raw = rng.lognormal(values[0], values[1], count)
        elif kind == "normal":
            raw = rng.normal(values[0], values[1], count)
        else:
            raw = rng.choice(np.asarray(values), count)
        return np.clip(np.rint(raw), 1, self.max_query).astype(np.int64)


@dataclasses.dataclass
class QueryPool:
    queries: list[dict[str, np.ndarray]]  # one input dict per query, its items along axis 0
    gathered_bytes: int  # embedding-row bytes one pass over the pool gathers
    hash: str

    @property
    def sizes(self) -> np.ndarray:
        return np.array([len(next(iter(q.values()))) for q in self.queries], dtype=np.int64)

    def record(self) -> dict:
        sizes = self.sizes
        return {"pool_queries": len(self.queries), "mean_query_items": float(sizes.mean()),
                "p99_query_items": float(np.percentile(sizes, 99)), "pool_gathered_bytes": self.gathered_bytes,
                "input_hash": self.hash}


def make_pool(model: RecModel, sizes: QuerySizes, seed: int, ids: str, zipf_alpha: float, cache_bytes: int,
              rule: PoolRule = QUERY_POOL_RULE) -> QueryPool:
    """The queries of a test, sized by ``rule`` against ``cache_bytes`` (module docstring)."""
    probe = sizes.sample(rule.max_batches, seed)
    mean_items = max(1, int(round(probe.mean())))
    item = model.make_inputs(mean_items, seed=seed, ids=ids, zipf_alpha=zipf_alpha)
    tables = sum(t.weight.numel() * t.weight.element_size() for t in model.embedding_tables())
    count = rule.size(gathered_bytes(model, item), sum(a.nbytes for a in item.values()), cache_bytes, tables)
    queries = [model.make_inputs(int(n), seed=seed, ids=ids, zipf_alpha=zipf_alpha, member=1 + i)
               for i, n in enumerate(probe[:count])]
    return QueryPool(queries, sum(gathered_bytes(model, q) for q in queries), pool_hash(queries))


@dataclasses.dataclass(frozen=True)
class Policy:
    """How queries are served: split into sub-batches of at most ``batch`` items (None: whole
    queries), run by ``workers`` parallel executors."""

    batch: int | None
    workers: int

    @property
    def label(self) -> str:
        return f"{'query' if self.batch is None else f'b{self.batch}'}x{self.workers}"

    def split(self, items: int) -> list[tuple[int, int]]:
        """[start, stop) of each sub-batch of a query of ``items`` items."""
        step = self.batch or items
        return [(i, min(i + step, items)) for i in range(0, items, step)]

    def bucket(self, items: int) -> int:
        """The padded size of a sub-batch of ``items`` items on a static-shape stack."""
        return self.batch if self.batch is not None else 1 << math.ceil(math.log2(items))


def parse_batches(text: str) -> list[int | None]:
    """``--batch``: comma-separated sizes and/or ``query``."""
    out: list[int | None] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "query":
            out.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"bad --batch {text!r}: {part!r} is neither a positive integer nor 'query'") from None
        if value < 1:
            raise UserError(f"bad --batch {text!r}: batch sizes must be positive")
        out.append(value)
    if not out:
        raise UserError("--batch needs at least one size or 'query'")
    return list(dict.fromkeys(out))


def sub_batches(query: dict[str, np.ndarray], policy: Policy, pad: bool) -> list[tuple[dict[str, np.ndarray], int]]:
    """The sub-batches of one query under ``policy`` and how many real items each holds; with
    ``pad``, each is padded to its bucket by repeating its last item."""
    items = len(next(iter(query.values())))
    out = []
    for start, stop in policy.split(items):
        part = {k: v[start:stop] for k, v in query.items()}
        real = stop - start
        if pad and policy.bucket(real) > real:
            index = np.minimum(np.arange(policy.bucket(real)), real - 1)
            part = {k: np.ascontiguousarray(v[index]) for k, v in part.items()}
        out.append((part, real))
    return out
