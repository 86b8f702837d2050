"""Cross-entropy method, as in the reference planner, with clamping and a batched population."""

from __future__ import annotations

import torch

from lewm_ros.planning.solver import CostFn, Generators, Solver, SolveResult, clamp_, normal_


def gather_candidates(candidates: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, K) of ``candidates`` (B, N, *S) -> (B, K, *S)."""
    B, N = candidates.shape[:2]
    flat = candidates.reshape(B, N, -1)
    picked = torch.gather(flat, 1, index.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))
    return picked.reshape(B, index.shape[1], *candidates.shape[2:])


class CEMSolver(Solver):
    """Sample ``samples`` sequences from N(mean, std), keep the ``elites`` cheapest, refit, repeat.

    Candidate 0 of every iteration is the current mean, so the mean is always scored. Samples are
    clamped to the box before they are scored, so the elites, the refitted mean (a convex
    combination of in-box points) and the returned plan all respect the bounds.
    """

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
        """Run ``config.iterations`` CEM iterations; returns the final mean."""
        cfg = self.config
        B, N, K = mean.shape[0], cfg.samples, cfg.elites
        mean = clamp_(mean.clone(), low, high)
        std = std.clone()
        candidates = torch.empty((B, N, *mean.shape[1:]), device=mean.device, dtype=mean.dtype)
        done = 0
        for _ in self.iterations(deadline):
            done += 1
            normal_(candidates, generator)
            candidates.mul_(std.unsqueeze(1)).add_(mean.unsqueeze(1))
            candidates[:, 0] = mean
            clamp_(candidates, low, high)
            costs = cost_fn(candidates)
            _, index = torch.topk(costs, K, dim=1, largest=False, sorted=False)
            elites = gather_candidates(candidates, index)
            mean = elites.mean(dim=1)
            std = elites.std(dim=1)
            if cfg.min_std > 0:
                std.clamp_(min=cfg.min_std)
        cost = self._evaluate_mean(cost_fn, mean)
        return SolveResult(actions=mean, cost=cost, std=std, evaluations=done * N + 1)
