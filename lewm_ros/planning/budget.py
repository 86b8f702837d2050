"""Fit a plan into a control loop's time budget, from a measurement of what a plan costs here.

A plan of S samples and I iterations costs about ``overhead + I * (per_iteration + S * per_sample)``
seconds on a given machine and model. ``measure_plan_cost`` times a few small plans (one and two
iterations, two population sizes) and fits those three numbers; ``fit_to_budget`` then shrinks a
planner config whose estimate exceeds the budget, so a ``samples: 100000`` typed by mistake
cannot block a robot's control loop for 20 s or take gigabytes (the sample count also bounds
the rollout's memory). The planner's ``deadline`` argument guards the rest at run time: no new
iteration starts once the budget is spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from lewm_ros.planning.config import PlannerConfig

MIN_SAMPLES = 8  # below this a sampling planner stops being one


@dataclass(frozen=True)
class PlanCost:
    """Seconds per plan: ``overhead + iterations * (per_iteration + samples * per_sample)``."""

    overhead: float
    per_iteration: float
    per_sample: float

    def seconds(self, samples: int, iterations: int) -> float:
        """Estimated wall time of one plan."""
        return self.overhead + iterations * (self.per_iteration + samples * self.per_sample)


def measure_plan_cost(planner: object, repeats: int = 2, small: int = 16, large: int = 64) -> PlanCost:
    """Time plans of ``planner``'s model and horizon at two sizes; return the fitted cost.

    ``planner`` is a ``LatentPlanner``; its own settings (solver, horizon, goal cost, threads) are
    used with other sample and iteration counts. Each point is the fastest of ``repeats`` plans
    after a warm-up, so one-off start-up costs (kernel selection, allocation) do not count.
    """
    from lewm_ros.planning.planner import LatentPlanner

    assert isinstance(planner, LatentPlanner)
    model, cfg = planner.model, planner.config
    T, D = planner.history, planner.embed_dim
    frames = torch.zeros(1, T, D, device=planner.device)
    blocks = torch.zeros(1, T - 1, planner.frameskip, planner.action_dim) if T > 1 else None
    goal = torch.zeros(1, D, device=planner.device)

    def timed(samples: int, iterations: int) -> float:
        config = cfg.replace(samples=samples, iterations=iterations, elites=min(cfg.elites, samples // 2),
                             warm_start=False, goal_metric='euclidean')
        probe = LatentPlanner(model, config, planner.action_low.cpu(), planner.action_high.cpu())
        best = math.inf
        for _ in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            probe.plan(frames, blocks, goal)
            best = min(best, time.perf_counter() - start)
        return best

    one_small, one_large, two_small = timed(small, 1), timed(large, 1), timed(small, 2)
    per_sample = max(0.0, (one_large - one_small) / (large - small))
    iteration = max(two_small - one_small, small * per_sample)  # one iteration at `small` samples
    per_iteration = max(0.0, iteration - small * per_sample)
    overhead = max(0.0, one_small - iteration)
    return PlanCost(overhead, per_iteration, per_sample)


def fit_to_budget(config: PlannerConfig, cost: PlanCost, budget: float) -> tuple[PlannerConfig, str | None]:
    """``config`` shrunk (samples and iterations alike, elites in proportion) to fit ``budget`` seconds.

    Returns the config and a note saying what was capped and why, or None when nothing had to
    change. When even ``MIN_SAMPLES`` x 1 does not fit, that is what is returned (the deadline
    then stops the plan after its first iteration), with a note that says so.
    """
    samples, iterations = config.samples, config.iterations
    estimate = cost.seconds(samples, iterations)
    if estimate <= budget:
        return config, None
    scale = math.sqrt(max(budget - cost.overhead, 0.0) / max(estimate - cost.overhead, 1e-12))
    samples = max(MIN_SAMPLES, min(samples, int(samples * scale)))
    iterations = max(1, min(iterations, int(iterations * scale)))
    while iterations > 1 and cost.seconds(samples, iterations) > budget:
        iterations -= 1
    while samples > MIN_SAMPLES and cost.seconds(samples, iterations) > budget:
        samples = max(MIN_SAMPLES, int(samples * 0.9))
    samples = min(samples, config.samples)
    elites = max(2, min(samples // 2, round(config.elites * samples / config.samples)))
    elites = min(elites, config.elites)
    fitted = config.replace(samples=samples, iterations=iterations, elites=elites)
    new_estimate = cost.seconds(samples, iterations)
    note = (f'plan budget {budget * 1e3:.0f} ms: {config.samples} samples x {config.iterations} iterations '
            f'would take ~{estimate * 1e3:.0f} ms here, capped to {samples} x {iterations} '
            f'(elites {elites}, ~{new_estimate * 1e3:.0f} ms)')
    if new_estimate > budget:
        note += '; even that exceeds the budget: plans stop after their first iteration'
    return fitted, note
