"""A goal-conditioned controller on frozen LeWM embeddings: one forward pass instead of a search.

Sampling planners pay for every decision with thousands of world-model rollouts. The controller
learns, from the same episodes the world model was trained on, what those rollouts are for: given
the recent embeddings (with the action blocks executed between them), a goal embedding and the
number of blocks left to reach it, it outputs the next ``horizon`` action blocks (normalised
units). It is trained with hindsight goals (later frames of the same episode) and the world model
frozen (``lewm train-controller``), so the embedding it reads is exactly the planner's.

It serves twice: alone (``solver: controller``, one forward per decision) and as the proposal
of a sampling solver (``proposal: controller``: its sequence is the search's initial mean, so a
few iterations refine a good guess instead of many finding one). Pure torch, no ROS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ControllerConfig:
    """Shape of a controller; stored in ``meta.json`` next to its weights.

    ``history`` frames are read (the current one last; missing older ones repeat the oldest,
    with zero action blocks, exactly as at the start of an episode), ``horizon`` blocks are
    output, and the remaining-steps input counts blocks, clamped to ``max_steps_ahead``.
    """

    embed_dim: int
    action_dim: int
    frameskip: int
    history: int = 3
    horizon: int = 5
    hidden: int = 512
    depth: int = 3
    max_steps_ahead: int = 10

    def __post_init__(self) -> None:
        for name in (
            'embed_dim',
            'action_dim',
            'frameskip',
            'history',
            'horizon',
            'hidden',
            'depth',
            'max_steps_ahead',
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f'invalid controller config: {name} must be a positive integer, got {value!r}'
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``meta.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ControllerConfig:
        """From ``meta.json``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'invalid controller config: unknown key(s) {unknown}')
        return cls(**values)


class GoalController(nn.Module):
    """(embeddings, executed blocks, goal, blocks left) -> the next ``horizon`` blocks (normalised)."""

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = c = config
        block = c.frameskip * c.action_dim
        inputs = c.history * c.embed_dim + (c.history - 1) * block + 2 * c.embed_dim + c.max_steps_ahead
        layers: list[nn.Module] = []
        width = inputs
        for _ in range(c.depth):
            layers += [nn.Linear(width, c.hidden), nn.LayerNorm(c.hidden), nn.GELU()]
            width = c.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, c.horizon * block)
        nn.init.zeros_(self.head.weight)  # starts at the data mean: zero normalised actions
        nn.init.zeros_(self.head.bias)

    def features(
        self,
        z: torch.Tensor,
        blocks: torch.Tensor | None,
        goal: torch.Tensor,
        steps_ahead: torch.Tensor | int,
    ) -> torch.Tensor:
        """The input vector (B, F) for embeddings (B, T, D), blocks (B, T - 1, fs * A), goal (B, D)."""
        c = self.config
        B, T, D = z.shape
        block = c.frameskip * c.action_dim
        if D != c.embed_dim or goal.shape != (B, D):
            raise ValueError(
                f'controller expects embeddings (B, T, {c.embed_dim}) and goals (B, {c.embed_dim}), '
                f'got {tuple(z.shape)} and {tuple(goal.shape)}'
            )
        if blocks is None or blocks.numel() == 0:
            blocks = z.new_zeros(B, max(0, T - 1), block)
        blocks = blocks.reshape(B, -1, block).to(z.dtype)
        if blocks.shape[1] != T - 1:
            raise ValueError(f'{T} embeddings need {T - 1} executed blocks, got {blocks.shape[1]}')
        H = c.history
        if T >= H:
            z, blocks = z[:, T - H :], blocks[:, blocks.shape[1] - (H - 1) :] if H > 1 else blocks[:, :0]
        else:
            missing = H - T
            z = torch.cat([z[:, :1].expand(B, missing, D), z], dim=1)
            blocks = torch.cat([blocks.new_zeros(B, missing, block), blocks], dim=1)
        steps = torch.as_tensor(steps_ahead, device=z.device).long().reshape(-1).expand(B)
        steps = steps.clamp(1, c.max_steps_ahead) - 1
        onehot = torch.nn.functional.one_hot(steps, c.max_steps_ahead).to(z.dtype)
        now = z[:, -1]
        return torch.cat([z.reshape(B, -1), blocks.reshape(B, -1), goal, goal - now, onehot], dim=1)

    def forward(
        self,
        z: torch.Tensor,
        blocks: torch.Tensor | None,
        goal: torch.Tensor,
        steps_ahead: torch.Tensor | int,
    ) -> torch.Tensor:
        """Normalised action blocks (B, horizon, frameskip, A); see :meth:`features` for the inputs."""
        c = self.config
        out = self.head(self.body(self.features(z, blocks, goal, steps_ahead)))
        return out.view(z.shape[0], c.horizon, c.frameskip, c.action_dim)
