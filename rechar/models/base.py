"""The interface every model implements, and the deterministic synthetic-input generator."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from rechar.errors import UserError
from rechar.models.calibration import LogitLayer
from rechar.models.config import ModelConfig
from rechar.models.layers import EmbeddingTable

ID_DISTRIBUTIONS = ("uniform", "zipf")
DEFAULT_ZIPF_ALPHA = 1.05


class InputGenerator:
    """Synthetic inputs: dense features uniform in [0, 1); ids uniform over the table (as in the
    study's reference code) or Zipf-distributed, since real traffic has locality and cache
    behaviour depends on it. Deterministic given (seed, batch, member): ``member`` numbers the
    batches of an input pool (rechar.measure.inputs), each drawn independently, so that any
    member can be made without the others; member 0 is the batch that (seed, batch) always gave."""

    def __init__(self, seed: int, batch: int, ids: str = "uniform", zipf_alpha: float = DEFAULT_ZIPF_ALPHA,
                 member: int = 0):
        if ids not in ID_DISTRIBUTIONS:
            raise UserError(f"unknown id distribution {ids!r} (choose from {', '.join(ID_DISTRIBUTIONS)})")
        if ids == "zipf" and not zipf_alpha > 0:
            raise UserError(f"Zipf exponent must be positive, got {zipf_alpha}")
        self.rng = np.random.default_rng([seed, batch] if member == 0 else [seed, batch, member])
        self.batch = batch
        self.distribution = ids
        self.zipf_alpha = zipf_alpha

    def dense(self, features: int) -> np.ndarray:
        return self.rng.random((self.batch, features), dtype=np.float32)

    def ids(self, rows: int, *shape: int) -> np.ndarray:
        """int64 ids in [0, rows), shape [batch, *shape]."""
        size = (self.batch, *shape)
        if self.distribution == "uniform":
            return self.rng.integers(0, rows, size=size, dtype=np.int64)
        ranks = np.searchsorted(_zipf_cdf(rows, self.zipf_alpha), self.rng.random(size))
        ranks = np.minimum(ranks, rows - 1)
        # Scatter popular ranks over the table (a fixed bijection of [0, rows)), so that hot rows
        # are not all neighbours in memory, as they would not be in a trained model.
        return (ranks * _coprime_stride(rows)) % rows

    def mask(self, length: int) -> np.ndarray:
        """float32 0/1 padding mask [batch, length]; each sample's valid length uniform in [1, length]."""
        valid = self.rng.integers(1, length + 1, size=(self.batch, 1))
        return (np.arange(length)[None, :] < valid).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _zipf_cdf(rows: int, alpha: float) -> np.ndarray:
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _coprime_stride(rows: int) -> int:
    stride = 2_654_435_761 % rows or 1  # Knuth's multiplicative-hash constant
    while np.gcd(stride, rows) != 1:
        stride += 1
    return stride


class RecModel(nn.Module):
    """A recommendation model: a torch module plus what rechar needs to feed and export it."""

    input_names: ClassVar[tuple[str, ...]]
    output_names: ClassVar[tuple[str, ...]] = ("prediction",)
    #: What the output is: per-column sigmoid probabilities, softmax probabilities over the last
    #: axis, or raw scores; the gates compare outputs as logits (rechar.models.calibration).
    output_kind: ClassVar[str] = "sigmoid"

    def __init__(self, name: str, config: ModelConfig):
        super().__init__()
        self.name = name
        self.config = config
        #: the output calibration applied by ``rechar.models.get`` (None: not calibrated)
        self.calibration: dict[str, Any] | None = None

    def generate(self, gen: InputGenerator) -> dict[str, np.ndarray]:
        """Inputs for one batch, keyed by input name, in ``input_names`` order."""
        raise NotImplementedError

    def make_inputs(
        self, batch: int, seed: int = 0, ids: str = "uniform", zipf_alpha: float = DEFAULT_ZIPF_ALPHA, member: int = 0
    ) -> dict[str, np.ndarray]:
        if batch < 1:
            raise UserError(f"batch size must be a positive integer, got {batch}")
        inputs = self.generate(InputGenerator(seed, batch, ids, zipf_alpha, member))
        assert tuple(inputs) == self.input_names, (tuple(inputs), self.input_names)
        return inputs

    def lookups(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ids each embedding table gathers for ``inputs``, keyed by the table's module path
        (padded sequence steps included: the gather reads them). Each model says how its inputs
        feed its tables; a test checks this against the ids the tables actually receive."""
        raise NotImplementedError

    def logit_layer(self) -> LogitLayer | None:
        """The parameters the output logits are linear in and each logit's bias, for calibrating
        the outputs' spread (rechar.models.calibration); None: not calibrated."""
        return None

    def fixed_dims(self) -> dict[str, int]:
        """Dimensions other than batch that the exported graph fixes (e.g. a sequence length)."""
        return {}

    def set_export_form(self, on: bool) -> None:
        """Switch embedding lookups between eager form (fused embedding_bag) and ONNX form."""
        for module in self.modules():
            if isinstance(module, EmbeddingTable):
                module.export_form = on

    def embedding_tables(self) -> list[EmbeddingTable]:
        return [m for m in self.modules() if isinstance(m, EmbeddingTable)]

    @torch.inference_mode()
    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Eager forward on numpy inputs; the reference every other backend is compared with."""
        return self(*(torch.from_numpy(inputs[n]) for n in self.input_names)).numpy()
