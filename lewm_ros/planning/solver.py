"""The small interface every sampling-based solver shares, and the factory that picks one by name.

A solver minimises a batched cost over action sequences. It never sees the world model: the
planner hands it ``cost_fn``, which maps candidates ``(B, N, *S)`` to costs ``(B, N)`` (B
independent problems, e.g. environments, N candidates each, S the shape of one sequence). All
work is in normalised action space, and every candidate a solver evaluates or returns lies inside
the box ``[low, high]`` (broadcast against S).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from lewm_ros.planning.config import PlannerConfig

CostFn = Callable[[torch.Tensor], torch.Tensor]
# One generator for the whole batch, or one per problem: with one per problem, problem b draws the
# same noise whether it is solved alone or batched with others, so batching never changes a plan.
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SolveResult:
    """What a solve returns (normalised units).

    ``actions`` (B, *S) is the solution, ``cost`` (B,) its cost as evaluated by ``cost_fn``,
    ``std`` (B, *S) the final sampling spread (a confidence hint), ``evaluations`` the number of
    candidate sequences evaluated per problem.
    """

    actions: torch.Tensor
    cost: torch.Tensor
    std: torch.Tensor
    evaluations: int


def normal_(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Fill ``x`` (B, ...) in place with standard normal noise; row b from ``generator[b]`` if a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return x.normal_(generator=generator)
    if len(generator) != x.shape[0]:
        raise ValueError(f'got {len(generator)} generators for a batch of {x.shape[0]} problems')
    for row, gen in zip(x, generator, strict=True):
        row.normal_(generator=gen)
    return x


def clamp_(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp ``x`` in place to the box ``[low, high]`` (tensors broadcast over the leading dims)."""
    return torch.clamp(x, min=low, max=high, out=x)


class Solver(ABC):
    """Minimise ``cost_fn`` from a Gaussian initial guess ``N(mean, std**2)`` inside ``[low, high]``."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config

    @abstractmethod
    def solve(
        self,
        cost_fn: CostFn,
        mean: torch.Tensor,
        std: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        generator: Generators = None,
        deadline: float | None = None,
    ) -> SolveResult:
        """Run the optimisation.

        Args:
            cost_fn: candidates (B, N, *S) -> costs (B, N); lower is better.
            mean: initial mean (B, *S); clamped to the box first.
            std: initial standard deviation (B, *S).
            low, high: box bounds broadcastable to S (use +-inf for an unbounded dimension).
            generator: random generator(s) on the tensors' device, for reproducible plans: one for
                the batch, or a sequence of B (one per problem, batch-independent results).
            deadline: a ``time.monotonic()`` instant after which no new iteration starts (the
                first always runs); the result is the best found so far. None: all iterations.

        """

    def iterations(self, deadline: float | None) -> Iterator[int]:
        """Iteration indices 0 .. ``config.iterations - 1``, stopping early once ``deadline`` passed."""
        for i in range(self.config.iterations):
            if i and deadline is not None and time.monotonic() >= deadline:
                return
            yield i

    @staticmethod
    def _evaluate_mean(cost_fn: CostFn, mean: torch.Tensor) -> torch.Tensor:
        """Cost of the returned mean itself (one extra candidate, 1/N of an iteration)."""
        return cost_fn(mean.unsqueeze(1))[:, 0]


def make_solver(config: PlannerConfig) -> Solver:
    """The solver named by ``config.solver``."""
    if config.solver == 'cem':
        from lewm_ros.planning.cem import CEMSolver

        return CEMSolver(config)
    if config.solver == 'icem':
        from lewm_ros.planning.icem import ICEMSolver

        return ICEMSolver(config)
    if config.solver == 'mppi':
        from lewm_ros.planning.mppi import MPPISolver

        return MPPISolver(config)
    raise ValueError(f'unknown solver {config.solver!r}; choose cem, icem or mppi')
