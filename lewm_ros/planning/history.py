"""The observation history the planner and the surprise monitor need, kept at block boundaries.

The model sees frames ``frameskip`` env steps apart, with the ``frameskip`` actions executed
between two of them concatenated into one block. A controller, on the other hand, acts every env
step. ``BlockHistory`` bridges the two: feed it every env step (the action applied and the frame
observed after it) and it keeps the last ``history`` block-boundary frames and the action blocks
between them, ready for ``LatentPlanner.plan`` (``frames()``, ``actions()``).
"""

from __future__ import annotations

from collections import deque

import numpy as np


class BlockHistory:
    """Block-boundary frames and executed action blocks of one environment (numpy, no torch)."""

    def __init__(self, history: int, frameskip: int, action_dim: int) -> None:
        if history < 1 or frameskip < 1 or action_dim < 1:
            raise ValueError('history, frameskip and action_dim must be positive')
        self.history = history
        self.frameskip = frameskip
        self.action_dim = action_dim
        self._frames: deque[np.ndarray] = deque(maxlen=history)
        self._blocks: deque[np.ndarray] = deque(maxlen=history - 1 if history > 1 else 0)
        self._pending: list[np.ndarray] = []

    def reset(self, frame: np.ndarray) -> None:
        """Start over from ``frame`` (H, W, 3) uint8, the first observation of an episode."""
        self._frames.clear()
        self._blocks.clear()
        self._pending = []
        self._frames.append(np.asarray(frame))

    def step(self, action: np.ndarray, frame: np.ndarray) -> bool:
        """Record one env step: ``action`` (A,) was applied and ``frame`` observed after it.

        Returns True when this step completed a block (``frame`` is a new boundary frame).
        """
        if not self._frames:
            raise RuntimeError('call reset(first_frame) before step()')
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape[0] != self.action_dim:
            raise ValueError(f'action has {action.shape[0]} values, expected action_dim {self.action_dim}')
        self._pending.append(action)
        if len(self._pending) < self.frameskip:
            return False
        block = np.stack(self._pending)
        self._pending = []
        if self.history > 1:
            self._blocks.append(block)
        self._frames.append(np.asarray(frame))
        return True

    def push_block(self, block: np.ndarray, frame: np.ndarray) -> None:
        """Record a whole executed block (frameskip, A) and the boundary frame after it."""
        block = np.asarray(block, dtype=np.float32)
        if block.shape != (self.frameskip, self.action_dim):
            raise ValueError(f'block has shape {block.shape}, expected ({self.frameskip}, {self.action_dim})')
        if self._pending:
            raise RuntimeError('push_block() in the middle of a block started with step()')
        for i, action in enumerate(block):
            self.step(action, frame if i == self.frameskip - 1 else None)

    @property
    def at_boundary(self) -> bool:
        """True when no block is half-executed (the moment to re-plan)."""
        return not self._pending

    def __len__(self) -> int:
        return len(self._frames)

    def frames(self) -> np.ndarray:
        """Boundary frames, oldest first, the current one last: (T, H, W, 3), T <= history."""
        return np.stack(self._frames)

    def actions(self) -> np.ndarray:
        """Executed blocks between consecutive boundary frames: (T - 1, frameskip, A)."""
        if len(self._frames) <= 1:
            return np.zeros((0, self.frameskip, self.action_dim), dtype=np.float32)
        return np.stack(list(self._blocks)[-(len(self._frames) - 1) :])
