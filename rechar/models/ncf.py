"""NCF (NeuMF): a GMF branch and an MLP tower over user and item embeddings."""

from __future__ import annotations

import dataclasses

import torch

from rechar.models.calibration import LogitLayer
from rechar.models.base import InputGenerator, RecModel
from rechar.models.config import ModelConfig, rows
from rechar.models.layers import EmbeddingTable, mlp
from torch import nn


@dataclasses.dataclass(frozen=True)
class NCFConfig(ModelConfig):
    user_rows: int = rows(140_000)  # GMF user table
    item_rows: int = rows(140_000)  # GMF item table
    mlp_user_rows: int = rows(28_000)
    mlp_item_rows: int = rows(28_000)
    gmf_dim: int = 64
    mlp_dim: int = 64
    mlp: tuple[int, ...] = (256, 256, 128, 64)  # tower output sizes; input is 2 * mlp_dim


class NCF(RecModel):
    input_names = ("user", "item")

    def __init__(self, name: str, config: NCFConfig):
        super().__init__(name, config)
        c = config
        self.gmf_user = EmbeddingTable(c.user_rows, c.gmf_dim, lookups=1)
        self.gmf_item = EmbeddingTable(c.item_rows, c.gmf_dim, lookups=1)
        self.mlp_user = EmbeddingTable(c.mlp_user_rows, c.mlp_dim, lookups=1)
        self.mlp_item = EmbeddingTable(c.mlp_item_rows, c.mlp_dim, lookups=1)
        self.mlp = mlp(2 * c.mlp_dim, c.mlp)
        self.predict_layer = nn.Linear(c.gmf_dim + c.mlp[-1], 1)

    def logit_layer(self) -> LogitLayer:
        last = self.predict_layer
        return LogitLayer([last.weight, last.bias], [(last.bias, 0)])

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        # NeuMF's GMF is an element-wise product (the reference code sums: a quirk not followed).
        gmf = self.gmf_user(user) * self.gmf_item(item)
        tower = self.mlp(torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=1))
        return torch.sigmoid(self.predict_layer(torch.cat([gmf, tower], dim=1)))

    def lookups(self, inputs):
        return {"gmf_user": inputs["user"], "mlp_user": inputs["user"],
                "gmf_item": inputs["item"], "mlp_item": inputs["item"]}

    def generate(self, gen: InputGenerator):
        c = self.config
        # One user id and one item id index both branches' tables, so ids must fit the smaller.
        return {
            "user": gen.ids(min(c.user_rows, c.mlp_user_rows)),
            "item": gen.ids(min(c.item_rows, c.mlp_item_rows)),
        }
