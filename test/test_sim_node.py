"""sim_node over real rclpy: frames out, actions in (lockstep), goal latched, reset and perturb services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('mujoco', reason='the sim node needs mujoco')
rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_test_utils import reap, wait_for  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lewm_ros.image_conversion import image_msg_to_rgb  # noqa: E402
from lewm_ros.nodes.sim_node import SimNode  # noqa: E402
from lewm_ros.sim import make_env  # noqa: E402
from lewm_ros.sim.eval_protocol import expert_start_and_goal  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Client:
    """Collects the sim's outputs and drives it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.frames: list[np.ndarray] = []
        self.stamps: list[int] = []  # header stamp of each frame, in nanoseconds
        self.goals: list[np.ndarray] = []
        self.success: list[bool] = []
        self.lock = threading.Lock()
        node.create_subscription(Image, 'camera/image_raw', self._frame, qos_profile_sensor_data)
        node.create_subscription(Image, 'lewm/goal_image', lambda m: self.goals.append(image_msg_to_rgb(m)),
                                 LATCHED)
        node.create_subscription(Bool, 'sim/success', lambda m: self.success.append(m.data), 10)
        self.actions = node.create_publisher(Float64MultiArray, 'lewm/action', 10)

    def _frame(self, msg: Image) -> None:
        with self.lock:
            self.frames.append(image_msg_to_rgb(msg))
            self.stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

    def call(self, service: str) -> Trigger.Response:
        client = self.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=10.0), f'{service} not available'
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 10.0), f'{service} did not answer'
        return future.result()


@pytest.fixture
def make_sim(rclpy_context, spinner):
    def make(**params):
        node = spinner.add(SimNode(context=rclpy_context, **{
            'env_id': 'lewm/TwoRoom-v0', 'img_size': 48, 'seed': 3, 'mode': 'lockstep',
            'control_rate_hz': 5.0, **params}))
        client = Client(spinner.add(Node('sim_client', context=rclpy_context)))
        assert wait_for(lambda: client.goals and client.frames, 10.0), 'no goal image / first frame'
        return node, client
    return make


@pytest.fixture
def sim(make_sim):
    return make_sim()


def state_of(node: SimNode) -> np.ndarray:
    """The simulator state (qpos, qvel), read in the node's MuJoCo thread (between two of its steps)."""
    return node._in_mujoco_thread(node.env.get_state)


def act(client: Client, *action: float) -> None:
    client.actions.publish(Float64MultiArray(data=list(action)))


def test_lockstep_steps_once_per_action(sim) -> None:
    node, client = sim
    start = node.steps
    for i in range(5):
        before = len(client.frames)
        client.actions.publish(Float64MultiArray(data=[1.0, 0.0]))
        assert wait_for(lambda n=before: len(client.frames) > n, 5.0), f'no frame after action {i}'
    assert wait_for(lambda: node.steps == start + 5, 2.0)
    assert client.frames[-1].shape == (48, 48, 3)
    assert not np.array_equal(client.frames[-1], client.frames[0]), 'moving the agent changed nothing'


def test_malformed_action_is_ignored_and_sim_keeps_running(sim) -> None:
    node, client = sim
    steps = node.steps
    bad = ([1.0, 2.0, 3.0], [float('nan'), 0.0], [0.0, float('inf')], [], [-float('inf'), 1.0])
    for action in (*bad[:3], [0.0, 1.0], *bad[3:], [0.5, 0.0]):  # two valid actions among them
        act(client, *action)
    # Actions are handled in order, one at a time: once the last one is held, every message before it
    # was handled, and the step count has settled.
    assert wait_for(lambda: np.array_equal(node._held_action, [0.5, 0.0]) and node.steps >= steps + 2, 5.0), \
        'the valid actions after bad ones were not applied'
    assert node.steps == steps + 2, f'{node.steps - steps} steps for 2 valid actions and {len(bad)} bad ones'
    assert node.episode == 0 and np.all(np.isfinite(state_of(node)))


def test_teleport_changes_the_view_and_reset_publishes_a_new_goal(sim) -> None:
    node, client = sim
    before = len(client.frames)
    assert client.call('sim/teleport').success
    assert wait_for(lambda: len(client.frames) > before, 5.0)
    with client.lock:
        assert not np.array_equal(client.frames[-1], client.frames[before - 1])
    goals, episode = len(client.goals), node.episode
    assert client.call('sim/reset').success
    assert node.episode == episode + 1
    assert wait_for(lambda: len(client.goals) > goals, 5.0), 'no goal image after reset'


