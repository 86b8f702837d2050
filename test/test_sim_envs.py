"""The four MuJoCo tasks: gymnasium conformance, rendering, determinism, goals, success, perturbations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip('mujoco', reason='the tasks need mujoco')
gym = pytest.importorskip('gymnasium', reason='the tasks need gymnasium')
from gymnasium.utils.env_checker import check_env  # noqa: E402

from lewm_ros.sim import ENV_IDS, TASKS, make_env  # noqa: E402

SIZE = 64


@pytest.fixture(params=ENV_IDS)
def env(request):
    task = make_env(request.param, img_size=SIZE)
    yield task
    task.close()


def random_actions(env, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, env.action_dim))


def test_passes_the_gymnasium_environment_checker(env):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        check_env(env)
    assert not [str(w.message) for w in caught]


@pytest.mark.parametrize('env_id', ENV_IDS)
def test_registered_with_gymnasium_and_truncates_at_the_registered_length(env_id):
    made = gym.make(env_id, img_size=32)
    assert made.spec.max_episode_steps == TASKS[env_id][1]
    made.close()
    short = make_env(env_id, img_size=32, max_episode_steps=4)
    short.reset(seed=0)
    truncated = [short.step(np.zeros(short.action_dim))[3] for _ in range(4)]
    assert truncated == [False, False, False, True]
    short.close()


def test_unknown_task_is_refused_with_the_known_ids():
    with pytest.raises(ValueError, match='lewm/PushT-v0'):
        make_env('lewm/Nope-v0')


def test_observation_is_a_non_degenerate_rgb_image(env):
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (SIZE, SIZE, 3)
    assert np.array_equal(obs, env.render())
    assert obs.std() > 10  # not a blank frame
    colours = np.unique((obs // 32).reshape(-1, 3), axis=0)
    assert len(colours) >= 3  # background and at least two things on it
    # the image shows the state: moving the object changes it
    env.perturb('teleport', np.random.default_rng(0))
    assert np.abs(env.render().astype(int) - obs).max() > 60


def test_default_image_size_is_224():
    task = make_env('lewm/TwoRoom-v0')
    obs, _ = task.reset(seed=0)
    assert obs.shape == (224, 224, 3) and task.observation_space.shape == (224, 224, 3)
    task.close()


def test_same_seed_and_actions_give_the_same_episode(env):
    twin = make_env(env.spec.id, img_size=SIZE)
    actions = random_actions(env, 8)
    runs = []
    for task in (env, twin):
        obs, info = task.reset(seed=7)
        frames, states = [obs], [info['state']]
        for action in actions:
            obs, _, _, _, info = task.step(action)
            frames.append(obs)
            states.append(info['state'])
        runs.append((np.stack(frames), np.stack(states)))
    twin.close()
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])
    env.reset(seed=8)
    assert not np.allclose(env.get_state(), runs[0][1][0])  # another seed, another start


def test_goal_state_is_a_success_and_its_image_is_what_the_camera_sees(env):
    env.reset(seed=1)
    goal_image = env.goal_image()
    assert goal_image.shape == (SIZE, SIZE, 3) and goal_image.dtype == np.uint8
    env.set_state(env.goal_state)
    assert env.is_success()
    assert np.array_equal(env.render(), goal_image)


def test_random_starts_are_not_successes(env):
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert not info['is_success'], f'seed {seed} starts at its goal'


def test_goal_image_rendering_leaves_the_simulation_alone(env):
    env.reset(seed=2)
    env.step(random_actions(env, 1)[0])
    before = env.get_state()
    env.set_goal_state(env.goal_state)
    assert np.array_equal(env.get_state(), before)


def test_set_state_replays_a_trajectory(env):
    env.reset(seed=3)
    actions = random_actions(env, 6, seed=3)
    env.step(actions[0])
    env.step(actions[1])
    middle = env.get_state()
    later = [env.step(a)[4]['state'] for a in actions[2:]]
    env.set_state(middle)
    assert np.array_equal(env.get_state(), middle)
    replayed = [env.step(a)[4]['state'] for a in actions[2:]]
    np.testing.assert_allclose(replayed, later, atol=1e-5)


def test_reset_options_set_start_and_goal(env):
    env.reset(seed=4)
    start, goal = env.get_state(), env.goal_state
    _, info = env.reset(seed=5, options={'state': start, 'goal_state': goal})
    assert np.array_equal(info['state'], start)
    assert np.array_equal(env.goal_state, goal)
    with pytest.raises(ValueError, match='unknown reset options'):
        env.reset(options={'start': start})


def test_bad_inputs_get_clear_errors(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=f'{env.action_dim}-D actions'):
        env.step(np.zeros(env.action_dim + 1))
    with pytest.raises(ValueError, match='NaN'):
        env.step(np.full(env.action_dim, np.nan))
    with pytest.raises(ValueError, match=f'{env.state_dim} values'):
        env.set_state(np.zeros(env.state_dim - 1))
    with pytest.raises(ValueError, match='unknown perturbation'):
        env.perturb('explode')


def test_teleport_jumps_further_than_any_normal_step(env):
    env.reset(seed=6)
    nq = env.model.nq
    previous = env.get_state()[:nq]
    largest = 0.0
    for action in random_actions(env, 30, seed=6):
        env.step(action)
        current = env.get_state()[:nq]
        largest = max(largest, float(np.linalg.norm(current - previous)))
        previous = current
    env.perturb('teleport', np.random.default_rng(0))
    jump = float(np.linalg.norm(env.get_state()[:nq] - previous))
    assert jump > largest, f'teleport moved {jump:.3f}, a normal step up to {largest:.3f}'
    _, _, _, _, info = env.step(np.zeros(env.action_dim))  # the episode goes on
    assert np.all(np.isfinite(info['state']))


def test_recolour_changes_pixels_but_not_the_state_or_the_physics(env):
    twin = make_env(env.spec.id, img_size=SIZE)
    env.reset(seed=9)
    twin.reset(seed=9)
    before = env.render()
    env.perturb('recolour', np.random.default_rng(0))
    assert np.array_equal(env.get_state(), twin.get_state())
    changed = np.any(env.render() != before, axis=-1).mean()
    assert changed > 0.002, 'the recolour is not visible'
    for action in random_actions(env, 5, seed=9):
        obs, _, _, _, info = env.step(action)
        twin_obs, _, _, _, twin_info = twin.step(action)
        assert np.array_equal(info['state'], twin_info['state'])
    assert not np.array_equal(obs, twin_obs)  # the colour stays
    env.reset(seed=9)
    assert np.array_equal(env.render(), twin.reset(seed=9)[0])  # and goes at reset
    twin.close()


@pytest.mark.parametrize('kind', ['teleport', 'recolour'])
def test_scheduled_perturbation_happens_at_its_step(kind):
    task = make_env('lewm/TwoRoom-v0', img_size=32)
    task.reset(seed=0, options={'perturb': (kind, 3)})
    events = [task.step(np.zeros(2))[4].get('perturbation') for _ in range(5)]
    assert events == [None, None, kind, None, None]
    task.close()


def test_info_carries_state_proprio_and_success(env):
    _, info = env.reset(seed=0)
    assert set(info) >= {'is_success', 'state', 'proprio'}
    assert info['state'].shape == (env.state_dim,)
    assert isinstance(info['is_success'], bool)
    assert env.frameskip >= 1 and env.control_rate_hz > 0
