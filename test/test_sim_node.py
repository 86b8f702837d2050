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

REPO = Path(__file__).resolve().parent.parent
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Client:
    """Collects the sim's outputs and drives it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.frames: list[np.ndarray] = []
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

    def call(self, service: str) -> Trigger.Response:
        client = self.node.create_client(Trigger, service)
        assert client.wait_for_service(timeout_sec=10.0), f'{service} not available'
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 10.0), f'{service} did not answer'
        return future.result()


@pytest.fixture
def sim(rclpy_context, spinner):
    node = spinner.add(SimNode(context=rclpy_context, env_id='lewm/TwoRoom-v0', img_size=48, seed=3,
                               mode='lockstep', control_rate_hz=5.0))
    client = Client(spinner.add(Node('sim_client', context=rclpy_context)))
    assert wait_for(lambda: client.goals and client.frames, 10.0), 'no goal image / first frame'
    return node, client


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
    client.actions.publish(Float64MultiArray(data=[1.0, 2.0, 3.0]))  # wrong dimension
    client.actions.publish(Float64MultiArray(data=[float('nan'), 0.0]))
    client.actions.publish(Float64MultiArray(data=[0.0, 1.0]))
    assert wait_for(lambda: node.steps == steps + 1, 5.0), 'the valid action after bad ones was not applied'


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