def test_lock_step_a_perturbation_shows_in_the_frame_of_the_next_action(sim) -> None:
    """Every frame answers one action: a teleport after actions flowed adds no frame of its own."""
    node, client = sim
    client.actions.publish(Float64MultiArray(data=[0.0, 0.0]))
    assert wait_for(lambda: node.steps >= 1, 5.0)
    assert wait_for(lambda: len(client.frames) > 0, 5.0)
    before = len(client.frames)
    assert not wait_for(lambda: len(client.frames) > before, 0.3)  # nothing else in flight
    assert client.call('sim/teleport').success
    assert not wait_for(lambda: len(client.frames) > before, 0.3), 'the teleport published a frame'
    steps = node.steps
    client.actions.publish(Float64MultiArray(data=[0.0, 0.0]))
    assert wait_for(lambda: node.steps == steps + 1 and len(client.frames) == before + 1, 5.0)
    with client.lock:
        assert not np.array_equal(client.frames[-1], client.frames[before - 1])  # the teleport shows


def test_recolour_changes_the_colour_not_the_state_and_shows_at_once(sim) -> None:
    node, client = sim
    state = state_of(node)
    with client.lock:
        seen, old = client.stamps[-1], client.frames[-1]
    assert client.call('sim/recolour').success
    # Before the first action nothing else brings a new view (the idle re-publish keeps the stamp).
    assert wait_for(lambda: client.stamps[-1] != seen, 5.0), 'no new frame after the recolour'
    with client.lock:
        new = client.frames[-1]
    assert not np.array_equal(new, old), 'the recolour did not change the image'
    np.testing.assert_array_equal(state_of(node), state)  # the world did not move
    assert node.steps == 0


def test_realtime_mode_steps_on_the_timer_holding_the_last_action(make_sim) -> None:
    rate = 20.0
    node, client = make_sim(mode='realtime', control_rate_hz=rate, episode_steps=10000)
    assert wait_for(lambda: node.steps >= 3, 10.0), 'realtime mode did not step without actions'
    before = state_of(node)
    steps, start = node.steps, time.monotonic()
    assert wait_for(lambda: node.steps >= steps + 3, 10.0)
    np.testing.assert_allclose(state_of(node)[:2], before[:2], atol=1e-4)  # held zero: the agent stays put
    # One action, towards the middle of the room along y (no wall within reach), held from then on.
    direction = -1.0 if before[1] > 0 else 1.0
    act(client, 0.0, 0.5 * direction)
    assert wait_for(lambda: node._held_action[1] != 0.0, 5.0)
    moved_from, steps_then = state_of(node)[1], node.steps
    assert wait_for(lambda: node.steps >= steps_then + 6, 10.0)
    travel = (state_of(node)[1] - moved_from) * direction
    elapsed, stepped = time.monotonic() - start, node.steps - steps
    # 0.5 x 0.4 m/s for 0.1 s of physics a step: 2 cm a step while the action is held
    assert travel > 0.07, f'the agent moved {travel:.3f} m in 6+ steps after one action'
    assert stepped <= rate * elapsed + 2, f'{stepped} steps in {elapsed:.2f} s at {rate} Hz'


def test_success_is_published_when_the_goal_is_reached_and_the_episode_ends(sim) -> None:
    node, client = sim
    assert wait_for(lambda: len(client.success) > 0, 5.0)
    assert not any(client.success), 'success before the goal was reached'
    node._in_mujoco_thread(lambda: node.env.set_state(node.env.goal_state))  # the agent reaches the goal
    act(client, 0.0, 0.0)
    assert wait_for(lambda: node.episode == 1, 5.0), 'reaching the goal did not end the episode'
    assert node.episode_successes == [True]
    assert wait_for(lambda: True in client.success and client.success[-1] is False, 5.0), client.success
    assert not node.env.is_success()  # the new episode starts away from its goal


@pytest.mark.parametrize('auto_reset', [True, False])
def test_the_step_budget_ends_an_episode_and_auto_reset_starts_the_next(make_sim, auto_reset: bool) -> None:
    node, client = make_sim(episode_steps=3, auto_reset=auto_reset)
    goals = len(client.goals)
    for _ in range(3):
        act(client, 0.0, 0.0)  # zero actions: the goal is never reached
    if auto_reset:
        assert wait_for(lambda: node.episode == 1, 5.0), 'no new episode after the step budget'
        assert wait_for(lambda: len(client.goals) > goals, 5.0), 'no goal image for the new episode'
    else:
        assert wait_for(lambda: node.steps == 3, 5.0)
    for _ in range(2):  # the second one is handled after the first has finished
        act(client, 0.0, 0.0)
    expected = 2 if auto_reset else 5
    assert wait_for(lambda: node.steps == expected, 5.0), f'{node.steps} steps, expected {expected}'
    assert node.episode == (1 if auto_reset else 0)
    assert node.episode_successes == [False], 'the episode ended more than once, or not at all'
    assert len(client.goals) == goals + auto_reset


