"""Building blocks shared by the eight models.

Embedding lookups have two forms of the same math. Eager PyTorch runs the fused
``embedding_bag`` kernel (fast, no B x L x D intermediate). The exported ONNX graph must be
Gather + ReduceSum instead: ``nn.EmbeddingBag`` always exports as an ONNX ``Loop``, which ran
12-40x slower in ONNX Runtime and which no ONNX->TensorFlow route handles. ``RecModel.export_form``
switches every table at once; the exporter turns it on only while tracing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FLOAT_BYTES = 4


def mlp(in_features: int, sizes: Sequence[int], last_activation: bool = True) -> nn.Sequential:
    """Linear layers with ReLU after each hidden layer (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, out_features in enumerate(sizes):
        layers.append(nn.Linear(in_features, out_features))
        if i < len(sizes) - 1 or last_activation:
            layers.append(nn.ReLU())
        in_features = out_features
    return nn.Sequential(*layers)


class EmbeddingTable(nn.Module):
    """One embedding table, looked up ``lookups`` times per sample.

    ``forward(ids)`` takes ids of shape [B] (one lookup: returns [B, D]), [B, L] with ``pooled``
    (sum of L rows: returns [B, D]) or [B, L] without (a sequence: returns [B, L, D]).
    """

    def __init__(self, num_rows: int, dim: int, lookups: int, pooled: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_rows, dim))
        # Uniform in +-sqrt(1/dim): rows of a trained model's magnitude, whatever the table's size.
        # (DLRM's reference code draws +-sqrt(1/rows): at 100,000 rows and more its rows are so
        # small that the outputs barely depend on the ids, and no check can tell a wrong table from
        # the right one; see rechar.models.calibration.)
        bound = math.sqrt(1.0 / dim)
        if self.weight.device.type != "meta":
            nn.init.uniform_(self.weight, -bound, bound)
        self.lookups = lookups  # rows read per sample; used for embedding-bytes-read figures
        self.pooled = pooled
        self.export_form = False

    @property
    def bytes_read_per_sample(self) -> int:
        return self.lookups * self.weight.shape[1] * self.weight.element_size()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.pooled:
            return F.embedding(ids, self.weight)
        if self.export_form:
            return F.embedding(ids, self.weight).sum(dim=1)  # ONNX: Gather + ReduceSum
        return F.embedding_bag(ids, self.weight, mode="sum")  # fused kernel, fixed-length bags

    def extra_repr(self) -> str:
        rows, dim = self.weight.shape
        return f"{rows}, {dim}, lookups={self.lookups}, pooled={self.pooled}"


class PooledEmbeddings(nn.Module):
    """T tables with L sum-pooled lookups each; ids [B, T, L] -> list of T tensors [B, D]."""

    def __init__(self, table_rows: Sequence[int], dim: int, lookups: int):
        super().__init__()
        self.tables = nn.ModuleList(EmbeddingTable(r, dim, lookups, pooled=True) for r in table_rows)

    def forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [table(ids[:, t, :]) for t, table in enumerate(self.tables)]


class SingleEmbeddings(nn.Module):
    """T tables with one lookup each; ids [B, T] -> list of T tensors [B, D]."""

    def __init__(self, table_rows: Sequence[int], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(EmbeddingTable(r, dim, lookups=1) for r in table_rows)

    def forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [table(ids[:, t]) for t, table in enumerate(self.tables)]


class Wide(nn.Module):
    """The wide (linear) part of Wide & Deep: a linear model over the dense features plus a
    learned weight per sparse id (a 1-wide embedding lookup per table). Output [B, outputs]."""

    def __init__(self, dense_features: int, table_rows: Sequence[int], outputs: int = 1):
        super().__init__()
        self.dense = nn.Linear(dense_features, outputs)
        self.sparse = SingleEmbeddings(table_rows, outputs)

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logit = self.dense(dense)
        for term in self.sparse(ids):
            logit = logit + term
        return logit


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask`` (0/1 floats) is 1; padded steps get weight 0.

    Written with arithmetic rather than masked_fill so that it exports as plain Sub/Mul/Add.
    """
    return torch.softmax(scores + (mask - 1.0) * 1e9, dim=-1)


class AUGRUCell(nn.Module):
    """GRU with attentional update gate (DIEN's interest evolution layer).

    At step t with attention score a_t: u' = a_t * u, h_t = (1 - u') h_{t-1} + u' h~_t.
    The input projections of all steps are one matmul; the recurrence is a Python loop, which
    the ONNX exporters unroll, fixing the sequence length in the exported graph.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_proj = nn.Linear(input_size, 3 * hidden_size)  # gates r, u, n
        self.hidden_proj = nn.Linear(hidden_size, 3 * hidden_size)

    def forward(self, inputs: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """inputs [B, S, I], attention [B, S] -> final hidden state [B, H]."""
        H = self.hidden_size
        x_gates = self.input_proj(inputs)
        h = inputs.new_zeros(inputs.shape[0], H)
        for t in range(inputs.shape[1]):
            x = x_gates[:, t]
            g = self.hidden_proj(h)
            r = torch.sigmoid(x[:, :H] + g[:, :H])
            u = torch.sigmoid(x[:, H : 2 * H] + g[:, H : 2 * H]) * attention[:, t : t + 1]
            n = torch.tanh(x[:, 2 * H :] + r * g[:, 2 * H :])
            h = (1.0 - u) * h + u * n
        return h
