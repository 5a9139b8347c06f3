"""SASRec: self-attentive sequential recommendation (Kang and McAuley, ICDM 2018), as the
generative-recommenders reference implements it (``modeling/sequential/sasrec.py`` with its ML-1M
config ``sasrec-sampled-softmax-n128-final.gin``): causal softmax self-attention blocks over the
user's history, then K candidate items scored against the state at the last valid step.

Each block, as in the reference: q = LN(x); x = FFN(LN(q + MHA(q, x, x))) with FFN(y) = y +
W2 relu(W1 y); padded steps zeroed. LN has no learned scale (the reference calls F.layer_norm
without weights, eps 1e-8). The reference's FFN is two 1x1 Conv1d layers: the same map as two
Linear layers, which is what this is. Dropout is off at inference and omitted.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from rechar.errors import UserError
from rechar.models.base import InputGenerator
from rechar.models.config import ModelConfig, rows, seq
from rechar.models.layers import EmbeddingTable
from rechar.models.sequential import (CandidateScoring, SequenceInput, SequentialRecModel, generate_candidates,
                                      generate_history)

LN_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class SASRecConfig(ModelConfig):
    item_rows: int = rows(3_953)  # MovieLens-1M: item ids 1..3952, 0 pads
    embedding_dim: int = 50
    seq_len: int = seq(200)  # history length (fixed in the exported graph)
    blocks: int = 2
    heads: int = 1
    ffn_hidden: int = 50
    candidates: int = 100  # K items scored per request (ranking a candidate list)

    def validate(self) -> None:
        super().validate()
        if self.embedding_dim % self.heads:
            raise UserError(f"embedding_dim {self.embedding_dim} is not divisible by heads {self.heads}")
        if self.item_rows < 2:
            raise UserError("item_rows must be at least 2 (id 0 is padding)")


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # position-wise: on [B*S, D] rows, so that the layers export as Gemm with their own weights
        rows = x.reshape(-1, x.shape[-1])
        return (self.outer(torch.relu(self.inner(rows))) + rows).reshape(x.shape)


class CausalSelfAttention(nn.Module):
    """Multi-head softmax attention, the map of torch.nn.MultiheadAttention (which the reference
    uses; a test compares the two on shared weights), written out so that each projection is an
    nn.Linear that a profile attributes: query [B, S, D] attends to keys/values [B, S, D];
    ``mask`` [S, S] is 0 where step i may attend to step j and -1e9 where it may not."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, S, D = query.shape
        H = self.heads
        q, k, v = (t.reshape(B, S, H, D // H).transpose(1, 2) for t in
                   (self.query(query), self.key(keys), self.value(keys)))  # [B, H, S, d]
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(D // H) + mask
        attended = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(attended.transpose(1, 2).reshape(B, S, D))


class SASRecBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_hidden: int):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.attention = CausalSelfAttention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.ffn = FeedForward(dim, ffn_hidden)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q = self.query_norm(x)
        attended = self.attention(q, x, causal)
        return self.ffn(self.ffn_norm(q + attended)) * valid


class SASRec(SequentialRecModel):
    input_names = ("history", "candidates")
    output_names = ("scores",)

    def __init__(self, name: str, config: SASRecConfig):
        super().__init__(name, config)
        c = config
        self.item_emb = EmbeddingTable(c.item_rows, c.embedding_dim, lookups=c.seq_len + c.candidates)
        self.input = SequenceInput(c.seq_len, c.embedding_dim)
        self.blocks = nn.ModuleList(SASRecBlock(c.embedding_dim, c.heads, c.ffn_hidden) for _ in range(c.blocks))
        self.scoring = CandidateScoring()
        # -1e9 above the diagonal: step i does not attend to later steps
        self.register_buffer("causal", torch.full((c.seq_len, c.seq_len), -1e9).triu(1), persistent=False)
        if self.causal.device.type != "meta":
            for block in self.blocks:  # the reference's initialisation of its attention and FFN
                for p in block.parameters():
                    if p.dim() > 1:
                        nn.init.xavier_normal_(p)

    def forward(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        x, valid = self.input(history, self.item_emb(history))
        for block in self.blocks:
            x = block(x, self.causal, valid)
        return self.scoring(x, valid, self.item_emb(candidates))

    def generate(self, gen: InputGenerator):
        c = self.config
        history, _ = generate_history(gen, c.item_rows, c.seq_len)
        return {"history": history, "candidates": generate_candidates(gen, c.item_rows, c.candidates)}

    def fixed_dims(self) -> dict[str, int]:
        return {"seq_len": self.config.seq_len, "candidates": self.config.candidates}
