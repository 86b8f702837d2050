"""Epps-Pulley statistic and the SIGReg module."""

import math

import numpy as np
import pytest
import torch

from training.fit.sigreg import SIGReg, effective_rank, epps_pulley, random_directions

N, M = 512, 256


def direct_epps_pulley(column: np.ndarray, t_max: float = 3.0) -> float:
    """The definition, integrated on a fine grid with complex arithmetic."""
    t = np.linspace(-t_max, t_max, 60001)
    phi = np.exp(1j * np.outer(t, column)).mean(axis=1)
    integrand = np.abs(phi - np.exp(-(t**2) / 2)) ** 2 * np.exp(-(t**2) / 2)
    return len(column) * float(np.trapezoid(integrand, t))


def null_mean(t_max: float = 3.0) -> float:
    """E[T] for N(0, 1) samples: ∫ (1 - e^{-t²}) e^{-t²/2} dt, independent of N."""
    t = np.linspace(-t_max, t_max, 60001)
    return float(np.trapezoid((1 - np.exp(-(t**2))) * np.exp(-(t**2) / 2), t))


def test_gaussian_samples_give_the_null_mean():
    gen = torch.Generator().manual_seed(0)
    stats = epps_pulley(torch.randn(N, M, generator=gen))
    assert stats.shape == (M,)
    # each projection's statistic is O(1); its mean over M projections is within sampling error of E[T]
    assert abs(stats.mean().item() - null_mean()) < 4 * stats.std().item() / math.sqrt(M)
    assert stats.mean().item() / N < 0.005  # the distance itself is ~0


@pytest.mark.parametrize(
    'name, sampler',
    [
        ('constant', lambda g: torch.zeros(N, M)),
        ('uniform', lambda g: (torch.rand(N, M, generator=g) * 2 - 1) * math.sqrt(3.0)),  # unit variance
        ('bimodal', lambda g: torch.randint(0, 2, (N, M), generator=g).float() * 2 - 1),  # unit variance
    ],
)
def test_non_gaussian_samples_give_large_statistics(name, sampler):
    gen = torch.Generator().manual_seed(1)
    gaussian = epps_pulley(torch.randn(N, M, generator=gen)).mean().item()
    other = epps_pulley(sampler(gen)).mean().item()
    assert other > 5 * gaussian, name


def test_statistic_grows_with_batch_size_only_off_the_null():
    gen = torch.Generator().manual_seed(2)
    small, large = (
        epps_pulley(torch.randn(128, M, generator=gen)),
        epps_pulley(torch.randn(2048, M, generator=gen)),
    )
    assert abs(small.mean() - large.mean()) < 0.3
    uniform = lambda n: (torch.rand(n, M, generator=gen) * 2 - 1) * math.sqrt(3.0)  # noqa: E731
    assert epps_pulley(uniform(2048)).mean() > 8 * epps_pulley(uniform(128)).mean()


def test_matches_direct_integration_of_the_definition():
    gen = torch.Generator().manual_seed(3)
    u = torch.cat(
        [
            torch.randn(60, 2, generator=gen, dtype=torch.float64),
            torch.rand(60, 2, generator=gen, dtype=torch.float64),
        ],
        1,
    )
    expected = np.array([direct_epps_pulley(u[:, m].numpy()) for m in range(u.shape[1])])
    np.testing.assert_allclose(epps_pulley(u, knots=2001).numpy(), expected, rtol=1e-4)
    # the 17-knot trapezoid rule of the reference is already accurate for this smooth integrand
    np.testing.assert_allclose(epps_pulley(u).numpy(), expected, rtol=2e-3)
    np.testing.assert_allclose(
        epps_pulley(u, t_max=2.0, knots=4001).numpy(),
        [direct_epps_pulley(u[:, m].numpy(), 2.0) for m in range(4)],
        rtol=1e-4,
    )


def test_epps_pulley_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r'\(N, M\)'):
        epps_pulley(torch.randn(10))


def test_sigreg_directions_are_fresh_each_step_and_reproducible():
    a0, a1 = random_directions(8, 16, seed=0, step=0), random_directions(8, 16, seed=0, step=1)
    assert not torch.allclose(a0, a1)
    assert torch.equal(a0, random_directions(8, 16, seed=0, step=0))
    torch.testing.assert_close(a0.norm(dim=0), torch.ones(16))
    sigreg = SIGReg(num_projections=64, seed=0)
    z = torch.randn(256, 8, generator=torch.Generator().manual_seed(4)) * 2.0
    first, second = sigreg(z), sigreg(z)
    assert first != second  # new directions on the second call
    assert sigreg(z, step=0) == first


def test_sigreg_prefers_isotropic_gaussian_and_gives_gradients():
    gen = torch.Generator().manual_seed(5)
    sigreg = SIGReg(num_projections=256, seed=0)
    gaussian = torch.randn(3, 256, 16, generator=gen)  # (T, N, D): a statistic per frame
    squashed = gaussian.clone()
    squashed[..., 0] *= 4.0  # anisotropic
    collapsed = gaussian[:, :, :1].expand(-1, -1, 16)  # rank 1
    values = [sigreg(x, step=0).item() for x in (gaussian, squashed, collapsed)]
    assert values[0] < values[1] and values[0] < values[2]
    z = squashed.clone().requires_grad_(True)
    sigreg(z, step=0).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_sigreg_runs_in_float32_under_bf16_autocast():
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(6))
    reference = SIGReg(num_projections=32)(z, step=0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value = SIGReg(num_projections=32)(z.bfloat16(), step=0)
    assert value.dtype == torch.float32
    assert abs(value.item() - reference.item()) < 0.05 * reference.item()


def test_effective_rank_separates_healthy_from_collapsed():
    gen = torch.Generator().manual_seed(7)
    healthy = torch.randn(512, 16, generator=gen)
    line = torch.randn(512, 1, generator=gen) * torch.randn(1, 16, generator=gen)
    assert effective_rank(healthy) > 14
    assert effective_rank(line) < 1.1
    assert effective_rank(torch.zeros(10, 4)) == 1.0
