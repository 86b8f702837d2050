"""Embed a block of normalised actions (the ``frameskip`` actions between two kept frames)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ActionEncoder(nn.Module):
    """Linear -> SiLU -> Linear from ``frameskip * action_dim`` z-scored values to the embedding width."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        """Map (..., frameskip * action_dim) normalised actions to (..., out_dim)."""
        if actions.shape[-1] != self.in_dim:
            raise ValueError(
                f'action block has {actions.shape[-1]} values per step, the model expects {self.in_dim} '
                '(frameskip * action_dim, normalised and concatenated)'
            )
        return self.fc2(F.silu(self.fc1(actions)))
