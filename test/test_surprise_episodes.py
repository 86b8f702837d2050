"""Surprise on the embedded models over real MuJoCo episodes: resets are no surprise, teleports are.

The control loop's monitor (``LatentMPC.observe``) is fed the frames and actions of expert
episodes tick by tick, as the planner node feeds it. A new episode after a goal change (or
``restart_history``) must not be flagged; the same jump without it must be, or the first check
would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('mujoco', reason='the episodes come from the MuJoCo tasks')

from lewm_ros.checkpoint import load_checkpoint  # noqa: E402
from lewm_ros.latent_mpc import LatentMPC  # noqa: E402
from lewm_ros.paths import share_dir  # noqa: E402
from lewm_ros.planning import LatentPlanner, PlannerConfig  # noqa: E402
from lewm_ros.sim import make_env  # noqa: E402
from lewm_ros.sim.experts import make_policy  # noqa: E402

STEPS = 30


def _episode(env, seed: int, perturb: tuple[str, int] | None = None) -> tuple[list, list]:
    """Frames (STEPS + 1) and actions (STEPS) of a noisy expert from the task's reset for ``seed``.

    ``perturb = (kind, step)``: frame ``step`` already shows the perturbed world.
    """
    obs, _ = env.reset(seed=seed, options={'perturb': perturb} if perturb else None)
    policy = make_policy(env, 'expert', noise=0.5, rng=np.random.default_rng(seed))
    frames, actions = [obs], []
    for _ in range(STEPS):
        action = np.asarray(policy.act(obs), dtype=np.float64)
        obs, *_ = env.step(action)
        frames.append(obs)
        actions.append(action)
    return frames, actions


def _feed(mpc: LatentMPC, frames: list[np.ndarray], actions: list[np.ndarray]) -> list:
    """One tick per frame, as the node does: observe the frame, then record the action executed."""
    readings = []
    for i, frame in enumerate(frames):
        readings.append(mpc.observe(frame))
        if i < len(actions):
            mpc.executed(actions[i])
    return readings


@pytest.fixture(scope='module', params=['tworoom', 'reacher'])
def embedded(request):
    model, meta = load_checkpoint(share_dir() / 'models' / request.param)
    env = make_env(meta['env_id'], img_size=model.config.image_size)
    yield model, meta, env
    env.close()


def _monitor(model, meta) -> LatentMPC:
    planner = LatentPlanner(model, PlannerConfig(samples=4, iterations=1, elites=2), meta['action_low'],
                            meta['action_high'])
    return LatentMPC(planner, meta['surprise']['threshold'])


def test_a_goal_change_starts_an_episode_that_is_not_flagged(embedded) -> None:
    model, meta, env = embedded
    first, second = _episode(env, seed=11), _episode(env, seed=12)
    mpc = _monitor(model, meta)
    _feed(mpc, *first)
    mpc.set_goal(second[0][-1])  # a new goal: the node's signal that a new episode starts
    readings = _feed(mpc, *second)
    fs = model.config.frameskip
    assert all(r.score is None for r in readings[:fs]), 'frames of the new episode were compared with the old'
    assert not any(r.flag for r in readings), [round(r.score, 3) for r in readings if r.flag]
    # without the restart, the same jump between episodes is a surprise
    blind = _monitor(model, meta)
    _feed(blind, *first)
    jumped = _feed(blind, *second)[0]
    assert jumped.flag, f'score {jumped.score} under the threshold {meta["surprise"]["threshold"]}'


def test_a_teleport_scores_above_a_recolour(embedded) -> None:
    """The paper's ordering: a physical violation surprises the model more than a visual change."""
    model, meta, env = embedded
    event, seeds = 15, range(21, 29)
    scores = {kind: np.array([_feed(_monitor(model, meta), *_episode(env, seed, (kind, event)))[event].score
                              for seed in seeds]) for kind in ('teleport', 'recolour')}
    assert (scores['teleport'] > meta['surprise']['threshold']).all(), scores
    # teleport vs recolour AUROC: the share of (teleport, recolour) pairs ordered the paper's way
    auroc = float(np.mean(scores['teleport'][:, None] > scores['recolour'][None, :]))
    assert auroc >= 0.8, (auroc, scores)
