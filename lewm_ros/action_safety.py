"""What may reach a robot: action bounds, validated as a pair, and the one gate every command passes.

Pure numpy, no ROS: the planner node builds an ``ActionBounds`` from the checkpoint and its
parameters (at start and on every parameter update, through the same function, so a value that
was accepted can always be applied), and sends every command through ``ActionGate.gate``. The
invariants, each enforced here and nowhere else:

- every command that leaves the gate is finite and inside the bounds in force;
- the safe action (zero, or hold the last command sent) is inside the bounds too;
- bounds are finite (unless unbounded actions were asked for explicitly), one per action
  dimension, and low < high in every dimension; parameters can only tighten the checkpoint's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

SAFE_ACTIONS = ('zero', 'hold')
NO_BOUNDS = ('the checkpoint records no action bounds: set action_low and action_high (env units, one '
             'per action dimension), or set allow_unbounded_actions:=true to send whatever the planner '
             'finds')


class BoundsError(ValueError):
    """Bounds that cannot be used; the text says why (a parameter update is rejected with it)."""


def as_vector(value: Any, name: str) -> np.ndarray | None:
    """A bounds value as float64 (n,), or None when unset (None or empty).

    Accepts any sequence of numbers: list, tuple, numpy array, and the ``array.array`` rclpy hands
    to parameter callbacks. Strings, booleans and non-finite numbers are refused.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise BoundsError(f'{name} must be a list of numbers, got {value!r}')
    items = list(value)
    if not items:
        return None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)) for v in items):
        raise BoundsError(f'{name} must be a list of numbers, got {items!r}')
    vector = np.asarray(items, dtype=np.float64)
    if not np.all(np.isfinite(vector)):
        raise BoundsError(f'{name} must be finite, got {items}')
    return vector


@dataclass(frozen=True)
class ActionBounds:
    """Per-dimension bounds in env units; ``low < high`` everywhere (infinite only when opted out)."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def resolve(
        cls,
        dim: int,
        trained_low: Any,
        trained_high: Any,
        low: Any = None,
        high: Any = None,
        allow_unbounded: bool = False,
    ) -> ActionBounds:
        """The bounds in force: the checkpoint's (``trained_*``), tightened by the parameters.

        Raises ``BoundsError`` naming the problem: a wrong length, a non-finite value, a pair that
        is inverted or that tightening would empty, or no bounds at all without ``allow_unbounded``.
        """
        vectors = {}
        for name, value in (('checkpoint action_low', trained_low), ('checkpoint action_high', trained_high),
                            ('action_low', low), ('action_high', high)):
            vector = as_vector(value, name)
            if vector is not None and vector.shape != (dim,):
                raise BoundsError(f'{name} needs {dim} values (one per action dimension), got {len(vector)}')
            vectors[name] = vector
        lo = _tighten(vectors['checkpoint action_low'], vectors['action_low'], np.maximum, -math.inf, dim)
        hi = _tighten(vectors['checkpoint action_high'], vectors['action_high'], np.minimum, math.inf, dim)
        if not allow_unbounded and not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise BoundsError(NO_BOUNDS)
        if np.any(lo >= hi):
            given = [n for n in ('action_low', 'action_high') if vectors[n] is not None]
            why = (f' ({" and ".join(given)} would leave no room inside the checkpoint\'s bounds '
                   f'{_fmt(vectors["checkpoint action_low"])} .. {_fmt(vectors["checkpoint action_high"])})'
                   if given else '')
            raise BoundsError(f'action bounds are empty: low {_fmt(lo)} must be below high {_fmt(hi)} in '
                              f'every dimension{why}')
        return cls(lo, hi)

    @property
    def bounded(self) -> bool:
        """Whether every dimension has finite bounds."""
        return bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))

    def clip(self, action: np.ndarray) -> np.ndarray:
        """``action`` clipped into the bounds (float64)."""
        return np.clip(np.asarray(action, np.float64), self.low, self.high)

    def contains(self, action: np.ndarray) -> bool:
        """Whether ``action`` is finite and inside the bounds."""
        a = np.asarray(action, np.float64)
        return bool(a.shape == self.low.shape and np.all(np.isfinite(a))
                    and np.all(a >= self.low) and np.all(a <= self.high))

    def describe(self) -> str:
        """The bounds as text for logs: ``[-1, -1] .. [1, 1]``."""
        return f'{_fmt(self.low)} .. {_fmt(self.high)}'


def _tighten(trained: np.ndarray | None, given: np.ndarray | None, pick: Any, unset: float,
             dim: int) -> np.ndarray:
    base = np.full(dim, unset) if trained is None else trained
    return base if given is None else pick(base, given)


def _fmt(vector: np.ndarray | None) -> str:
    return 'unset' if vector is None else '[' + ', '.join(f'{v:.4g}' for v in vector) + ']'


class ActionGate:
    """The last check before a command is published: finite, in bounds, or the safe action instead.

    ``gate`` returns the command to send and, when the given one had to be replaced, why. Clipping
    a finite command into the bounds is not a replacement (the planner clamps in float32; the
    gate makes sure float64 rounding never lands outside).
    """

    def __init__(self, bounds: ActionBounds, safe_action: str = 'zero') -> None:
        if safe_action not in SAFE_ACTIONS:
            raise ValueError(f'safe_action must be one of {SAFE_ACTIONS}, got {safe_action!r}')
        self.bounds, self.safe_mode = bounds, safe_action
        self.last_sent: np.ndarray | None = None

    def safe_action(self) -> np.ndarray:
        """Zero, or the last command sent (``hold``), clipped into the bounds in force."""
        if self.safe_mode == 'hold' and self.last_sent is not None:
            return self.bounds.clip(self.last_sent)
        return self.bounds.clip(np.zeros_like(self.bounds.low))

    def gate(self, action: np.ndarray | None) -> tuple[np.ndarray, str | None]:
        """The command to publish for ``action`` (None = send the safe action), and a problem or None."""
        problem = None
        if action is None:
            out = self.safe_action()
        else:
            a = np.asarray(action, np.float64).reshape(-1)
            if a.shape != self.bounds.low.shape:
                problem = f'action has {a.size} values, expected {self.bounds.low.size}'
            elif not np.all(np.isfinite(a)):
                problem = f'action is not finite: {a.tolist()}'
            out = self.safe_action() if problem else self.bounds.clip(a)
        if not self.bounds.contains(out):  # cannot happen with valid bounds; never publish it anyway
            raise AssertionError(f'gate produced {out.tolist()} outside {self.bounds.describe()}')
        self.last_sent = out
        return out, problem
