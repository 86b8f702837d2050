"""Model-predictive path integral (MPPI): a softmax-weighted average of all samples, not just elites."""

from __future__ import annotations

import torch

from lewm_ros.planning.solver import CostFn, Generators, Solver, SolveResult, clamp_, normal_


class MPPISolver(Solver):
    """Iterated MPPI.

    Each iteration samples around the mean (candidate 0 is the mean), clamps, and moves the mean
    to ``sum_i w_i u_i`` with ``w = softmax(-(c - c_min) / (temperature * (c_max - c_min)))``.
    Scaling the temperature by the cost spread makes it scale-free: 0.1 means "a candidate 10 %
    of the range worse than the best gets e^-1 of its weight" whatever the embedding size.
    With ``mppi_adapt_std`` (default) the spread is refitted to the weighted samples too (as in
    covariance-adapting MPPI); otherwise it stays at its initial value, which with the planner's
    std of 1 and tight action bounds leaves a biased, noisy mean (on the toy QP of the tests:
    error 0.5 with a fixed std against < 1e-3 adapted).
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
        """Run ``config.iterations`` MPPI updates; returns the final weighted mean."""
        cfg = self.config
        B, N = mean.shape[0], cfg.samples
        mean = clamp_(mean.clone(), low, high)
        std = std.clone()
        candidates = torch.empty((B, N, *mean.shape[1:]), device=mean.device, dtype=mean.dtype)
        extra = (1,) * (mean.dim() - 1)
        done = 0
        for _ in self.iterations(deadline):
            done += 1
            normal_(candidates, generator)
            candidates.mul_(std.unsqueeze(1)).add_(mean.unsqueeze(1))
            candidates[:, 0] = mean
            clamp_(candidates, low, high)
            costs = cost_fn(candidates).to(mean.dtype)
            c_min = costs.min(dim=1, keepdim=True).values
            spread = (costs.max(dim=1, keepdim=True).values - c_min).clamp_min(torch.finfo(costs.dtype).tiny)
            weights = torch.softmax(-(costs - c_min) / (cfg.mppi_temperature * spread), dim=1)
            weights = weights.view(B, N, *extra)
            mean = (weights * candidates).sum(dim=1)
            if cfg.mppi_adapt_std:
                var = (weights * (candidates - mean.unsqueeze(1)).square()).sum(dim=1)
                std = var.sqrt().clamp_min(cfg.min_std)
        clamp_(mean, low, high)  # a convex combination is in the box already; this removes rounding
        cost = self._evaluate_mean(cost_fn, mean)
        return SolveResult(actions=mean, cost=cost, std=std, evaluations=done * N + 1)
