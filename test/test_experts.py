"""Scripted experts reach their goals (a few seeded episodes by default, a batch rate under -m slow)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('mujoco', reason='the tasks need mujoco')

from lewm_ros.sim import ENV_IDS, make_env  # noqa: E402
from lewm_ros.sim.experts import MixedPolicy, RandomPolicy, make_expert, make_policy  # noqa: E402


def expert_success_rate(env_id: str, episodes: int, noise: float, seed: int = 0) -> tuple[float, float]:
    """(fraction of episodes whose goal was reached, mean steps to reach it) at 32 px."""
    env = make_env(env_id, img_size=32)
    reached, steps = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        expert = make_expert(env, noise=noise, rng=np.random.default_rng(seed + episode))
        for t in range(env.max_episode_steps):
            obs, _, _, _, info = env.step(expert.act(obs))
            if info['is_success']:
                steps.append(t + 1)
                break
        reached.append(info['is_success'])
    env.close()
    return float(np.mean(reached)), float(np.mean(steps)) if steps else float('nan')


@pytest.mark.parametrize('env_id', ENV_IDS)
def test_expert_reaches_the_goal_in_a_seeded_batch(env_id):
    rate, _ = expert_success_rate(env_id, episodes=3, noise=0.1, seed=100)
    assert rate == 1.0


def episodes_reaching_the_goal(env, policy_for, seeds) -> int:
    """How many of the seeded episodes reach their goal within the task's step limit."""
    reached = 0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        policy = policy_for(seed)
        for _ in range(env.max_episode_steps):
            action = policy.act(obs)
            assert env.action_space.contains(np.asarray(action, dtype=np.float32))
            obs, _, _, _, info = env.step(action)
            if info['is_success']:
                reached += 1
                break
    return reached


@pytest.mark.parametrize('env_id', ENV_IDS)
def test_random_policy_stays_in_bounds_and_rarely_succeeds(env_id):
    env = make_env(env_id, img_size=32)
    seeds = range(4)
    random = {seed: make_policy(env, 'random', rng=np.random.default_rng(seed)) for seed in seeds}
    assert all(isinstance(policy, RandomPolicy) for policy in random.values())
    # uniform over the box: 200 draws cover most of it (all zeros or a shrunken box would not)
    sampler = make_policy(env, 'random', rng=np.random.default_rng(99))
    draws = np.stack([sampler.act() for _ in range(200)])
    low, high = env.action_space.low, env.action_space.high
    margin = 0.1 * (high - low)
    assert np.all(draws.min(0) < low + margin) and np.all(draws.max(0) > high - margin)
    # a whole episode each, and at most one of four stumbles onto its goal ...
    assert episodes_reaching_the_goal(env, random.__getitem__, seeds) <= 1
    # ... a bound a goal-directed policy breaks on the same starts and goals
    expert = episodes_reaching_the_goal(env, lambda seed: make_policy(env, 'expert'), seeds)
    assert expert == len(seeds)
    env.close()


def test_mixed_policy_drives_each_episode_with_one_policy_in_the_asked_proportion():
    env = make_env('lewm/TwoRoom-v0', img_size=32)
    expert_episodes = 0
    for episode in range(40):
        obs, _ = env.reset(seed=episode)
        policy = make_policy(env, 'mixed', rng=np.random.default_rng(episode), expert_fraction=0.25)
        assert isinstance(policy, MixedPolicy)
        clean = make_expert(env)  # noise 0: an expert episode's actions must match it exactly
        from_expert = []
        for _ in range(20):
            expected = clean.act(obs)
            action = policy.act(obs)
            assert env.action_space.contains(action.astype(np.float32))
            from_expert.append(bool(np.allclose(action, expected)))
            obs, *_ = env.step(action)
        assert all(from_expert) or not any(from_expert)  # one policy for the whole episode
        expert_episodes += from_expert[0]
    assert 4 <= expert_episodes <= 18  # 25 % of 40 = 10
    with pytest.raises(ValueError, match='expert_fraction'):
        make_policy(env, 'mixed', expert_fraction=1.5)
    env.close()


def test_expert_noise_is_seeded_and_bounded():
    env = make_env('lewm/TwoRoom-v0', img_size=32)
    env.reset(seed=0)
    a = [make_expert(env, noise=0.5, rng=np.random.default_rng(1)).act() for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    assert np.all(np.abs(a[0]) <= 1.0)
    with pytest.raises(ValueError, match='noise'):
        make_expert(env, noise=-0.1)
    with pytest.raises(ValueError, match='expert, random, mixed'):
        make_policy(env, 'teleop')
    env.close()


def test_expert_recovers_after_a_teleport():
    env = make_env('lewm/Cube-v0', img_size=32)
    obs, _ = env.reset(seed=3, options={'perturb': ('teleport', 15)})
    expert = make_expert(env, rng=np.random.default_rng(3))
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(expert.act(obs))
        if info['is_success'] and info['elapsed_steps'] > 15:
            break
    assert info['is_success']
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize('noise', [0.0, 0.2])
@pytest.mark.parametrize('env_id', ENV_IDS)
def test_expert_success_rate_over_fifty_episodes(env_id, noise):
    rate, mean_steps = expert_success_rate(env_id, episodes=50, noise=noise)
    print(f'{env_id} noise {noise}: expert success {rate:.2f}, mean steps to goal {mean_steps:.1f}')
    assert rate >= 0.9


@pytest.mark.parametrize('env_id', ENV_IDS)
def test_the_eval_protocol_goals_are_reachable_within_the_budget(env_id):
    """The expert's own 25 steps from each evaluation start, replayed open loop, reach that episode's goal."""
    from lewm_ros.sim.eval_protocol import STEP_BUDGET
    from training.evaluation.diagnose import expert_episode, replay_reaches

    env = make_env(env_id, img_size=32)
    for index in range(6):
        start, goal, actions = expert_episode(env, seed=0, index=index)
        assert len(actions) <= STEP_BUDGET
        assert not env._success(start, goal)  # not solved before the planner acts
        assert replay_reaches(env, start, goal, actions)[0], f'episode {index}'
    env.close()
