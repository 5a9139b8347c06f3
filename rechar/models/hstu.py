"""HSTU: the Hierarchical Sequential Transduction Unit of Meta's generative recommenders (Zhai et
al., "Actions Speak Louder than Words", ICML 2024), as the generative-recommenders reference
implements it (``modeling/sequential/hstu.py``; ML-1M config ``hstu-sampled-softmax-n128-large-final.gin``).
MLPerf Inference adopted HSTU as DLRM-v3; its shape is the config file ``configs/hstu-dlrmv3.toml``.

Each layer, as in the reference (padded form; the reference runs jagged tensors, which only skips
padded steps that the causal mask keeps out of every valid step anyway):

    u, v, q, k = split(SiLU(LN(x) W))                         one projection, no bias
    A = SiLU(q k^T + rab_pos + rab_time) / N * causal          pointwise attention, per head, no softmax
    x = x + Linear(u * LN(A v))

where N is the (fixed) history length, rab_pos[i, j] a learned weight per offset j - i, and
rab_time[i, j] a learned weight per bucket of the time between step j and step i + 1,
floor(ln(max(|dt|, 1)) / 0.301) clamped to [0, 128] (computed exactly: see time_buckets). LN has
no learned scale (eps 1e-6). The bucket matrix depends only on the timestamps, so it is computed
once, not in every layer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rechar.errors import UserError
from rechar.models.base import InputGenerator
from rechar.models.config import ModelConfig, rows, seq
from rechar.models.layers import EmbeddingTable
from rechar.models.sequential import (CandidateScoring, SequenceInput, SequentialRecModel, generate_candidates,
                                      generate_history)

LN_EPS = 1e-6
#: The reference's time bucketing: ln(|dt|) / 0.301 (as written there), clamped to 128 buckets.
TIME_BUCKETS = 128
TIME_BUCKET_DIVISOR = 0.301


@dataclasses.dataclass(frozen=True)
class HSTUConfig(ModelConfig):
    item_rows: int = rows(3_953)  # MovieLens-1M: item ids 1..3952, 0 pads
    embedding_dim: int = 50
    seq_len: int = seq(200)  # history length N (fixed in the exported graph)
    blocks: int = 8
    heads: int = 2
    qk_dim: int = 25  # per head
    v_dim: int = 25  # per head ("linear_dim" in the reference)
    candidates: int = 100  # K items scored per request

    def validate(self) -> None:
        super().validate()
        if self.item_rows < 2:
            raise UserError("item_rows must be at least 2 (id 0 is padding)")


def _bucket_thresholds() -> list[int]:
    """T[k]: the smallest gap in bucket k or above, ceil(exp(0.301 k)), k = 0..128 (exact in float64
    up to k = 122, 2^53; no real gap comes near), and T[129] = int64 max (no bucket 129)."""
    return [1] + [math.ceil(math.exp(TIME_BUCKET_DIVISOR * k)) for k in range(1, TIME_BUCKETS + 1)] + [2**63 - 1]


def time_buckets(timestamps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """[B, N] int64 seconds -> [B, N, N] bucket of ts[i + 1] - ts[j] (ts[N] := ts[N - 1]),
    floor(ln(max(|dt|, 1)) / 0.301) clamped to [0, 128].

    The float estimate alone differs between stacks: a gap within a rounding error of a bucket
    boundary lands on either side depending on the log implementation (and always in bf16), and
    a bucket is a different bias, not a rounding error. So the estimate, never off by more than
    one bucket, is corrected against the integer thresholds: every stack gets the same buckets."""
    following = torch.cat([timestamps[:, 1:], timestamps[:, -1:]], dim=1)
    dt = (following.unsqueeze(2) - timestamps.unsqueeze(1)).abs().clamp(min=1)
    estimate = (torch.log(dt.to(torch.float32)) / TIME_BUCKET_DIVISOR).to(torch.int64).clamp(min=0, max=TIME_BUCKETS)
    up = (dt >= thresholds[estimate + 1]).to(torch.int64)
    down = (dt < thresholds[estimate]).to(torch.int64)
    return estimate + up - down


class TimeBuckets(nn.Module):
    """A module so that profiles attribute the bucketing to the attention bias it feeds."""

    def __init__(self):
        super().__init__()
        self.register_buffer("thresholds", torch.tensor(_bucket_thresholds(), dtype=torch.int64), persistent=False)

    def forward(self, timestamps: torch.Tensor) -> torch.Tensor:
        return time_buckets(timestamps, self.thresholds)


class RelativeBias(nn.Module):
    """rab[b, i, j] = w_pos[j - i + N - 1] + w_time[bucket[b, i, j]]."""

    def __init__(self, seq_len: int):
        super().__init__()
        self.position_weights = nn.Parameter(torch.empty(2 * seq_len - 1))
        self.time_weights = nn.Parameter(torch.empty(TIME_BUCKETS + 1))
        if self.position_weights.device.type != "meta":
            nn.init.normal_(self.position_weights, std=0.02)
            nn.init.normal_(self.time_weights, std=0.02)
        i = torch.arange(seq_len)
        self.register_buffer("offset_index", i[None, :] - i[:, None] + seq_len - 1, persistent=False)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.position_weights[self.offset_index] + self.time_weights[buckets]


class PointwiseAttention(nn.Module):
    """SiLU(q k^T + bias) / N, causal, times v; per head. q, k [B, N, H*dqk], v [B, N, H*dv]."""

    def __init__(self, seq_len: int, heads: int):
        super().__init__()
        self.heads = heads
        self.bias = RelativeBias(seq_len)
        self.register_buffer("causal", torch.ones(seq_len, seq_len).tril(), persistent=False)

    def forward(self, q, k, v, buckets):
        B, N, _ = q.shape
        H = self.heads
        q, k, v = (t.reshape(B, N, H, -1).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        scores = torch.matmul(q, k.transpose(2, 3)) + self.bias(buckets).unsqueeze(1)
        weights = F.silu(scores) / N * self.causal
        return torch.matmul(weights, v).transpose(1, 2).reshape(B, N, -1)


class HSTULayer(nn.Module):
    def __init__(self, dim: int, seq_len: int, heads: int, qk_dim: int, v_dim: int):
        super().__init__()
        self.splits = [v_dim * heads, v_dim * heads, qk_dim * heads, qk_dim * heads]  # u, v, q, k
        self.input_norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.uvqk = nn.Linear(dim, sum(self.splits), bias=False)
        self.attention = PointwiseAttention(seq_len, heads)
        self.output_norm = nn.LayerNorm(v_dim * heads, eps=LN_EPS, elementwise_affine=False)
        self.output = nn.Linear(v_dim * heads, dim)
        if self.uvqk.weight.device.type != "meta":  # the reference's initialisation
            nn.init.normal_(self.uvqk.weight, std=0.02)
            nn.init.xavier_uniform_(self.output.weight)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        u, v, q, k = torch.split(F.silu(self.uvqk(self.input_norm(x))), self.splits, dim=-1)
        gated = u * self.output_norm(self.attention(q, k, v, buckets))
        # on [B*N, H*dv] rows, so that the output layer exports as Gemm with its own weights
        return self.output(gated.reshape(-1, gated.shape[-1])).reshape(x.shape) + x


class HSTU(SequentialRecModel):
    input_names = ("history", "timestamps", "candidates")
    output_names = ("scores",)

    def __init__(self, name: str, config: HSTUConfig):
        super().__init__(name, config)
        c = config
        self.item_emb = EmbeddingTable(c.item_rows, c.embedding_dim, lookups=c.seq_len + c.candidates)
        self.input = SequenceInput(c.seq_len, c.embedding_dim)
        self.layers = nn.ModuleList(
            HSTULayer(c.embedding_dim, c.seq_len, c.heads, c.qk_dim, c.v_dim) for _ in range(c.blocks))
        self.time_buckets = TimeBuckets()
        self.scoring = CandidateScoring()

    def forward(self, history: torch.Tensor, timestamps: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        x, valid = self.input(history, self.item_emb(history))
        buckets = self.time_buckets(timestamps)
        for layer in self.layers:
            x = layer(x, buckets)
        return self.scoring(x, valid, self.item_emb(candidates))

    def generate(self, gen: InputGenerator):
        c = self.config
        history, mask = generate_history(gen, c.item_rows, c.seq_len)
        # Increasing action times (seconds), a minute to a week apart; padded steps hold 0, as in
        # the reference's padded batches.
        gaps = gen.rng.integers(60, 7 * 86_400, size=(gen.batch, c.seq_len), dtype=np.int64)
        start = gen.rng.integers(1_000_000_000, 1_100_000_000, size=(gen.batch, 1), dtype=np.int64)
        timestamps = np.where(mask > 0, start + np.cumsum(gaps, axis=1), 0)
        return {"history": history, "timestamps": timestamps,
                "candidates": generate_candidates(gen, c.item_rows, c.candidates)}

    def fixed_dims(self) -> dict[str, int]:
        return {"seq_len": self.config.seq_len, "candidates": self.config.candidates}
