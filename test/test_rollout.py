"""The cached latent rollout gives the numbers of the naive (reference-style) rollout."""

from __future__ import annotations

import pytest
import torch

from lewm_ros.model import LeWM, ModelConfig
from lewm_ros.planning import CachedRollout, naive_rollout
from lewm_ros.planning.rollout import token_layout


def random_model(history: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> LeWM:
    """A small LeWM whose AdaLN layers are not zero, so actions really change the prediction."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=16, patch_size=8, encoder_width=16, encoder_depth=1, encoder_heads=2,
        encoder_mlp_dim=32, embed_dim=24, projector_hidden=48, action_hidden=32, action_dim=2,
        frameskip=3, history=history, predictor_depth=3, predictor_heads=4, predictor_head_dim=8,
        predictor_mlp_dim=48, predictor_dropout=0.0,
    )  # fmt: skip
    model = LeWM(cfg).to(dtype).eval()
    with torch.no_grad():
        for block in model.predictor.blocks:
            block.ada.weight.normal_(std=0.3)
            block.ada.bias.normal_(std=0.1)
        model.predictor.pos_embed.normal_(std=0.5)
    return model


def inputs(shape: dict[str, int], dtype=torch.float64, seed: int = 1):
    B, T, N, H, D = (shape[k] for k in 'BTNHD')
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, D, generator=gen, dtype=dtype)
    a = torch.randn(B, T - 1, D, generator=gen, dtype=dtype)
    c = torch.randn(B, N, H, D, generator=gen, dtype=dtype)
    return z, a, c


@torch.no_grad()
def rollout_by_definition(model: LeWM, z: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One candidate, one step at a time: predict from the last ``history`` frames (fewer at first).

    Written without ``token_layout`` (which both rollouts share): frame i pairs with action block i,
    the executed ones then the candidate's, and each prediction is appended as the next frame.
    """
    B, N, H, D = c.shape
    out = torch.empty(B, N, H, D, dtype=z.dtype)
    for b in range(B):
        for n in range(N):
            frames, blocks = list(z[b]), [*a[b], *c[b, n]]
            for k in range(H):
                window = range(max(0, len(frames) - model.config.history), len(frames))
                x = torch.stack([frames[i] for i in window])[None]
                cond = torch.stack([blocks[i] for i in window])[None]
                frames.append(model.predict(x, cond)[0, -1])
                out[b, n, k] = frames[-1]
    return out


def test_token_layout_by_hand() -> None:
    # (first token, window length) of step k after T observed frames, history W
    assert token_layout(1, 0, 3) == (0, 1) and token_layout(1, 2, 3) == (0, 3)  # the window grows ...
    assert token_layout(1, 3, 3) == (1, 3) and token_layout(5, 0, 3) == (2, 3)  # ... then slides
    assert token_layout(2, 4, 1) == (5, 1)


@pytest.mark.parametrize('history', [1, 2, 3, 4])
@pytest.mark.parametrize('observed', [1, 2, 3, 5])
def test_cached_rollout_equals_naive_rollout(history: int, observed: int) -> None:
    model = random_model(history)
    z, a, c = inputs(dict(B=2, T=observed, N=5, H=6, D=24))
    expected = naive_rollout(model.predictor, z, a, c, history)
    # the reference itself, against a rollout that does not share its window arithmetic (2 candidates)
    by_definition = rollout_by_definition(model, z, a, c[:, :2])
    torch.testing.assert_close(expected[:, :2], by_definition, rtol=0, atol=1e-12)
    rollout = CachedRollout(model.predictor)
    rollout.prepare(z, a, horizon=6)
    got = rollout(c, return_all=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(rollout(c), expected[:, :, -1], rtol=0, atol=1e-12)
    # the rollout depends on every observed frame inside the window, and on every candidate block
    assert expected.abs().mean() > 0.1
    if observed > 1 and history > 1:
        z2 = z.clone()
        # a non-constant change (LayerNorm removes constant offsets)
        z2[:, -2] += torch.linspace(-1, 1, z.shape[-1], dtype=z.dtype)
        assert not torch.allclose(naive_rollout(model.predictor, z2, a, c, history), expected)


def test_cached_rollout_is_reusable_across_calls_and_batches() -> None:
    model = random_model(3)
    z, a, c = inputs(dict(B=3, T=3, N=7, H=4, D=24))
    rollout = CachedRollout(model.predictor)
    rollout.prepare(z, a, horizon=4)
    first = rollout(c)
    for _ in range(2):  # the solver calls it many times per plan, with other candidate counts too
        torch.testing.assert_close(rollout(c), first, rtol=0, atol=0)
    torch.testing.assert_close(rollout(c[:, :1]), first[:, :1], rtol=0, atol=1e-12)


def test_bfloat16_rollout_stays_close_to_float32() -> None:
    model = random_model(3, dtype=torch.float32)
    z, a, c = inputs(dict(B=1, T=3, N=16, H=5, D=24), dtype=torch.float32)
    exact = naive_rollout(model.predictor, z, a, c, 3)[:, :, -1]
    rollout = CachedRollout(model.predictor, dtype=torch.bfloat16)
    rollout.prepare(z, a, horizon=5)
    approx = rollout(c)
    assert approx.dtype == torch.float32
    rel = (approx - exact).norm() / exact.norm()
    assert rel < 0.05, f'bf16 rollout relative error {rel:.3f}'


def test_rollout_rejects_mismatched_context() -> None:
    model = random_model(3)
    z, a, _ = inputs(dict(B=2, T=3, N=1, H=1, D=24))
    rollout = CachedRollout(model.predictor)
    with pytest.raises(ValueError, match='executed action blocks'):
        rollout.prepare(z, a[:, :1], horizon=2)
    with pytest.raises(RuntimeError, match='prepare'):
        CachedRollout(model.predictor)(torch.zeros(2, 1, 1, 24, dtype=torch.float64))
