"""Violation-of-expectation events for the surprise monitor.

Two kinds, chosen to separate physics from appearance: a ``teleport`` moves the object (or agent) to
another pose in one step, which no action can do; a ``recolour`` changes the object's colour, which
changes pixels but not the state. A world model that has learnt physics should be surprised by the
first far more than by the second. The tasks implement them in ``MujocoTaskEnv.perturb``.
"""

from __future__ import annotations

import colorsys

import numpy as np

PERTURBATION_KINDS = ('teleport', 'recolour')


def random_distinct_colour(
    rng: np.random.Generator, avoid: np.ndarray, min_hue_gap: float = 0.25
) -> np.ndarray:
    """A saturated RGB colour (3 floats in [0, 1]) whose hue is far from the colour ``avoid``.

    Grey ``avoid`` colours have no meaningful hue, so any saturated colour is distinct from them.
    """
    avoid_h, _, avoid_s = colorsys.rgb_to_hls(*np.clip(np.asarray(avoid, float)[:3], 0.0, 1.0))
    for _ in range(100):
        hue = float(rng.uniform())
        gap = min(abs(hue - avoid_h), 1.0 - abs(hue - avoid_h))
        if avoid_s < 0.2 or gap >= min_hue_gap:
            break
    return np.array(colorsys.hls_to_rgb(hue, 0.5, 0.9))
