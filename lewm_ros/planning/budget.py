"""Fit a plan into a control loop's time budget, from a measurement of what a plan costs here.

A plan of S samples and I iterations costs about ``overhead + I * (per_iteration + S * per_sample)``
seconds on a given machine and model. ``measure_plan_cost`` times a few small plans (one and two
iterations, two population sizes) and fits those three numbers. ``fit_to_budget`` caps the
samples so that one solver iteration fits the budget, so a ``samples: 100000`` typed by mistake
cannot block a robot's control loop for 20 s or take gigabytes (the sample count also bounds the
rollout's memory); the planner's ``deadline`` argument does the rest at run time: no iteration
starts once the budget is spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

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


def _probe_inputs(planner: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    T, D = planner.history, planner.embed_dim
    frames = torch.zeros(1, T, D, device=planner.device)
    blocks = torch.zeros(1, T - 1, planner.frameskip, planner.action_dim) if T > 1 else None
    return frames, blocks, torch.zeros(1, D, device=planner.device)


def time_plan(planner: Any, samples: int, iterations: int, repeats: int = 2) -> float:
    """Seconds of the fastest of ``repeats`` plans (after a warm-up) with other sample/iteration counts.

    ``planner`` is a ``LatentPlanner``; its model, horizon, solver, goal cost and threads are used.
    """
    from lewm_ros.planning.planner import LatentPlanner

    config = planner.config.replace(samples=samples, iterations=iterations,
                                    elites=min(planner.config.elites, samples // 2),
                                    warm_start=False, goal_metric='euclidean')
    probe = LatentPlanner(planner.model, config, planner.action_low.cpu(), planner.action_high.cpu(),
                          controller=planner.controller)
    inputs = _probe_inputs(planner)
    best = math.inf
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        probe.plan(*inputs)
        best = min(best, time.perf_counter() - start)
    return best


def measure_plan_cost(planner: Any, small: int = 16, large: int = 64, rounds: int = 3) -> PlanCost:
    """Time plans of ``planner``'s model and settings at two sizes; return the fitted cost.

    The three probes (small x 1, large x 1, small x 2 iterations) are interleaved over
    ``rounds`` and each keeps its fastest time, so a moment of load on a shared machine skews
    none of them alone. Should the fitted cost per sample still come out zero or negative, the
    large probe's whole time is charged to its samples (an over-estimate: it caps more, never less).
    """
    if planner.config.solver == 'controller':  # one forward pass: no samples, no iterations
        return PlanCost(min(time_plan(planner, 2, 1, repeats=1) for _ in range(rounds)), 0.0, 0.0)
    probes = {(small, 1): math.inf, (large, 1): math.inf, (small, 2): math.inf}
    for _ in range(rounds):
        for size in probes:
            probes[size] = min(probes[size], time_plan(planner, *size, repeats=1))
    one_small, one_large, two_small = probes[(small, 1)], probes[(large, 1)], probes[(small, 2)]
    per_sample = (one_large - one_small) / (large - small)
    if per_sample <= 0:
        per_sample = one_large / large
    iteration = max(two_small - one_small, small * per_sample)  # one iteration at `small` samples
    per_iteration = max(0.0, iteration - small * per_sample)
    overhead = max(0.0, one_small - iteration)
    return PlanCost(overhead, per_iteration, per_sample)


def fit_measured(planner: Any, cost: PlanCost, budget: float) -> tuple[PlannerConfig, str | None]:
    """``fit_to_budget`` for ``planner.config``, with a capped population checked by timing it.

    The cost model is a straight line through small plans; thousands of samples can cost more
    per sample (memory traffic), so when the samples are capped one iteration at the capped size
    is timed and the cap lowered until it fits (at most three tries).
    """
    config, note = fit_to_budget(planner.config, cost, budget)
    for _ in range(3):
        if config.samples >= planner.config.samples or config.samples <= MIN_SAMPLES:
            break
        seconds = time_plan(planner, config.samples, 1, repeats=1)
        if seconds <= budget:
            break
        samples = max(MIN_SAMPLES, int(config.samples * 0.9 * budget / seconds))
        elites = min(config.elites, max(2, samples // 2))
        config = config.replace(samples=samples, elites=elites)
        note = f'{note}; timed at {seconds * 1e3:.0f} ms per iteration: samples lowered to {samples}'
    return config, note


def fit_to_budget(config: PlannerConfig, cost: PlanCost, budget: float) -> tuple[PlannerConfig, str | None]:
    """``config`` with its samples capped so that one iteration fits ``budget`` seconds.

    Iterations are not capped here: the planner's deadline skips those that do not fit at run
    time, which follows the machine's real speed instead of a measurement taken at start. What
    no deadline can interrupt is one iteration, and its memory grows with the samples: that is
    what is capped (elites in proportion). Returns the config and a note saying what does not
    fit and what was done, or None when the whole plan fits.
    """
    estimate = cost.seconds(config.samples, config.iterations)
    if estimate <= budget or config.solver == 'controller':  # no population to cap
        return config, None
    samples, elites = config.samples, config.elites
    note = (f'plan budget {budget * 1e3:.0f} ms: {config.samples} samples x {config.iterations} iterations '
            f'would take ~{estimate * 1e3:.0f} ms here')
    if cost.seconds(samples, 1) > budget:
        room = budget - cost.overhead - cost.per_iteration
        samples = max(MIN_SAMPLES, int(room / cost.per_sample) if cost.per_sample > 0 else MIN_SAMPLES)
        samples = min(samples, config.samples)
        while samples > MIN_SAMPLES and cost.seconds(samples, 1) > budget:  # rounding
            samples -= 1
        scaled = round(config.elites * samples / config.samples)
        elites = min(config.elites, max(2, min(samples // 2, scaled)))
        note += f'; samples capped to {samples} (elites {elites}) so that one iteration fits'
    per_iteration = cost.per_iteration + samples * cost.per_sample
    fitting = int((budget - cost.overhead) / per_iteration) if per_iteration > 0 else config.iterations
    fitting = max(1, min(config.iterations, fitting))
    note += (f'; about {fitting} of the {config.iterations} iterations fit, the solver skips the rest '
             '(raise max_plan_time or lower samples/iterations to plan in full)')
    return config.replace(samples=samples, elites=elites), note
