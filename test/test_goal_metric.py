"""Step whitening: the goal distance counts typical model steps, whatever the direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_planner import HIGH, LOW, planner_model, scene

from lewm_ros.planning import LatentPlanner, PlannerConfig
from lewm_ros.planning.goal_metric import (
    goal_metric_from_meta,
    goal_metric_to_dict,
    step_covariance,
    whitening_matrix,
)


def random_walks(step_std: torch.Tensor, walks: int = 50, steps: int = 200) -> tuple[list, torch.Tensor]:
    """Sequences (T, D) whose one-step changes are N(0, diag(step_std²)) in a random rotated basis."""
    gen = torch.Generator().manual_seed(0)
    D = len(step_std)
    rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))
    out = []
    for _ in range(walks):
        steps_ = torch.randn(steps, D, generator=gen, dtype=torch.float64) * step_std
        out.append(torch.cumsum(steps_ @ rotation.T, dim=0))
    return out, rotation


def test_whitening_makes_one_typical_step_unit_length_in_every_direction() -> None:
    step_std = torch.tensor([1.0, 0.3, 0.05], dtype=torch.float64)
    walks, rotation = random_walks(step_std)
    covariance, count = step_covariance(walks)
    assert count == 50 * 199
    W = whitening_matrix(covariance, ridge=0.0).double()
    torch.testing.assert_close(W, W.T)
    torch.testing.assert_close(W @ covariance @ W, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    # a displacement of one typical step along each principal direction costs about 1
    for k in range(3):
        step = rotation[:, k] * step_std[k]
        assert abs(float((W @ step).square().sum()) - 1.0) < 0.05
    # the ridge bounds the weight of directions the data (almost) never moves along
    largest_weight = float(torch.linalg.eigvalsh(whitening_matrix(covariance, ridge=0.1).double()).max())
    assert largest_weight <= 1 / (0.1 * float(torch.linalg.eigvalsh(covariance).max())) ** 0.5 + 1e-6
    assert largest_weight < 0.5 / float(step_std[-1])  # well below what ridge 0 gives the rarest direction


def test_goal_metric_round_trips_through_the_metadata() -> None:
    walks, _ = random_walks(torch.tensor([1.0, 0.5]))
    W = whitening_matrix(step_covariance(walks)[0])
    stored = goal_metric_to_dict(W, 1e-3, 10, 'calib.h5')
    assert stored['kind'] == 'step_whitening' and stored['steps'] == 10
    torch.testing.assert_close(goal_metric_from_meta({'goal_metric': stored}, 2), W, atol=1e-6, rtol=1e-6)
    assert goal_metric_from_meta({'goal_metric': None}, 2) is None
    with pytest.raises(ValueError, match='lewm calibrate'):
        goal_metric_from_meta({'goal_metric': stored}, 3)
    with pytest.raises(ValueError, match='no sequence'):
        step_covariance([torch.zeros(1, 2)])


def make(model, metric=None, **overrides) -> LatentPlanner:
    cfg = PlannerConfig(samples=40, iterations=3, elites=8, horizon=3, receding_horizon=1, dtype='float64',
                        **overrides)  # fmt: skip
    return LatentPlanner(model, cfg, LOW, HIGH, metric)


def test_whitened_planner_scores_the_distance_through_the_matrix() -> None:
    model = planner_model()
    D = model.config.embed_dim
    frames, actions, goal = scene(2, 3, seed=2)
    sequences = np.random.default_rng(0).uniform(LOW, HIGH, (2, 5, 3, 3, 2))
    plain = make(model).score(frames, actions, goal, sequences)
    identity = make(model, torch.eye(D), goal_metric='whitened').score(frames, actions, goal, sequences)
    torch.testing.assert_close(identity, plain, rtol=1e-6, atol=1e-9)
    # every direction weighted 2x: every squared distance 4x
    doubled = make(model, 2 * torch.eye(D), goal_metric='whitened').score(frames, actions, goal, sequences)
    torch.testing.assert_close(doubled, 4 * plain, rtol=1e-6, atol=1e-9)
    # weights that differ by direction change the candidates' costs relative to each other
    scaled = torch.diag(torch.linspace(0.1, 3.0, D))
    weighted = make(model, scaled, goal_metric='whitened').score(frames, actions, goal, sequences)
    assert not torch.allclose(weighted / weighted.sum(-1, keepdim=True), plain / plain.sum(-1, keepdim=True))
    # the matrix is ignored unless asked for
    torch.testing.assert_close(make(model, scaled).score(frames, actions, goal, sequences), plain)
    with pytest.raises(ValueError, match='lewm calibrate'):
        make(model, None, goal_metric='whitened')
    with pytest.raises(ValueError, match='goal_metric must be'):
        make(model, torch.eye(D + 1), goal_metric='whitened')
