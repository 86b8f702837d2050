"""SIGReg: push embeddings towards an isotropic Gaussian by testing random 1-D projections.

By Cramér-Wold, z ~ N(0, I) iff every projection <a, z> with |a| = 1 is N(0, 1). SIGReg draws M
fresh random unit directions each step, projects the batch, and averages the Epps-Pulley
goodness-of-fit statistic of each projection against N(0, 1).

Under data parallelism the statistic is computed on the global batch: every rank uses the same
directions, and the characteristic-function sums and sample counts are all-reduced with an
autograd-aware all-reduce. Its backward all-reduces the gradient too, so each rank's local
gradient is ``world_size`` times its share of the global one, and DDP's gradient averaging then
yields exactly the gradient of one process that saw the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def quadrature(
    knots: int = 17, t_max: float = 3.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots ``t`` (K,) on [0, t_max] and weights (K,) for integrals against the Gaussian window.

    sum_k w_k f(t_k) ~ ∫_{-t_max}^{t_max} f(t) e^{-t²/2} dt for an even f.

    Trapezoid rule on [0, t_max] for an even integrand f, doubled for the negative half, times the
    Gaussian weight e^{-t²/2}.
    """
    if knots < 2:
        raise ValueError(f'knots must be >= 2, got {knots}')
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float32, device=device)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2.0 * dt, dtype=torch.float32, device=device)
    weights[0] = weights[-1] = dt
    return t, weights * torch.exp(-0.5 * t * t)


def characteristic_sums(u: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over samples of cos(t u) and sin(t u): u (..., N, M), t (K,) -> two (..., M, K) tensors."""
    x = u.unsqueeze(-1) * t
    return torch.cos(x).sum(dim=-3), torch.sin(x).sum(dim=-3)


def statistic_from_sums(
    cos_sum: torch.Tensor,
    sin_sum: torch.Tensor,
    n: torch.Tensor | float,
    t: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Epps-Pulley statistics (..., M) from the characteristic-function sums of ``n`` samples."""
    gauss = torch.exp(-0.5 * t * t)
    err = (cos_sum / n - gauss).square() + (sin_sum / n).square()
    return (err @ weights) * n


def epps_pulley(u: torch.Tensor, knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    r"""Epps-Pulley normality statistic of each column of ``u`` (N, M) against N(0, 1); returns (M,).

    .. math::

        T_m = N \int_{-t_{max}}^{t_{max}} \bigl|\hat\varphi_m(t) - e^{-t^2/2}\bigr|^2 \, e^{-t^2/2} \, dt,
        \qquad \hat\varphi_m(t) = \frac{1}{N} \sum_{i=1}^{N} e^{i t u_{im}}

    where :math:`|\hat\varphi - e^{-t^2/2}|^2 = (\overline{\cos}(tu) - e^{-t^2/2})^2 + \overline{\sin}(tu)^2`.
    The integrand is even, so the integral is twice the trapezoid rule over ``knots`` equally
    spaced points on [0, t_max]. For N(0, 1) samples T_m stays O(1) (its mean does not grow with
    N); for any other distribution it grows linearly with N.
    """
    if u.dim() != 2:
        raise ValueError(f'u must be (N, M) projected samples, got shape {tuple(u.shape)}')
    u = u.float()
    t, weights = quadrature(knots, t_max, u.device)
    cos_sum, sin_sum = characteristic_sums(u, t)
    return statistic_from_sums(cos_sum, sin_sum, float(u.shape[0]), t, weights)


def random_directions(
    dim: int, num: int, seed: int, step: int, device: torch.device | str = 'cpu'
) -> torch.Tensor:
    """``num`` unit vectors in R^dim as columns (dim, num), a pure function of (seed, step).

    Every rank gets the same directions for the same step, and a resumed run draws the same ones.
    """
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    a = torch.randn(dim, num, generator=generator)
    return (a / a.norm(dim=0, keepdim=True)).to(device)


class AllReduceSum(torch.autograd.Function):
    """Sum a tensor over all ranks; the backward sums the incoming gradients over ranks too.

    Every rank computes the same loss from the summed tensor, so the gradient reaching rank r's
    input is the sum of all ranks' (identical) upstream gradients: world_size times the true one,
    which DDP's gradient averaging divides back out.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = tensor.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


class SIGReg(nn.Module):
    """Sketched isotropic-Gaussian regulariser: mean Epps-Pulley statistic over random projections.

    ``forward(z)`` takes embeddings (N, D) or (T, N, D) (one statistic per frame t over the N
    samples, then averaged over frames and projections). Directions are fresh every call,
    drawn from ``seed`` and a step counter (pass ``step`` to pin it, e.g. on resume). With
    ``sync`` (default) and an initialised process group the statistic covers the global batch.
    """

    def __init__(
        self,
        num_projections: int = 1024,
        knots: int = 17,
        t_max: float = 3.0,
        seed: int = 0,
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.sync = sync
        self.num_projections = num_projections
        self.knots = knots
        self.t_max = t_max
        self.seed = seed
        self.calls = 0

    def forward(self, z: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """SIGReg value (scalar) of ``z``; computed in float32 even under autocast."""
        if z.dim() not in (2, 3):
            raise ValueError(f'SIGReg expects (N, D) or (T, N, D) embeddings, got {tuple(z.shape)}')
        if step is None:
            step = self.calls
            self.calls += 1
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            directions = random_directions(z.shape[-1], self.num_projections, self.seed, step, z.device)
            t, weights = quadrature(self.knots, self.t_max, z.device)
            cos_sum, sin_sum = characteristic_sums(z @ directions, t)
            n = torch.tensor(float(z.shape[-2]), device=z.device)
            if self.sync and _distributed():
                sums = AllReduceSum.apply(torch.stack([cos_sum, sin_sum]))
                cos_sum, sin_sum = sums[0], sums[1]
                torch.distributed.all_reduce(n)
            return statistic_from_sums(cos_sum, sin_sum, n, t, weights).mean()


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred embeddings (N, D); in [1, min(N, D)].

    A healthy embedding keeps it high; a collapse (all samples on a line or a point) drives it
    towards 1. Used as the embedding-health figure in training logs.
    """
    z = z.detach().float().reshape(-1, z.shape[-1])
    z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if not torch.isfinite(total) or total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))
