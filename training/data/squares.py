"""A procedurally generated moving-square task written as a real episode file.

A coloured square moves on a plain background; the 2-D action is its velocity. A second, smaller
square drifts on its own at constant velocity and bounces off the borders. No simulator is
needed, so tests, smoke runs and benchmarks can train on real HDF5 files in seconds; a model must
use the actions to predict where the first square goes and the history for the second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.episodes import EpisodeWriter

SPEED = 0.06  # fraction of the image per step at |action| = 1


def draw_square(frame: np.ndarray, position: np.ndarray, half: int, colour: np.ndarray) -> None:
    """Paint a square of side 2·half + 1 centred at ``position`` in [0, 1]² into ``frame``."""
    size = frame.shape[0]
    cx, cy = (position * (size - 1)).round().astype(int)
    frame[max(0, cy - half) : cy + half + 1, max(0, cx - half) : cx + half + 1] = colour


def squares_episode(
    rng: np.random.Generator, length: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels (L, S, S, 3), actions (L - 1, 2), state (L, 2)) of one episode with smooth random actions."""
    position = rng.uniform(0.15, 0.85, 2)
    colour = rng.integers(120, 256, 3).astype(np.uint8)
    background = rng.integers(0, 60, 3).astype(np.uint8)
    drifter, drift = rng.uniform(0.1, 0.9, 2), rng.uniform(-0.05, 0.05, 2)
    drifter_colour = rng.integers(60, 200, 3).astype(np.uint8)
    action = rng.uniform(-1, 1, 2)
    frames, actions, states = [], [], []
    for t in range(length):
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = background
        draw_square(frame, drifter, max(1, size // 16), drifter_colour)
        draw_square(frame, position, max(1, size // 10), colour)
        frames.append(frame)
        states.append(position.copy())
        drifter = drifter + drift
        bounced = (drifter < 0) | (drifter > 1)
        drift[bounced] *= -1
        drifter = np.clip(drifter, 0.0, 1.0)
        if t == length - 1:
            break
        action = np.clip(0.7 * action + 0.6 * rng.normal(size=2), -1.0, 1.0)
        actions.append(action.copy())
        position = np.clip(position + SPEED * action, 0.0, 1.0)
    return np.stack(frames), np.asarray(actions, np.float32), np.asarray(states, np.float32)


def write_squares_file(
    path: str | Path,
    *,
    episodes: int = 20,
    length: int = 40,
    image_size: int = 32,
    seed: int = 0,
    frameskip: int = 2,
    nan_action_episodes: int = 0,
    short_episodes: int = 0,
) -> Path:
    """Write a moving-squares episode file; optionally with NaN actions and too-short episodes.

    ``nan_action_episodes`` episodes get one NaN action in the middle (as a dropped teleop
    message would); ``short_episodes`` extra episodes have only 2 frames.
    """
    rng = np.random.default_rng(seed)
    attrs = {
        'env_id': 'lewm/Squares-v0',
        'frameskip': frameskip,
        'control_rate_hz': 10.0,
        'action_low': np.array([-1.0, -1.0], np.float32),
        'action_high': np.array([1.0, 1.0], np.float32),
        'policy': 'random',
        'noise': 0.0,
        'seed': seed,
    }
    with EpisodeWriter(path, image_size=image_size, action_dim=2, state_dim=2, attrs=attrs) as writer:
        for i in range(episodes + short_episodes):
            pixels, actions, state = squares_episode(rng, 2 if i >= episodes else length, image_size)
            if i < nan_action_episodes:
                actions[len(actions) // 2] = np.nan
            writer.add_episode(pixels, actions, state=state)
    return Path(path)
