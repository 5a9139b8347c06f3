"""DLRM-DCNv2: DLRM with a low-rank deep cross network over multi-hot features, the model MLPerf
Inference benchmarks as DLRM-v2 (torchrec's ``DLRM_DCN`` with the MLPerf sizes).

Each of the 26 tables sum-pools its own number of lookups per sample (1 to 100, 214 in all), so
the sparse input is one [B, 214] id matrix holding the bags side by side; table t reads its
columns ``offsets[t]:offsets[t+1]``. Eager PyTorch pools with ``embedding_bag``, the exported
graph with Gather + ReduceSum (see rechar.models.layers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rechar.errors import UserError
from rechar.models.base import InputGenerator, RecModel
from rechar.models.calibration import LogitLayer
from rechar.models.config import ModelConfig, rows
from rechar.models.layers import EmbeddingTable, mlp

#: MLPerf DLRM-v2 (Criteo 1TB, tables capped at 40M rows): 204.2M rows, 97.9 GB of fp32 weights.
MLPERF_TABLE_ROWS = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10, 2209, 11938, 155, 4,
    976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)
#: Rows sum-pooled per table per sample (MLPerf's multi-hot sizes, 214 per sample).
MLPERF_LOOKUPS = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)


@dataclasses.dataclass(frozen=True)
class DCNv2Config(ModelConfig):
    dense_features: int = 13
    bottom_mlp: tuple[int, ...] = (512, 256, 128)  # output sizes; must end at embedding_dim
    table_rows: tuple[int, ...] = rows(MLPERF_TABLE_ROWS)
    embedding_dim: int = 128
    lookups: tuple[int, ...] = MLPERF_LOOKUPS  # one bag size per table
    cross_layers: int = 3
    cross_rank: int = 512
    top_mlp: tuple[int, ...] = (1024, 1024, 512, 256, 1)  # input: (tables + 1) * embedding_dim

    def validate(self) -> None:
        super().validate()
        if len(self.lookups) != len(self.table_rows):
            raise UserError(f"lookups has {len(self.lookups)} bag sizes for {len(self.table_rows)} tables")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise UserError("bottom_mlp must end at embedding_dim (the cross network takes equal-width features)")
        if self.top_mlp[-1] != 1:
            raise UserError("top_mlp must end in 1 (the click probability)")


class MultiHotEmbeddings(nn.Module):
    """T tables, table t sum-pooling ``lookups[t]`` rows; ids [B, sum(lookups)] -> T tensors [B, D]."""

    def __init__(self, table_rows: Sequence[int], dim: int, lookups: Sequence[int]):
        super().__init__()
        self.tables = nn.ModuleList(EmbeddingTable(r, dim, n, pooled=True) for r, n in zip(table_rows, lookups))
        self.offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(lookups)]))

    def forward(self, ids: torch.Tensor) -> list[torch.Tensor]:
        o = self.offsets
        return [table(ids[:, o[t]:o[t + 1]]) for t, table in enumerate(self.tables)]


class LowRankCrossNet(nn.Module):
    """DCNv2's cross network with low-rank weights: x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l."""

    def __init__(self, features: int, layers: int, rank: int):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(features, rank, bias=False) for _ in range(layers))  # V_l
        self.up = nn.ModuleList(nn.Linear(rank, features) for _ in range(layers))  # W_l, b_l
        if features and self.up[0].weight.device.type != "meta":  # torchrec's initialisation
            for down, up in zip(self.down, self.up):
                nn.init.xavier_normal_(down.weight)
                nn.init.xavier_normal_(up.weight)
                nn.init.zeros_(up.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for down, up in zip(self.down, self.up):
            x = x0 * up(down(x)) + x
        return x


class FeatureConcat(nn.Module):
    """DLRM_DCN's interaction input: the bottom MLP's output and the pooled embeddings side by side."""

    def forward(self, bottom: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([bottom, *pooled], dim=1)


class DLRMDCNv2(RecModel):
    input_names = ("dense", "sparse")

    def __init__(self, name: str, config: DCNv2Config):
        super().__init__(name, config)
        c = config
        features = (len(c.table_rows) + 1) * c.embedding_dim
        self.bot_mlp = mlp(c.dense_features, c.bottom_mlp)
        self.emb = MultiHotEmbeddings(c.table_rows, c.embedding_dim, c.lookups)
        self.interaction = FeatureConcat()
        self.cross = LowRankCrossNet(features, c.cross_layers, c.cross_rank)
        self.top_mlp = mlp(features, c.top_mlp, last_activation=False)

    def logit_layer(self) -> LogitLayer:
        last = self.top_mlp[-1]
        return LogitLayer([last.weight, last.bias], [(last.bias, 0)])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = self.interaction(self.bot_mlp(dense), self.emb(sparse))
        return torch.sigmoid(self.top_mlp(self.cross(x0)))

    def lookups(self, inputs):
        o = self.emb.offsets
        return {f"emb.tables.{t}": inputs["sparse"][:, o[t]:o[t + 1]] for t in range(len(self.config.table_rows))}

    def generate(self, gen: InputGenerator):
        c = self.config
        sparse = np.concatenate([gen.ids(r, n) for r, n in zip(c.table_rows, c.lookups)], axis=1)
        return {"dense": gen.dense(c.dense_features), "sparse": sparse}


DLRM_DCNV2 = DCNv2Config()
