"""Sampling solvers (CEM, iCEM, MPPI) on a problem whose optimum is known in closed form.

Toy: linear dynamics x_{k+1} = F x_k + G u_k over a horizon of H steps, cost
||x_H - goal||^2 + lam * ||u||^2. Without bounds the minimiser is a ridge regression; with a box
it is a convex QP solved here by projected gradient descent in float64.
"""

from __future__ import annotations

import pytest
import torch

from lewm_ros.planning import PlannerConfig, make_solver
from lewm_ros.planning.icem import colored_noise

H, A = 4, 2
LAM = 0.1


def toy_problem(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    F = torch.tensor([[1.0, 0.2], [-0.1, 0.9]], dtype=torch.float64)
    G = torch.tensor([[0.5, 0.1], [0.0, 0.4]], dtype=torch.float64)
    x0 = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    goal = 2.0 * torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    # x_H = F^H x0 + sum_k F^(H-1-k) G u_k = c + M u with u flattened (H*A)
    M = torch.cat([torch.linalg.matrix_power(F, H - 1 - k) @ G for k in range(H)], dim=1)
    c = x0 @ torch.linalg.matrix_power(F, H).T
    return {'M': M, 'c': c, 'goal': goal}


def toy_cost(problem: dict[str, torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """u (B, N, H, A) -> cost (B, N)."""
    B, N = u.shape[:2]
    flat = u.reshape(B, N, H * A)
    x_final = problem['c'].unsqueeze(1) + flat @ problem['M'].T
    return (x_final - problem['goal'].unsqueeze(1)).square().sum(-1) + LAM * flat.square().sum(-1)


def exact_minimum(problem: dict[str, torch.Tensor], low: float, high: float) -> torch.Tensor:
    """Box-constrained minimiser (B, H, A) by projected gradient descent (converged in float64)."""
    M, target = problem['M'], problem['goal'] - problem['c']
    Q = M.T @ M + LAM * torch.eye(H * A, dtype=torch.float64)
    u = torch.linalg.solve(Q, (target @ M).T).T
    step = 1.0 / torch.linalg.eigvalsh(Q).max()
    for _ in range(20000):
        u = (u - step * (u @ Q - target @ M)).clamp(low, high)
    return u.reshape(-1, H, A)


def run_solver(name: str, problem, low: float, high: float, generators, **overrides):
    cfg = PlannerConfig(solver=name, **{'samples': 300, 'iterations': 30, 'elites': 30, **overrides})
    B = problem['goal'].shape[0]
    low_t = torch.full((A,), low, dtype=torch.float64)
    high_t = torch.full((A,), high, dtype=torch.float64)
    seen = []

    def cost_fn(u: torch.Tensor) -> torch.Tensor:
        seen.append((u.min().item(), u.max().item()))
        return toy_cost(problem, u)

    mean = torch.zeros(B, H, A, dtype=torch.float64)
    std = torch.ones(B, H, A, dtype=torch.float64)
    result = make_solver(cfg).solve(cost_fn, mean, std, low_t, high_t, generators)
    return result, seen


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_cem_finds_the_unconstrained_minimum() -> None:
    problem = toy_problem(3)
    target = exact_minimum(problem, -1e9, 1e9)
    result, _ = run_solver('cem', problem, -1e9, 1e9, generators([1, 2, 3]))
    optimum = toy_cost(problem, target.unsqueeze(1))[:, 0]
    assert torch.allclose(result.actions, target, atol=0.03), (result.actions - target).abs().max()
    assert torch.all(result.cost - optimum < 1e-3)
    assert torch.allclose(result.cost, toy_cost(problem, result.actions.unsqueeze(1))[:, 0])


@pytest.mark.parametrize(
    ('name', 'tol', 'overrides'),
    [
        ('cem', 0.01, {}),
        ('icem', 0.05, {}),
        ('icem', 0.05, {'icem_white_fraction': 0.5}),
        ('mppi', 0.02, {}),
    ],
)
def test_solvers_clamp_every_candidate_and_find_the_boxed_minimum(
    name: str, tol: float, overrides: dict
) -> None:
    problem = toy_problem(3, seed=4)
    low, high = -0.3, 0.6
    target = exact_minimum(problem, low, high)
    unconstrained = exact_minimum(problem, -1e9, 1e9)
    assert ((unconstrained < low) | (unconstrained > high)).any(), 'the toy must have active bounds'
    result, seen = run_solver(name, problem, low, high, generators([5, 6, 7]), **overrides)
    assert all(lo >= low and hi <= high for lo, hi in seen), 'a candidate outside the box was scored'
    assert result.actions.min() >= low and result.actions.max() <= high
    err = (result.actions - target).abs().max().item()
    assert err < tol, f'{name}: max error {err:.3f} to the constrained optimum'


@pytest.mark.parametrize('name', ['cem', 'icem', 'mppi'])
def test_batched_solve_equals_per_problem_solves(name: str) -> None:
    problem = toy_problem(3, seed=9)
    seeds = [11, 12, 13]
    batched, _ = run_solver(name, problem, -1.0, 1.0, generators(seeds), iterations=8)
    for b, seed in enumerate(seeds):
        single_problem = {'M': problem['M'], 'c': problem['c'][b : b + 1], 'goal': problem['goal'][b : b + 1]}
        single, _ = run_solver(name, single_problem, -1.0, 1.0, generators([seed]), iterations=8)
        torch.testing.assert_close(batched.actions[b], single.actions[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(batched.cost[b], single.cost[0], rtol=1e-12, atol=1e-12)


def test_colored_noise_has_unit_variance_and_the_right_colour() -> None:
    gen = torch.Generator().manual_seed(0)
    white = colored_noise((20000, 25, 2), 0.0, generator=gen)
    red = colored_noise((20000, 25, 2), 2.0, generator=gen)
    for noise in (white, red):
        assert abs(noise.var().item() - 1.0) < 0.03
    lag1 = (red[:, 1:] * red[:, :-1]).mean().item()
    assert lag1 > 0.8, 'beta=2 noise must be strongly correlated in time'
    assert abs((white[:, 1:] * white[:, :-1]).mean().item()) < 0.02


def test_icem_white_fraction_mixes_smooth_and_white_samples() -> None:
    solver = make_solver(PlannerConfig(solver='icem', icem_white_fraction=0.25))
    noise = solver.noise(2, 4000, 25, 2, torch.zeros(()), torch.Generator().manual_seed(0))
    assert noise.shape == (2, 4000, 25, 2)
    coloured, white = noise[:, :3000], noise[:, 3000:]
    for part in (coloured, white):
        assert abs(part.var().item() - 1.0) < 0.05
    assert (coloured[:, :, 1:] * coloured[:, :, :-1]).mean().item() > 0.8
    assert abs((white[:, :, 1:] * white[:, :, :-1]).mean().item()) < 0.03


def test_bad_planner_config_is_reported() -> None:
    with pytest.raises(ValueError, match='solver must be one of'):
        PlannerConfig(solver='adam')
    with pytest.raises(ValueError, match='elites'):
        PlannerConfig(samples=10, elites=20)
    with pytest.raises(ValueError, match='icem_white_fraction'):
        PlannerConfig(solver='icem', icem_white_fraction=1.5)
    with pytest.raises(ValueError, match='unknown planner config key'):
        PlannerConfig.from_dict({'sample': 3})
