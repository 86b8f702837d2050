"""Plans fit a control loop's time budget: the measured cost model, the cap, and the solver deadline."""

from __future__ import annotations

import time

import pytest
import torch

from lewm_ros.model import LeWM, ModelConfig
from lewm_ros.planning.budget import MIN_SAMPLES, PlanCost, fit_to_budget, measure_plan_cost
from lewm_ros.planning.config import PlannerConfig
from lewm_ros.planning.planner import LatentPlanner

COST = PlanCost(overhead=0.002, per_iteration=0.001, per_sample=0.0001)  # 300 x 30: 0.93 s


def test_a_plan_that_fits_is_left_alone() -> None:
    config = PlannerConfig(samples=64, iterations=5, elites=8)
    assert fit_to_budget(config, COST, budget=1.0) == (config, None)


def test_iterations_that_do_not_fit_are_left_to_the_deadline_and_the_note_says_so() -> None:
    config = PlannerConfig(samples=300, iterations=30, elites=30)  # one iteration: 33 ms, all: 0.93 s
    fitted, note = fit_to_budget(config, COST, budget=0.2)
    assert fitted == config  # one iteration fits: nothing to cap, the deadline skips the rest
    assert note and '300 samples x 30 iterations' in note and 'about 6 of the 30 iterations' in note


@pytest.mark.parametrize('budget', [0.0205, 0.005])
def test_samples_are_capped_so_that_one_iteration_fits(budget: float) -> None:
    config = PlannerConfig(samples=300, iterations=30, elites=30)
    fitted, note = fit_to_budget(config, COST, budget)
    assert COST.seconds(fitted.samples, 1) <= budget
    assert COST.seconds(fitted.samples + 10, 1) > budget  # not capped more than needed
    assert fitted.iterations == 30 and 2 <= fitted.elites <= fitted.samples // 2
    assert f'samples capped to {fitted.samples}' in note


def test_a_budget_nothing_fits_gives_the_smallest_population_and_says_so() -> None:
    fitted, note = fit_to_budget(PlannerConfig(samples=100000, iterations=30, elites=30), COST, budget=0.001)
    assert fitted.samples == MIN_SAMPLES
    assert 'about 1 of the 30 iterations' in note


@pytest.fixture(scope='module')
def planner() -> LatentPlanner:
    torch.manual_seed(0)
    model = LeWM(ModelConfig.from_preset('micro', frameskip=2))
    config = PlannerConfig(samples=64, iterations=4, elites=8, horizon=2, receding_horizon=1, threads=1)
    return LatentPlanner(model, config, [-1.0, -1.0], [1.0, 1.0])


def test_measured_cost_predicts_a_plan_of_another_size(planner: LatentPlanner) -> None:
    cost = measure_plan_cost(planner)
    assert cost.per_sample > 0
    config = planner.config.replace(samples=128, iterations=6, elites=8)
    probe = LatentPlanner(planner.model, config, [-1.0, -1.0], [1.0, 1.0])
    frames, goal = torch.zeros(1, 3, planner.embed_dim), torch.zeros(1, planner.embed_dim)
    blocks = torch.zeros(1, 2, 2, 2)
    probe.plan(frames, blocks, goal)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        probe.plan(frames, blocks, goal)
        times.append(time.perf_counter() - start)
    # The cost model is a straight line through small plans: it must predict a larger one to within
    # the spread a shared machine adds to either measurement (a factor 4 each way).
    actual = min(times)
    assert actual / 4 < cost.seconds(128, 6) < 4 * actual + 0.002, (cost, times)


@pytest.mark.parametrize('solver', ['cem', 'icem', 'mppi'])
def test_a_past_deadline_stops_the_solver_after_one_iteration(planner: LatentPlanner, solver: str) -> None:
    probe = LatentPlanner(planner.model, planner.config.replace(solver=solver), [-1.0, -1.0], [1.0, 1.0])
    frames, goal = torch.zeros(1, 1, planner.embed_dim), torch.zeros(1, planner.embed_dim)
    full = probe.plan(frames, None, goal)
    cut = probe.plan(frames, None, goal, deadline=time.monotonic() - 1.0)
    assert full.evaluations >= 4 * 40  # every iteration ran
    assert cut.evaluations <= 64 + 1 + 64  # the first iteration only (plus the scored mean / kept elites)
    assert torch.all(cut.sequence.abs() <= 1.0)
