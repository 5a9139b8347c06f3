"""Input pools: the batches that a point's calls cycle through.

A recommendation server never sees the same ids twice in a row. Replaying one batch keeps the
embedding rows it gathers in the CPU caches after the first call, which made small-batch
latencies of the embedding-heavy models look up to 3x better than they are (and flipped the
cross-stack ranking). So each point draws a *pool* of batches from the run's id distribution
(each member from its own seed: ``RecModel.make_inputs(member=i)``), the backend places all of
them on its device before timing, and every pass over the point (parity gate, warm-up, timing,
profiling, counting) calls the model on the next batch of the pool, cycling.

The size rule: the fewest batches whose one pass gathers at least ``llc_multiple`` (4) times the
device's last-level cache in embedding rows, so that a batch's rows are evicted before the
batch comes round again (4 times the model's tables instead, where those are smaller than the
cache: no pool can evict them, and no server would either); at least 2 batches (consecutive calls always differ), at most
``max_batches`` (16,384: bounds the seconds spent building the pool and the framework objects it
holds), and no more input bytes than ``budget_bytes`` (1 GiB) unless that leaves fewer than 2.
Where a cap binds, the point's ``pool_gathered_bytes`` / ``cache_bytes`` says how far short of
the rule it fell. ``--inputs replay`` makes a pool of one batch: the cache-warm best case, kept as
an explicit what-if. With Zipf ids, hot rows stay cached by nature, which is the locality that
distribution exists to model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np

from rechar.models import RecModel
from rechar.models.layers import EmbeddingTable

INPUT_MODES = ("fresh", "replay")
#: assumed where the machine does not say (sysfs without cache entries)
FALLBACK_CACHE_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class PoolRule:
    llc_multiple: float = 4.0
    min_batches: int = 2
    max_batches: int = 16_384
    budget_bytes: int = 1 << 30

    def size(self, gathered_bytes_per_batch: int, input_bytes_per_batch: int, cache_bytes: int,
             table_bytes: int) -> int:
        """Batches in a fresh pool, by the rule in this module's docstring."""
        target = self.llc_multiple * min(cache_bytes, table_bytes)
        want = math.ceil(target / gathered_bytes_per_batch) if gathered_bytes_per_batch else 1
        affordable = self.budget_bytes // max(input_bytes_per_batch, 1)
        return max(self.min_batches, min(want, self.max_batches, affordable))


@dataclasses.dataclass
class InputPool:
    batches: list[dict[str, np.ndarray]]
    mode: str  # fresh | replay
    cache_bytes: int  # the cache the rule sized the pool against
    gathered_bytes: int  # embedding-row bytes that one pass over the pool gathers
    distinct_rows: int  # distinct embedding rows one pass touches, summed over tables
    hash: str  # of every batch, in order (for one batch: that batch's hash)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def first(self) -> dict[str, np.ndarray]:
        return self.batches[0]

    @property
    def last(self) -> dict[str, np.ndarray]:
        return self.batches[-1]

    def record(self) -> dict[str, Any]:
        """The pool's fields of a point's record."""
        return {"inputs": self.mode, "pool_batches": len(self.batches), "pool_gathered_bytes": self.gathered_bytes,
                "pool_distinct_rows": self.distinct_rows, "cache_bytes": self.cache_bytes, "input_hash": self.hash}


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """What decides a pool: the run's input options and the cache of the backend's device."""

    seed: int
    ids: str
    zipf_alpha: float
    mode: str
    cache_bytes: int
    rule: PoolRule = PoolRule()
    #: Bytes of an embedding row as the stack holds it over fp32's (a precision variant's int8 rows
    #: are ~1/4): pools are sized by the rows the stack actually gathers.
    row_scale: float = 1.0

    def size(self, model: RecModel, batch: int) -> int:
        if self.mode == "replay":
            return 1
        sample = self.member(model, batch, 0)
        tables = sum(t.weight.numel() * t.weight.element_size() for t in model.embedding_tables())
        return self.rule.size(round(gathered_bytes(model, sample) * self.row_scale), sum(a.nbytes for a in sample.values()),
                              self.cache_bytes, round(tables * self.row_scale))

    def member(self, model: RecModel, batch: int, index: int) -> dict[str, np.ndarray]:
        return model.make_inputs(batch, seed=self.seed, ids=self.ids, zipf_alpha=self.zipf_alpha, member=index)

    def ends(self, model: RecModel, batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The first and the last batch of the pool, without making the rest (for the parity gate's
        reference outputs, computed while the model's weights are still loaded)."""
        n = self.size(model, batch)
        return self.member(model, batch, 0), self.member(model, batch, n - 1)

    def make(self, model: RecModel, batch: int) -> InputPool:
        batches = [self.member(model, batch, i) for i in range(self.size(model, batch))]
        rows = {path: [] for path in row_bytes(model)}
        for inputs in batches:
            for path, ids in model.lookups(inputs).items():
                rows[path].append(ids.ravel())
        distinct = sum(np.unique(np.concatenate(parts)).size for parts in rows.values() if parts)
        return InputPool(batches, self.mode, self.cache_bytes,
                         round(gathered_bytes(model, batches[0]) * self.row_scale) * len(batches), distinct, pool_hash(batches))


def row_bytes(model: RecModel) -> dict[str, int]:
    """Bytes of one row of each embedding table, keyed by module path."""
    return {path: m.weight.shape[1] * m.weight.element_size()
            for path, m in model.named_modules() if isinstance(m, EmbeddingTable)}


def gathered_bytes(model: RecModel, inputs: dict[str, np.ndarray]) -> int:
    """Embedding-row bytes that one call on ``inputs`` gathers."""
    sizes = row_bytes(model)
    return sum(ids.size * sizes[path] for path, ids in model.lookups(inputs).items())


def pool_hash(batches: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for inputs in batches:
        for name, array in inputs.items():
            h.update(name.encode())
            h.update(str(array.dtype).encode() + str(array.shape).encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]
