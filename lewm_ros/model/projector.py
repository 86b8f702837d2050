"""The BatchNorm MLP that maps encoder/predictor outputs into the embedding space SIGReg shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """Linear -> BatchNorm1d -> GELU -> Linear over the last dimension of any (..., in_dim) tensor.

    BatchNorm, not LayerNorm: LayerNorm pins every sample to the same norm, which fights the
    isotropic-Gaussian target of SIGReg. In eval mode BatchNorm uses its running statistics,
    so a single embedding can be projected at plan time.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project (..., in_dim) to (..., out_dim); BatchNorm statistics run over all leading dims."""
        lead = x.shape[:-1]
        h = self.fc1(x.reshape(-1, x.shape[-1]))
        h = F.gelu(self.norm(h))
        return self.fc2(h).reshape(*lead, -1)
