"""Surprise monitor: scores, online/offline agreement, running statistics and calibration storage."""

from __future__ import annotations

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

D, FS, A, HISTORY = 16, 2, 2, 3


def latent_trajectories(n: int, length: int, mixing: torch.Tensor, gen: torch.Generator):
    """Toy latent world: z_{t+1} = z_t + W a_t, with uniform random action blocks a_t."""
    actions = torch.rand(n, length - 1, FS * A, generator=gen) * 2 - 1
    z0 = torch.randn(n, 1, D, generator=gen)
    return torch.cat([z0, z0 + (actions @ mixing.T).cumsum(1)], dim=1), actions


@pytest.fixture(scope='module')
def toy_predictor() -> tuple[LeWM, torch.Tensor]:
    """A LeWM predictor + action encoder trained (seconds) on the toy latent dynamics."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        image_size=16, patch_size=8, encoder_width=16, encoder_depth=1, encoder_heads=2, encoder_mlp_dim=32,
        embed_dim=D, projector_hidden=64, action_hidden=32, action_dim=A, frameskip=FS, history=HISTORY,
        predictor_depth=2, predictor_heads=2, predictor_head_dim=16, predictor_mlp_dim=64, predictor_dropout=0.0,
    )  # fmt: skip
    model = LeWM(cfg)
    gen = torch.Generator().manual_seed(0)
    mixing = 0.3 * torch.randn(D, FS * A, generator=gen)
    params = [*model.predictor.parameters(), *model.action_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(200):
        z, actions = latent_trajectories(128, HISTORY + 1, mixing, gen)
        loss = (model.predict(z[:, :HISTORY], model.embed_actions(actions)) - z[:, 1:]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), mixing


def test_surprise_is_low_on_a_predictable_sequence_and_jumps_at_a_discontinuity(toy_predictor) -> None:
    model, mixing = toy_predictor
    gen = torch.Generator().manual_seed(1)
    z, actions = latent_trajectories(16, 20, mixing, gen)
    jump_at = 10
    jumped = z.clone()
    jumped[:, jump_at:] += 3.0 * torch.randn(16, 1, D, generator=gen)  # a teleport in latent space
    with torch.no_grad():
        emb = model.embed_actions(actions)
        normal = scores_from_embeddings(model, z, emb)
        perturbed = scores_from_embeddings(model, jumped, emb)
    assert torch.isnan(normal[:, 0]).all()
    normal_values = normal[:, 1:].flatten()
    # the step variance of the toy world is ~0.12 per dimension: the model must beat copying z_t
    assert normal_values.median() < 0.1
    assert (perturbed[:, jump_at] > normal_values.max()).all(), 'every jump must outscore every normal frame'
    # once the jump is in the window, the dynamics is predictable again: surprise settles back down
    assert perturbed[:, jump_at + HISTORY + 1 :].median() < 3 * normal_values.median()


def test_monitor_online_scores_equal_the_offline_scores_and_track_statistics() -> None:
    model = random_model(HISTORY, dtype=torch.float32)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    blocks = rng.uniform(-1, 1, (6, 3, 2)).astype(np.float32)
    offline = surprise_scores(model, frames[None], blocks[None])[0]
    calibration = SurpriseCalibration(threshold=float(offline[1:].median()), quantile=0.5, mean=0.0, std=1.0, n=6)
    monitor = SurpriseMonitor(model, calibration)
    readings = [monitor.update(frames[0])] + [monitor.update(f, b) for f, b in zip(frames[1:], blocks, strict=True)]
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
