"""Surprise monitor: scores, online/offline agreement, running statistics and calibration storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_rollout import random_model

from lewm_ros.checkpoint import load_checkpoint, save_checkpoint, update_metadata
from lewm_ros.model import LeWM, ModelConfig
from lewm_ros.surprise import (
    RunningStats,
    SurpriseCalibration,
    SurpriseMonitor,
    calibrate,
    scores_from_embeddings,
    surprise_scores,
)

D, FS, A, HISTORY = 64, 2, 2, 3
RHO = 0.9


def latent_world(z0: torch.Tensor, actions: torch.Tensor, mixing: torch.Tensor) -> torch.Tensor:
    """Toy latent world z_{t+1} = rho z_t + sqrt(1 - rho^2) W a_t.

    Stationary and roughly N(0, I) like SIGReg-shaped embeddings, and fully predictable from the
    last frame and the action block.
    """
    z = [z0]
    for t in range(actions.shape[1]):
        z.append(RHO * z[-1] + math.sqrt(1 - RHO**2) * actions[:, t] @ mixing.T)
    return torch.stack(z, dim=1)


def random_actions(n: int, blocks: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, blocks, FS * A, generator=gen) * 2 - 1


@pytest.fixture(scope='module')
def toy_predictor() -> tuple[LeWM, torch.Tensor]:
    """A LeWM predictor + action encoder trained (seconds) on the toy latent world."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, patch_size=8, encoder_width=16, encoder_depth=1, encoder_heads=2,
        encoder_mlp_dim=32, embed_dim=D, projector_hidden=128, action_hidden=64, action_dim=A,
        frameskip=FS, history=HISTORY, predictor_depth=2, predictor_heads=2, predictor_head_dim=32,
        predictor_mlp_dim=128, predictor_dropout=0.0,
    )  # fmt: skip
    model = LeWM(cfg)
    gen = torch.Generator().manual_seed(0)
    mixing = math.sqrt(3 / (FS * A)) * torch.randn(D, FS * A, generator=gen)  # unit variance per dim
    params = [*model.predictor.parameters(), *model.action_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(200):
        actions = random_actions(128, HISTORY, gen)
        z = latent_world(torch.randn(128, D, generator=gen), actions, mixing)
        loss = (model.predict(z[:, :HISTORY], model.embed_actions(actions)) - z[:, 1:]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), mixing


def test_surprise_is_low_on_a_predictable_sequence_and_jumps_at_a_discontinuity(toy_predictor) -> None:
    model, mixing = toy_predictor
    gen = torch.Generator().manual_seed(1)
    actions = random_actions(16, 15, gen)
    z = latent_world(torch.randn(16, D, generator=gen), actions, mixing)
    jump_at = 8
    # a teleport: from frame jump_at on, the same actions continue from an unrelated state
    jumped = z.clone()
    jumped[:, jump_at:] = latent_world(torch.randn(16, D, generator=gen), actions[:, jump_at:], mixing)
    with torch.no_grad():
        emb = model.embed_actions(actions)
        normal = scores_from_embeddings(model, z, emb)
        perturbed = scores_from_embeddings(model, jumped, emb)
    assert torch.isnan(normal[:, 0]).all()
    normal_values = normal[:, 1:].flatten()
    copy_last = (z[:, 1:] - z[:, :-1]).square().mean(-1)  # the error of predicting "nothing moves"
    assert normal_values.median() < 0.5 * copy_last.median(), 'the trained predictor must use the actions'
    assert (perturbed[:, jump_at] > normal_values.max()).all(), 'every jump must outscore every normal frame'
    # once the jump has left the window, the world is predictable again and surprise settles
    assert perturbed[:, jump_at + HISTORY :].median() < 2 * normal_values.median()


def test_monitor_online_scores_equal_the_offline_scores_and_track_statistics() -> None:
    model = random_model(HISTORY, dtype=torch.float32)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    blocks = rng.uniform(-1, 1, (6, 3, 2)).astype(np.float32)
    offline = surprise_scores(model, frames[None], blocks[None])[0]
    calibration = SurpriseCalibration(
        threshold=float(offline[1:].median()), quantile=0.5, mean=0.0, std=1.0, n=6
    )
    monitor = SurpriseMonitor(model, calibration)
    readings = [monitor.update(frames[0])] + [
        monitor.update(f, b) for f, b in zip(frames[1:], blocks, strict=True)
    ]
    assert readings[0].score is None and not readings[0].flag
    online = torch.tensor([r.score for r in readings[1:]])
    torch.testing.assert_close(online, offline[1:], rtol=1e-5, atol=1e-7)
    assert [r.flag for r in readings[1:]] == (online > calibration.threshold).tolist()
    assert readings[-1].count == 6
    assert readings[-1].mean == pytest.approx(online.double().mean().item(), rel=1e-6)
    assert readings[-1].std == pytest.approx(online.double().std(correction=0).item(), rel=1e-5)
    with pytest.raises(ValueError, match='executed_block is required'):
        monitor.update(frames[0])
    monitor.reset()
    assert monitor.update(frames[0]).score is None


def test_running_stats_are_welford_exact() -> None:
    values = np.random.default_rng(3).normal(5.0, 2.0, 1000)
    stats = RunningStats()
    for v in values:
        stats.update(float(v))
    assert stats.count == 1000
    assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
    assert stats.std == pytest.approx(values.std(), rel=1e-10)


def test_calibration_sets_the_quantile_threshold_and_round_trips_through_the_checkpoint(tmp_path) -> None:
    scores = np.random.default_rng(4).gamma(2.0, 0.1, 4000)
    scores[::100] = np.nan  # first frames of episodes have no score
    calibration = calibrate(scores, quantile=0.99, data='normal.h5', history=HISTORY)
    finite = scores[np.isfinite(scores)]
    assert calibration.n == finite.size
    assert np.mean(finite > calibration.threshold) == pytest.approx(0.01, abs=0.002)

    model = random_model(HISTORY, dtype=torch.float32)
    path = save_checkpoint(tmp_path / 'ckpt', model)
    _, meta = load_checkpoint(path)
    assert SurpriseCalibration.from_meta(meta) is None
    update_metadata(path, 'surprise', calibration.to_dict())
    loaded_model, meta = load_checkpoint(path)
    assert SurpriseCalibration.from_meta(meta) == calibration
    monitor = SurpriseMonitor(loaded_model, SurpriseCalibration.from_meta(meta))
    assert monitor.threshold == calibration.threshold
    with pytest.raises(ValueError, match='at least 2'):
        calibrate(np.array([np.nan, 1.0]))
