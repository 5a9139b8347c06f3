"""DLRM (RMC1, RMC2, RMC3 share this architecture; they differ in sizes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from rechar.errors import UserError
from rechar.models.calibration import LogitLayer
from rechar.models.base import InputGenerator, RecModel
from rechar.models.config import ModelConfig, rows
from rechar.models.layers import PooledEmbeddings, mlp

INTERACTIONS = ("concat", "dot")


@dataclasses.dataclass(frozen=True)
class DLRMConfig(ModelConfig):
    dense_features: int = 128
    bottom_mlp: tuple[int, ...] = (64, 32)  # output sizes; input is dense_features
    table_rows: tuple[int, ...] = rows((4_000_000,) * 8)
    embedding_dim: int = 32
    lookups: int = 80  # rows sum-pooled per table per sample
    interaction: str = "concat"
    top_mlp: tuple[int, ...] = (256, 64, 1)  # output sizes; input follows from the interaction

    def validate(self) -> None:
        super().validate()
        if self.interaction not in INTERACTIONS:
            raise UserError(f"interaction must be one of {', '.join(INTERACTIONS)}, got {self.interaction!r}")
        if self.interaction == "dot" and self.bottom_mlp[-1] != self.embedding_dim:
            raise UserError("interaction 'dot' needs the bottom MLP to end at embedding_dim")
        if self.top_mlp[-1] != 1:
            raise UserError("top_mlp must end in 1 (the click probability)")


class Interaction(nn.Module):
    """Feature interaction: concat (the reference configs) or DLRM's pairwise dot products."""

    def __init__(self, kind: str, num_features: int):
        super().__init__()
        self.kind = kind
        # Strictly-lower-triangle pairs, as a constant index so it exports as one Gather.
        i, j = torch.tril_indices(num_features, num_features, offset=-1)
        self.register_buffer("pair_index", i * num_features + j, persistent=False)

    def forward(self, bottom: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "concat":
            return torch.cat([bottom, *pooled], dim=1)
        features = torch.stack([bottom, *pooled], dim=1)  # [B, F, D]
        dots = torch.bmm(features, features.transpose(1, 2)).flatten(1)  # [B, F*F]
        return torch.cat([bottom, dots[:, self.pair_index]], dim=1)

    @staticmethod
    def out_features(kind: str, bottom: int, dim: int, tables: int) -> int:
        if kind == "concat":
            return bottom + tables * dim
        f = tables + 1
        return bottom + f * (f - 1) // 2


class DLRM(RecModel):
    input_names = ("dense", "sparse")

    def __init__(self, name: str, config: DLRMConfig):
        super().__init__(name, config)
        c = config
        self.bot_mlp = mlp(c.dense_features, c.bottom_mlp)
        self.emb = PooledEmbeddings(c.table_rows, c.embedding_dim, c.lookups)
        self.interaction = Interaction(c.interaction, len(c.table_rows) + 1)
        top_in = Interaction.out_features(c.interaction, c.bottom_mlp[-1], c.embedding_dim, len(c.table_rows))
        self.top_mlp = mlp(top_in, c.top_mlp, last_activation=False)

    def logit_layer(self) -> LogitLayer:
        last = self.top_mlp[-1]
        return LogitLayer([last.weight, last.bias], [(last.bias, 0)])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        z = self.interaction(self.bot_mlp(dense), self.emb(sparse))
        return torch.sigmoid(self.top_mlp(z))

    def lookups(self, inputs):
        return {f"emb.tables.{t}": inputs["sparse"][:, t, :] for t in range(len(self.config.table_rows))}

    def generate(self, gen: InputGenerator):
        c = self.config
        sparse = [gen.ids(r, c.lookups) for r in c.table_rows]
        return {"dense": gen.dense(c.dense_features), "sparse": np.stack(sparse, axis=1)}


RMC1 = DLRMConfig()
RMC2 = DLRMConfig(
    dense_features=256, bottom_mlp=(128, 64), table_rows=(500_000,) * 32, embedding_dim=64,
    lookups=120, top_mlp=(128, 64, 1),
)
RMC3 = DLRMConfig(
    dense_features=2560, bottom_mlp=(1024, 256, 32), table_rows=(2_000_000,) * 10, embedding_dim=32,
    lookups=20, top_mlp=(512, 256, 1),
)