@pytest.mark.parametrize('goal_mode', ['expert_ahead', 'task'])
def test_goal_mode_and_seed_set_the_start_and_goal_of_every_episode(make_sim, goal_mode: str) -> None:
    """expert_ahead: the state goal_ahead_steps along an expert run; task: the task's own; seed + episode."""
    node, client = make_sim(img_size=16, seed=5, goal_mode=goal_mode, goal_ahead_steps=7)
    reference = make_env('lewm/TwoRoom-v0', img_size=16)
    rng = np.random.default_rng(5)
    try:
        for episode in range(2):
            if goal_mode == 'expert_ahead':
                start, goal = expert_start_and_goal(reference, rng, goal_ahead=7)
            else:
                reference.reset(seed=5 + episode)
                start, goal = reference.get_state(), reference.goal_state
            state, node_goal = node._in_mujoco_thread(lambda: (node.env.get_state(), node.env.goal_state))
            np.testing.assert_allclose(state, start, err_msg=f'start of episode {episode}')
            np.testing.assert_allclose(node_goal, goal, err_msg=f'goal of episode {episode}')
            if episode == 0:
                assert client.call('sim/reset').success
    finally:
        reference.close()
    if goal_mode == 'expert_ahead':  # seven expert steps of at most 4 cm: the goal is near
        assert np.linalg.norm(goal[:2] - start[:2]) <= 7 * 0.04 + 1e-6


# -- the sim_node process: signals and start-up errors -------------------------------------------------
def _sim_process(*ros_args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``sim_node`` in a process of its own, its output (the ROS log lines) in ``log``."""
    environment = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
                   'PYTHONUNBUFFERED': '1', **(env or {})}
    with open(log, 'w') as out:
        return subprocess.Popen([sys.executable, '-m', 'lewm_ros.nodes.sim_node', '--ros-args', *ros_args],
                                stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=REPO)


@pytest.mark.parametrize('run', range(3))
def test_sigint_exits_0_without_a_traceback(tmp_path: Path, run: int) -> None:
    log = tmp_path / 'sim.log'
    process = _sim_process('-p', 'img_size:=32', '-p', f'seed:={run}', log=log)
    try:
        assert wait_for(lambda: 'simulating' in log.read_text() or process.poll() is not None, 60.0, 0.1), \
            f'sim_node did not start:\n{log.read_text()}'
        assert process.poll() is None, f'sim_node exited at start:\n{log.read_text()}'
        time.sleep(0.5 * run)  # a little later each run: mid-tick as well as idle
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        reap(process)
    output = log.read_text()
    assert code == 0, output
    assert 'Traceback' not in output and 'terminate called' not in output, output


@pytest.mark.parametrize(('ros_args', 'env', 'expected'), [
    (('-p', 'env_id:=lewm/Nope-v0'), {}, ["unknown task 'lewm/Nope-v0'"]),
    (('-p', 'img_size:=8'), {}, ['img_size']),
    (('--params-file', '/nonexistent/sim.yaml'), {}, ['/nonexistent/sim.yaml']),
    ((), {'MUJOCO_GL': 'nonsense'}, ["MUJOCO_GL='nonsense'", 'EGL']),
], ids=['unknown-env-id', 'bad-parameter', 'missing-params-file', 'no-renderer'])
def test_a_start_up_error_is_one_fatal_line_and_exit_1(
        tmp_path: Path, ros_args: tuple[str, ...], env: dict[str, str], expected: list[str]) -> None:
    log = tmp_path / 'sim.log'
    process = _sim_process(*ros_args, log=log, env=env)
    try:
        code = process.wait(timeout=60)
    finally:
        reap(process)
    output = log.read_text()
    assert code == 1, output
    fatal = [line for line in output.splitlines() if '[FATAL]' in line and '[lewm_sim]' in line]
    assert len(fatal) == 1, output
    assert all(text in fatal[0] for text in expected), output
    assert 'Traceback' not in output, output
