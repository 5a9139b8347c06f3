"""DIN: Deep Interest Network, attention of the target item over the behaviour sequence."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from rechar.models.calibration import LogitLayer
from rechar.models.base import InputGenerator, RecModel
from rechar.models.config import ModelConfig, rows, seq
from rechar.models.layers import EmbeddingTable, mlp


@dataclasses.dataclass(frozen=True)
class DINConfig(ModelConfig):
    embedding_dim: int = 32
    item_rows: int = rows(10_000_000)  # shared by the behaviour sequence and the target item
    profile_rows: int = rows(1_000_000)
    profile_lookups: int = 3
    context_rows: int = rows(100_000)
    context_lookups: int = 3
    seq_len: int = seq(250)
    attention_mlp: tuple[int, ...] = (80, 40, 1)  # input: 4 * embedding_dim
    top_mlp: tuple[int, ...] = (200, 80, 2)  # input: 4 * embedding_dim


class ActivationUnit(nn.Module):
    """DIN's attention: an MLP over concat(h, t, h - t, h * t) scores each behaviour h against the
    target t; the scores are the weights, masked (padded steps get weight 0) but not normalised:
    the DIN paper drops the sum-to-one constraint on purpose, to keep the intensity of a user's
    interests, and the study's DIN sums the weighted behaviours without normalising."""

    def __init__(self, dim: int, sizes: tuple[int, ...]):
        super().__init__()
        self.mlp = mlp(4 * dim, sizes, last_activation=False)

    def weights(self, behaviours: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, S, D], [B, D], [B, S] -> the weight of each behaviour, [B, S]."""
        t = target.unsqueeze(1).expand_as(behaviours)
        scores = self.mlp(torch.cat([behaviours, t, behaviours - t, behaviours * t], dim=-1)).squeeze(-1)
        return scores * mask

    def forward(self, behaviours: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.weights(behaviours, target, mask)
        return torch.bmm(weights.unsqueeze(1), behaviours).squeeze(1)  # [B, D]


class DIN(RecModel):
    output_kind = "softmax"
    input_names = ("profile", "context", "history", "history_mask", "target")
    output_names = ("probabilities",)

    def __init__(self, name: str, config: DINConfig):
        super().__init__(name, config)
        c = config
        self.item_emb = EmbeddingTable(c.item_rows, c.embedding_dim, lookups=c.seq_len + 1)
        self.profile_emb = EmbeddingTable(c.profile_rows, c.embedding_dim, c.profile_lookups, pooled=True)
        self.context_emb = EmbeddingTable(c.context_rows, c.embedding_dim, c.context_lookups, pooled=True)
        self.attention = ActivationUnit(c.embedding_dim, c.attention_mlp)
        self.top_mlp = mlp(4 * c.embedding_dim, c.top_mlp, last_activation=False)

    def logit_layer(self) -> LogitLayer:
        last = self.top_mlp[-1]  # two classes: the logit is z1 - z0, moved by the second bias
        return LogitLayer([last.weight, last.bias], [(last.bias, 1)])

    def forward(self, profile, context, history, history_mask, target):
        target_emb = self.item_emb(target)
        interest = self.attention(self.item_emb(history), target_emb, history_mask)
        z = torch.cat([self.profile_emb(profile), interest, target_emb, self.context_emb(context)], dim=1)
        return torch.softmax(self.top_mlp(z), dim=1)

    def lookups(self, inputs):
        return {"item_emb": np.concatenate([inputs["history"], inputs["target"][:, None]], axis=1),
                "profile_emb": inputs["profile"], "context_emb": inputs["context"]}

    def generate(self, gen: InputGenerator):
        c = self.config
        return {
            "profile": gen.ids(c.profile_rows, c.profile_lookups),
            "context": gen.ids(c.context_rows, c.context_lookups),
            "history": gen.ids(c.item_rows, c.seq_len),
            "history_mask": gen.mask(c.seq_len),
            "target": gen.ids(c.item_rows),
        }

    def fixed_dims(self) -> dict[str, int]:
        return {"seq_len": self.config.seq_len}
