"""Improved CEM (iCEM, Pinneri et al. 2020): coloured noise, shrinking population, elite carry-over.

Coloured (1/f^beta) noise over time makes samples smooth action sequences instead of white
jitter, the population shrinks by ``icem_population_decay`` per iteration (most of the search
happens early), a share of the previous elites is re-scored with the new samples, the refit uses
momentum, and the best sequence ever scored is returned.

Optionally (``icem_white_fraction``) a share of each iteration's samples uses white noise: smooth
coloured samples explore far (e.g. find a door), white ones fine-tune where the plan stops.
"""

from __future__ import annotations

import math
import time

import torch

from lewm_ros.planning.cem import gather_candidates
from lewm_ros.planning.solver import CostFn, Generators, Solver, SolveResult, clamp_, normal_


def colored_noise(
    shape: tuple[int, ...],
    beta: float,
    *,
    device: torch.device | str = 'cpu',
    dtype: torch.dtype = torch.float32,
    generator: Generators = None,
) -> torch.Tensor:
    """Gaussian noise of ``shape`` (..., T, A), coloured with power spectrum 1/f^beta along T.

    Every element has unit variance (exactly, not just asymptotically): white noise is filtered in
    the frequency domain and divided by the filter's RMS gain. ``beta = 0`` is white noise.
    """
    white = normal_(torch.empty(shape, device=device, dtype=torch.float32), generator)
    T = shape[-2]
    if beta == 0 or T < 2:
        return white.to(dtype)
    freqs = torch.fft.rfftfreq(T, device=device)
    freqs[0] = 1.0 / T  # the DC bin gets the lowest resolved frequency's gain
    gain = freqs.pow(-beta / 2.0)
    power = gain.square()
    # RMS gain over the full (two-sided) spectrum: DC and, for even T, Nyquist appear once.
    total = power[0] + 2 * power[1:].sum() - (power[-1] if T % 2 == 0 else 0.0)
    spectrum = torch.fft.rfft(white, dim=-2) * gain.unsqueeze(-1)
    noise = torch.fft.irfft(spectrum, n=T, dim=-2) / torch.sqrt(total / T)
    return noise.to(dtype)


class ICEMSolver(Solver):
    """iCEM on sequences shaped (*time, A): all dimensions but the last are time, flattened.

    For the planner that is (horizon, frameskip, A), so the noise is coloured over the
    ``horizon * frameskip`` env steps of a plan, not just over its blocks.
    """

    def population(self, iteration: int) -> int:
        """Number of fresh samples in ``iteration`` (0-based)."""
        cfg = self.config
        size = int(cfg.samples * cfg.icem_population_decay ** (-iteration))
        return min(cfg.samples, max(size, 2 * cfg.elites))

    def noise(
        self,
        batch: int,
        n: int,
        time_steps: int,
        action_dim: int,
        like: torch.Tensor,
        generator: Generators,
    ) -> torch.Tensor:
        """Unit-variance noise (B, n, T, A): coloured, the last ``icem_white_fraction`` of the n white."""
        cfg = self.config
        white = int(round(cfg.icem_white_fraction * n))
        parts = []
        for count, beta in ((n - white, cfg.icem_noise_beta), (white, 0.0)):
            if count > 0:
                parts.append(
                    colored_noise(
                        (batch, count, time_steps, action_dim),
                        beta,
                        device=like.device,
                        dtype=like.dtype,
                        generator=generator,
                    )
                )
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

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
        """Run ``config.iterations`` iCEM iterations; returns the best sequence scored."""
        cfg = self.config
        B, K = mean.shape[0], cfg.elites
        shape = mean.shape[1:]
        time_steps = math.prod(shape[:-1]) if len(shape) > 1 else 1
        keep = int(round(cfg.icem_keep_elites * K))
        mean = clamp_(mean.clone(), low, high)
        std = std.clone()
        best_cost = torch.full((B,), math.inf, device=mean.device, dtype=torch.float32)
        best = mean.clone()
        kept: torch.Tensor | None = None
        evaluations = 0
        for it in self.iterations(deadline):
            n = self.population(it)
            noise = self.noise(B, n, time_steps, shape[-1], mean, generator).view(B, n, *shape)
            parts = [torch.addcmul(mean.unsqueeze(1), std.unsqueeze(1), noise)]
            if kept is not None and keep > 0:
                parts.append(kept)
            if it == cfg.iterations - 1 or (deadline is not None and time.monotonic() >= deadline):
                parts.append(mean.unsqueeze(1))  # the last iteration also scores the mean
            candidates = clamp_(torch.cat(parts, dim=1), low, high)
            costs = cost_fn(candidates).float()
            evaluations += candidates.shape[1]
            elite_costs, index = torch.topk(costs, min(K, candidates.shape[1]), dim=1, largest=False)
            elites = gather_candidates(candidates, index)
            improved = elite_costs[:, 0] < best_cost
            best_cost = torch.where(improved, elite_costs[:, 0], best_cost)
            best[improved] = elites[improved, 0]
            kept = elites[:, :keep]
            m = cfg.icem_momentum
            mean = m * mean + (1 - m) * elites.mean(dim=1)
            std = m * std + (1 - m) * elites.std(dim=1)
            if cfg.min_std > 0:
                std.clamp_(min=cfg.min_std)
        return SolveResult(actions=best, cost=best_cost, std=std, evaluations=evaluations)
