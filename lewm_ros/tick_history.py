"""Per-tick memory of a robot's control loop: frame embeddings and the actions actually executed.

A controller ticks at the env rate, the model steps every ``frameskip`` ticks. Keeping every tick
(not only block boundaries) lets the surprise of *every* frame be scored: frame t is predicted
from frames t - fs, t - 2 fs, ... and the action blocks executed between them, whatever the
phase of t within a block.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Tick:
    """One control tick: the embedding of the frame seen, and the action executed after it.

    Only the embedding is kept: each frame is encoded once, on arrival (its surprise needs it),
    and plans start from the same embeddings.
    """

    embedding: torch.Tensor
    action: np.ndarray | None = None


class TickHistory:
    """The last ``history * frameskip + 1`` ticks, newest last."""

    def __init__(self, history: int, frameskip: int, action_dim: int) -> None:
        self.history, self.frameskip, self.action_dim = history, frameskip, action_dim
        self._ticks: deque[Tick] = deque(maxlen=history * frameskip + 1)

    def clear(self) -> None:
        """Forget everything (e.g. after a jump in time)."""
        self._ticks.clear()

    def __len__(self) -> int:
        return len(self._ticks)

    def observe(self, embedding: torch.Tensor) -> None:
        """Start a tick with the embedding (D,) of its frame.

        A previous tick that never reported its action is taken to have executed a zero command.
        """
        if self._ticks and self._ticks[-1].action is None:
            self._ticks[-1].action = np.zeros(self.action_dim, np.float32)
        self._ticks.append(Tick(embedding))

    def repeat(self) -> None:
        """Start a tick that saw no new camera frame: the previous frame stands for it."""
        self.observe(self._ticks[-1].embedding)

    def executed(self, action: np.ndarray) -> None:
        """Record the action executed in the current tick (env units)."""
        if not self._ticks or self._ticks[-1].action is not None:
            raise RuntimeError('executed() needs a tick started by observe() and not yet given an action')
        self._ticks[-1].action = np.asarray(action, np.float32).reshape(self.action_dim)

    def _block(self, first: int) -> np.ndarray:
        """Actions of the ``frameskip`` ticks starting at index ``first``."""
        return np.stack([self._ticks[i].action for i in range(first, first + self.frameskip)])

    def planning_context(self) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings of ticks t, t - fs, ... (oldest first, at most ``history``) and the blocks between.

        Returns ``embeddings`` (T, D) and ``blocks`` (T - 1, fs, A) for ``LatentPlanner.plan``.
        """
        fs, n = self.frameskip, len(self._ticks)
        count = min(self.history, (n - 1) // fs + 1)
        ticks = [n - 1 - fs * (count - 1 - j) for j in range(count)]
        embeddings = torch.stack([self._ticks[i].embedding for i in ticks])
        blocks = [self._block(i) for i in ticks[:-1]]
        return embeddings, (np.stack(blocks) if blocks else np.zeros((0, fs, self.action_dim), np.float32))

    def surprise_context(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor] | None:
        """What predicts the newest frame: earlier embeddings (T, D), their blocks (T, fs, A), target (D,).

        None until at least one block of ticks precedes the newest frame.
        """
        fs, n = self.frameskip, len(self._ticks)
        count = min(self.history, (n - 1) // fs)
        if count < 1:
            return None
        ticks = [n - 1 - fs * (count - j) for j in range(count)]
        z = torch.stack([self._ticks[i].embedding for i in ticks])
        blocks = np.stack([self._block(i) for i in ticks])
        return z, blocks, self._ticks[-1].embedding

    def ticks_until_surprise(self) -> int:
        """How many more frames are needed before a surprise score exists."""
        return max(0, self.frameskip + 1 - len(self._ticks))
