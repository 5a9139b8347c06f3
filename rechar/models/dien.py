"""DIEN: Deep Interest Evolution Network, a GRU interest extractor and an attentional GRU."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from rechar.models.calibration import LogitLayer
from rechar.models.base import RecModel
from rechar.models.config import ModelConfig, rows, seq
from rechar.models.din import DIN
from rechar.models.layers import AUGRUCell, EmbeddingTable, masked_softmax, mlp


@dataclasses.dataclass(frozen=True)
class DIENConfig(ModelConfig):
    embedding_dim: int = 32
    item_rows: int = rows(5_000_000)  # shared by the behaviour sequence and the target item
    profile_rows: int = rows(500_000)
    profile_lookups: int = 3
    context_rows: int = rows(500_000)
    context_lookups: int = 3
    seq_len: int = seq(40)
    hidden: int = 64  # GRU and AUGRU hidden size
    attention_mlp: tuple[int, ...] = (80, 40, 1)  # input: hidden + embedding_dim
    top_mlp: tuple[int, ...] = (200, 80, 2)  # input: hidden + 3 * embedding_dim


class InterestAttention(nn.Module):
    """Scores each interest state h against the target t with an MLP over concat(h, t);
    masked softmax over time."""

    def __init__(self, hidden: int, dim: int, sizes: tuple[int, ...]):
        super().__init__()
        self.mlp = mlp(hidden + dim, sizes, last_activation=False)

    def forward(self, states: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand(-1, states.shape[1], -1)
        return masked_softmax(self.mlp(torch.cat([states, t], dim=-1)).squeeze(-1), mask)


class DIEN(RecModel):
    output_kind = "softmax"
    input_names = DIN.input_names
    output_names = DIN.output_names

    def __init__(self, name: str, config: DIENConfig):
        super().__init__(name, config)
        c = config
        self.item_emb = EmbeddingTable(c.item_rows, c.embedding_dim, lookups=c.seq_len + 1)
        self.profile_emb = EmbeddingTable(c.profile_rows, c.embedding_dim, c.profile_lookups, pooled=True)
        self.context_emb = EmbeddingTable(c.context_rows, c.embedding_dim, c.context_lookups, pooled=True)
        self.interest_extractor = nn.GRU(c.embedding_dim, c.hidden, batch_first=True)
        self.attention = InterestAttention(c.hidden, c.embedding_dim, c.attention_mlp)
        self.interest_evolution = AUGRUCell(c.hidden, c.hidden)
        self.top_mlp = mlp(c.hidden + 3 * c.embedding_dim, c.top_mlp, last_activation=False)

    def logit_layer(self) -> LogitLayer:
        last = self.top_mlp[-1]  # two classes: the logit is z1 - z0, moved by the second bias
        return LogitLayer([last.weight, last.bias], [(last.bias, 1)])

    def forward(self, profile, context, history, history_mask, target):
        target_emb = self.item_emb(target)
        # Padding is at the end of each sequence: the GRU's valid states do not see it, and the
        # AUGRU keeps its state over padded steps because their attention weight is 0.
        states, _ = self.interest_extractor(self.item_emb(history))
        scores = self.attention(states, target_emb, history_mask)
        interest = self.interest_evolution(states, scores)
        z = torch.cat([interest, self.profile_emb(profile), target_emb, self.context_emb(context)], dim=1)
        return torch.softmax(self.top_mlp(z), dim=1)

    lookups = DIN.lookups
    generate = DIN.generate
    fixed_dims = DIN.fixed_dims
