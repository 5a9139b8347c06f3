"""Pieces shared by the sequential recommenders (SASRec, HSTU), following the generative-recommenders
reference code: the input stage (item embeddings scaled by sqrt(d) plus learned positions, padded
steps zeroed), the L2-normalised output, and candidate scoring by dot product with the state at
the last valid step, as logits (``output_kind = "score"``).

A history is left-aligned: ``history[b, :n_b]`` are the user's items, oldest first, and id 0 pads
the rest (the reference's convention; real ids start at 1). Everything is written with fixed
shapes and plain tensor ops so that it exports to ONNX with the history length fixed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rechar.models.calibration import LogitLayer
from rechar.models.base import RecModel, InputGenerator

#: The reference's L2-normalisation floor (l2_norm_eps in its ML-1M configs).
L2_EPS = 1e-6
#: The temperature of the reference's sampled-softmax loss (its ML-1M configs): logits are cos / 0.05.
TEMPERATURE = 0.05


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # sum-of-squares form: exports as Mul/ReduceSum/Sqrt, which every stack lowers
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True)).clamp(min=L2_EPS)


class SequenceInput(nn.Module):
    """(history ids [B, S], their embeddings [B, S, D]) -> (embeddings scaled, with positions,
    padded steps zeroed [B, S, D]; valid mask [B, S, 1])."""

    def __init__(self, seq_len: int, dim: int):
        super().__init__()
        # The reference looks positions up in an nn.Embedding with arange(S): the same as adding
        # its whole weight, which is what this does.
        self.positions = nn.Parameter(torch.empty(seq_len, dim))
        if self.positions.device.type != "meta":
            nn.init.trunc_normal_(self.positions, std=math.sqrt(1.0 / dim))
        self.scale = math.sqrt(dim)

    def forward(self, history: torch.Tensor, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = (history != 0).unsqueeze(-1).to(embedded.dtype)
        x = embedded * self.scale + self.positions
        return x * valid, valid


class CandidateScoring(nn.Module):
    """Scores K candidate items against the user's state at the last valid step: the cosine of
    the L2-normalised state with each L2-normalised candidate embedding (the reference's DotProduct
    interaction with item_l2_norm and user_embedding_norm = l2_norm), as a logit: divided by the
    temperature its sampled-softmax loss trains with (0.05), plus a bias. Scale and bias are the
    output layer that rechar.models.calibration sets, as it sets the other models' last layers."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0 / TEMPERATURE]))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, states: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """states [B, S, D], valid [B, S, 1] (a prefix of ones), candidate embeddings [B, K, D] -> [B, K]."""
        # 1 at the last valid step: valid[s] - valid[s + 1] for a prefix of ones
        following = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)
        last = (states * (valid - following)).sum(dim=1, keepdim=True)  # [B, 1, D]
        items = l2_normalize(candidates)
        cosine = torch.matmul(l2_normalize(last), items.transpose(1, 2)).squeeze(1)
        return cosine * self.scale + self.bias


def generate_history(gen: InputGenerator, item_rows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned histories of ids in [1, item_rows) padded with 0, and their valid mask [B, S]."""
    mask = gen.mask(seq_len)
    ids = gen.ids(item_rows - 1, seq_len) + 1
    return np.where(mask > 0, ids, 0), mask


def generate_candidates(gen: InputGenerator, item_rows: int, candidates: int) -> np.ndarray:
    return gen.ids(item_rows - 1, candidates) + 1


class SequentialRecModel(RecModel):
    """What SASRec and HSTU share: one item table read by the history and the candidates, and
    candidate scores from CandidateScoring (``self.item_emb``, ``self.scoring``)."""

    output_kind = "score"

    def logit_layer(self) -> LogitLayer:
        return LogitLayer([self.scoring.scale, self.scoring.bias], [(self.scoring.bias, 0)])

    def lookups(self, inputs):
        return {"item_emb": np.concatenate([inputs["history"], inputs["candidates"]], axis=1)}
