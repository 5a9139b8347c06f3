"""Wide & Deep and its multi-task variant."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from rechar.models.calibration import LogitLayer
from rechar.models.base import InputGenerator, RecModel
from rechar.models.config import ModelConfig, rows
from rechar.models.layers import SingleEmbeddings, Wide, mlp


@dataclasses.dataclass(frozen=True)
class WideDeepConfig(ModelConfig):
    dense_features: int = 512
    table_rows: tuple[int, ...] = rows((1_000_000,) * 27)
    embedding_dim: int = 32
    deep_mlp: tuple[int, ...] = (1024, 512, 256, 1)  # input: dense + tables * dim


class WideDeep(RecModel):
    input_names = ("dense", "sparse")

    def __init__(self, name: str, config: WideDeepConfig):
        super().__init__(name, config)
        c = config
        self.emb = SingleEmbeddings(c.table_rows, c.embedding_dim)
        self.deep = mlp(c.dense_features + len(c.table_rows) * c.embedding_dim, c.deep_mlp, last_activation=False)
        # The reference code omits the wide part; it costs little and keeps the model honest.
        self.wide = Wide(c.dense_features, c.table_rows)

    def logit_layer(self) -> LogitLayer:
        last = self.deep[-1]  # the deep logit and the wide part add up to the logit
        return LogitLayer([last.weight, last.bias, *self.wide.parameters()], [(last.bias, 0)])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        deep = self.deep(torch.cat([dense, *self.emb(sparse)], dim=1))
        return torch.sigmoid(deep + self.wide(dense, sparse))

    def lookups(self, inputs):
        # Each sparse id indexes its deep table and its wide (1-wide) table.
        sparse = inputs["sparse"]
        return {f"{part}.tables.{t}": sparse[:, t]
                for part in ("emb", "wide.sparse") for t in range(len(self.config.table_rows))}

    def generate(self, gen: InputGenerator):
        c = self.config
        sparse = np.stack([gen.ids(r) for r in c.table_rows], axis=1)
        return {"dense": gen.dense(c.dense_features), "sparse": sparse}


@dataclasses.dataclass(frozen=True)
class MultiTaskWideDeepConfig(ModelConfig):
    dense_features: int = 512
    table_rows: tuple[int, ...] = rows((500_000,) * 41 + (5_000_000,) * 2)
    embedding_dim: int = 32
    shared_mlp: tuple[int, ...] = (1024, 512)  # input: dense + tables * dim
    task_mlp: tuple[int, ...] = (256, 128, 1)
    tasks: int = 8


class MultiTaskWideDeep(RecModel):
    input_names = ("dense", "sparse")
    output_names = ("predictions",)

    def __init__(self, name: str, config: MultiTaskWideDeepConfig):
        super().__init__(name, config)
        c = config
        self.emb = SingleEmbeddings(c.table_rows, c.embedding_dim)
        self.shared = mlp(c.dense_features + len(c.table_rows) * c.embedding_dim, c.shared_mlp)
        self.task_towers = nn.ModuleList(
            mlp(c.shared_mlp[-1], c.task_mlp, last_activation=False) for _ in range(c.tasks)
        )
        self.wide = Wide(c.dense_features, c.table_rows, outputs=c.tasks)  # one wide logit per task

    def logit_layer(self) -> LogitLayer:
        lasts = [tower[-1] for tower in self.task_towers]  # task k's logit: its tower plus its wide column
        return LogitLayer([p for last in lasts for p in (last.weight, last.bias)] + list(self.wide.parameters()),
                          [(last.bias, 0) for last in lasts])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        shared = self.shared(torch.cat([dense, *self.emb(sparse)], dim=1))
        deep = torch.cat([tower(shared) for tower in self.task_towers], dim=1)  # [B, tasks]
        return torch.sigmoid(deep + self.wide(dense, sparse))

    lookups = WideDeep.lookups
    generate = WideDeep.generate
