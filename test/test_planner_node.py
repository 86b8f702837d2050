"""planner_node over real rclpy and Fast DDS: outputs, rates, safety and the bad-input matrix.

The checkpoint is a tiny random-weight model written to disk: these tests check the node's
behaviour (what it publishes, when, and what it refuses), not the quality of its plans.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_test_utils import wait_for  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float32, Float64MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lewm_ros.checkpoint import build_metadata, save_checkpoint  # noqa: E402
from lewm_ros.image_conversion import rgb_to_image_fields  # noqa: E402
from lewm_ros.model import LeWM, ModelConfig  # noqa: E402
from lewm_ros.nodes.planner_node import PlannerNode  # noqa: E402

RATE_HZ = 5.0  # low enough that a loaded 2-core CI machine keeps the timer on time
FAST_PLANNER = {'samples': 16, 'iterations': 2, 'elites': 4, 'horizon': 2}
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip('torch')
    torch.manual_seed(0)
    model = LeWM(ModelConfig.from_preset('micro', frameskip=2), action_mean=[0.0, 0.0], action_std=[0.5, 0.5])
    path = tmp_path_factory.mktemp('planner_node') / 'micro'
    save_checkpoint(path, model, build_metadata(model, action_low=[-1.0, -1.0], action_high=[1.0, 1.0]))
    return path


def image(rng: np.random.Generator, size: int = 32) -> Image:
    return Image(**rgb_to_image_fields(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))


class Harness:
    """A test node that feeds the planner and records everything it publishes."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.rng = np.random.default_rng(0)
        self.actions: list[tuple[float, np.ndarray]] = []
        self.surprise: list[DiagnosticArray] = []
        self.scores: list[float] = []
        self.plans: list[Float64MultiArray] = []
        node.create_subscription(Float64MultiArray, 'lewm/action',
                                 lambda m: self.actions.append((time.monotonic(), np.array(m.data))), 50)
        node.create_subscription(DiagnosticArray, 'lewm/surprise', self.surprise.append, 50)
        node.create_subscription(Float32, 'lewm/surprise/score', lambda m: self.scores.append(m.data), 50)
        node.create_subscription(Float64MultiArray, 'lewm/plan', self.plans.append, 50)
        self.camera = node.create_publisher(Image, 'camera/image_raw', 10)
        self.goal = node.create_publisher(Image, 'lewm/goal_image', LATCHED)
        self._streaming = threading.Event()
        self._stream: threading.Thread | None = None

    def stream_frames(self) -> threading.Thread:
        """Publish fresh frames at 2x the control rate until stop_stream()."""
        self._streaming.set()

        def run() -> None:
            while self._streaming.is_set():
                self.camera.publish(image(self.rng))
                time.sleep(0.5 / RATE_HZ)

        self._stream = threading.Thread(target=run, daemon=True)
        self._stream.start()
        return self._stream

    def stop_stream(self) -> None:
        """Stop publishing frames; returns once the last one is published."""
        self._streaming.clear()
        if self._stream is not None:
            self._stream.join()

    def actions_between(self, start: float, end: float) -> list[np.ndarray]:
        return [a for t, a in self.actions if start <= t < end]


@pytest.fixture
def setup(rclpy_context, spinner, checkpoint):
    def make(**params):
        node = spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                       control_rate_hz=RATE_HZ, **{**FAST_PLANNER, **params}))
        harness = Harness(spinner.add(Node('planner_harness', context=rclpy_context)))
        assert wait_for(lambda: harness.camera.get_subscription_count() > 0, 10.0)
        return node, harness
    return make


def test_actions_within_limits_at_the_control_rate(setup) -> None:
    node, h = setup(action_low=[-0.3, -0.2], action_high=[0.3, 0.25])
    h.goal.publish(image(h.rng))
    h.stream_frames()
    try:
        # Warm up first: the first plans at each history length build their kernels (seconds).
        assert wait_for(lambda: len(h.actions) >= 25, 30.0), 'fewer than 25 actions within 30 s'
        # The rate from the median interval between actions in a 4 s window. The shared 2-core CI
        # machine sometimes slows the whole suite for seconds (never seen in isolation): up to
        # three windows are observed, and a timer at the wrong rate fails all three.
        for _ in range(3):
            start = time.monotonic()
            time.sleep(4.0)  # an observation window, not a synchronisation
            stamps = [t for t, _ in h.actions if start <= t < start + 4.0]
            rate = 1.0 / float(np.median(np.diff(stamps))) if len(stamps) >= 2 else 0.0
            if len(stamps) >= 8 and abs(rate - RATE_HZ) <= 0.3 * RATE_HZ:
                break
        window = h.actions_between(start, start + 4.0)
    finally:
        h.stop_stream()
    assert len(stamps) >= 8, f'only {len(stamps)} actions in 4 s at {RATE_HZ} Hz'
    assert abs(rate - RATE_HZ) <= 0.3 * RATE_HZ, f'actions at {rate:.1f} Hz, expected {RATE_HZ}'
    actions = np.array(window)
    assert actions.shape[1] == 2
    low, high = np.array([-0.3, -0.2]) - 1e-9, np.array([0.3, 0.25]) + 1e-9
    outside = actions[np.any((actions < low) | (actions > high), axis=1)]
    assert not len(outside), f"actions outside the bounds: {outside}"
    plan = h.plans[-1]
    assert [d.size for d in plan.layout.dim] == [2, 2, 2] and len(plan.data) == 8


def test_one_surprise_message_per_frame_with_the_frame_stamp(setup) -> None:
    node, h = setup()
    for i in range(8):
        msg = image(h.rng)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + i, 7
        h.camera.publish(msg)
        assert wait_for(lambda n=i: len(h.surprise) > n, 5.0), f'no surprise message for frame {i}'
    assert len(h.surprise) == 8
    assert [m.header.stamp.sec for m in h.surprise] == list(range(100, 108))
    status = h.surprise[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert set(values) == {'score', 'threshold', 'running_mean', 'flagged'}
    # The first frame cannot be predicted (nothing precedes it); once a block of ticks has passed
    # every frame has a score, and the bare score topic carries exactly those.
    assert 'warming up' in h.surprise[0].status[0].message
    scored = [m for m in h.surprise if m.status[0].values[0].value != 'nan']
    assert float(values['score']) >= 0 and len(scored) >= 6
    assert wait_for(lambda: len(h.scores) == len(scored), 2.0)
    assert not h.actions, 'actions were sent without a goal'


def test_surprise_is_flagged_above_the_threshold_parameter(setup) -> None:
    node, h = setup(surprise_threshold=0.0)  # every scored frame is above 0
    for i in range(4):
        h.camera.publish(image(h.rng))
        assert wait_for(lambda n=i: len(h.surprise) > n, 5.0)
    for msg in h.surprise:
        status = msg.status[0]
        scored = status.values[0].value != 'nan'
        assert status.level == (status.WARN if scored else status.OK), status
    assert h.surprise[-1].status[0].level == h.surprise[-1].status[0].WARN


def test_malformed_images_are_dropped_and_the_node_keeps_running(setup) -> None:
    node, h = setup()
    good = image(h.rng)
    bad = [
        Image(height=32, width=32, encoding='yuv422', step=64, data=bytes(32 * 64)),    # unknown encoding
        Image(height=32, width=32, encoding='rgb8', step=96, data=bytes(100)),          # size != step*height
        Image(height=0, width=0, encoding='rgb8', step=0, data=b''),                    # empty
        Image(height=2, width=2, encoding='32FC1', step=8,
              data=np.full(4, np.nan, np.float32).tobytes()),                            # NaN floats
    ]
    for msg in bad:
        for publisher in (h.camera, h.goal):
            before = node.dropped_frames
            publisher.publish(msg)
            assert wait_for(lambda n=before: node.dropped_frames > n, 5.0), f'{msg.encoding} not dropped'
    h.camera.publish(good)
    assert wait_for(lambda: len(h.surprise) == 1, 5.0), 'the node stopped handling frames after bad ones'
    assert not node.mpc.has_goal


def test_goal_of_another_size_is_resized_and_used(setup) -> None:
    node, h = setup()
    h.goal.publish(image(h.rng, size=80))
    h.stream_frames()
    try:
        assert wait_for(lambda: len(h.actions) >= 3, 15.0), 'no actions after a 80 px goal'
    finally:
        h.stop_stream()


def test_no_goal_no_actions_then_goal_from_camera_service(setup) -> None:
    node, h = setup()
    h.stream_frames()
    try:
        assert wait_for(lambda: len(h.surprise) >= 10, 10.0)
        assert not h.actions, 'actions were sent without a goal'
        client = h.node.create_client(Trigger, '/lewm_planner/set_goal_from_camera')
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 5.0) and future.result().success
        assert wait_for(lambda: len(h.actions) >= 3, 10.0), 'no actions after set_goal_from_camera'
        clear = h.node.create_client(Trigger, '/lewm_planner/clear_goal')
        assert clear.wait_for_service(timeout_sec=5.0)
        future = clear.call_async(Trigger.Request())
        assert wait_for(future.done, 5.0) and future.result().success
        assert wait_for(lambda: not node.mpc.has_goal, 5.0)
        count = len(h.actions)
        time.sleep(0.3)  # an observation window: nothing may be sent now
        assert len(h.actions) <= count + 1
    finally:
        h.stop_stream()


@pytest.mark.parametrize('safe_action', ['zero', 'hold'])
def test_stale_camera_sends_the_safe_action(setup, safe_action: str) -> None:
    node, h = setup(stale_timeout=0.2, safe_action=safe_action)
    h.goal.publish(image(h.rng))
    h.stream_frames()
    assert wait_for(lambda: len(h.actions) >= 3, 15.0)
    h.stop_stream()
    # A loaded machine can deliver the last frames late and finish a planning tick after the
    # timeout. So: wait until the node sees the camera as stale, then until two more ticks have
    # started (the timer's group runs one tick at a time, so the tick in flight has ended), and start
    # again if a late frame came in meanwhile. Every action sent after that boundary must be the
    # safe one; they are counted by index, as DDS delivers them in order.
    def stale_boundary() -> int | None:
        if not wait_for(lambda: time.monotonic() - node._latest[2] > 0.2, 10.0):
            return None
        arrival, ticks = node._latest[2], node.ticks
        if not wait_for(lambda: node.ticks >= ticks + 2, 10.0):
            return None
        sent = node.actions_sent
        return sent if node._latest[2] == arrival else None

    first_stale = next((b for b in (stale_boundary() for _ in range(3)) if b is not None), None)
    assert first_stale is not None, 'the node never saw the camera as stale'
    assert wait_for(lambda: len(h.actions) >= first_stale + 3, 10.0), 'nothing sent while stale'
    stale = [a for _, a in h.actions[first_stale:]]
    if safe_action == 'zero':
        expected = np.zeros(2)
    else:  # hold: the last planned action, repeated
        expected = stale[0]
        assert np.abs(expected).sum() > 0, 'the held action is zero: the test would prove nothing'
        planned = [a for _, a in h.actions[:first_stale]]
        assert any(np.array_equal(expected, a) for a in planned), 'the held action was never planned'
    for action in stale:
        np.testing.assert_allclose(action, expected)


def test_invalid_parameter_updates_are_rejected_over_the_service(setup) -> None:
    node, h = setup()
    client = h.node.create_client(SetParameters, '/lewm_planner/set_parameters')
    assert client.wait_for_service(timeout_sec=5.0)

    def set_params(**values) -> list:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        future = client.call_async(request)
        assert wait_for(future.done, 5.0)
        return future.result().results

    cases = {'elites': 1000, 'samples': 1, 'safe_action': 'brake', 'action_low': [0.0],
             'stale_timeout': -1.0, 'device': 'cuda', 'control_rate_hz': 50.0, 'icem_white_fraction': 1.5,
             'goal_cost': 'sum', 'goal_metric': 'whitened'}  # this checkpoint was never calibrated
    for name, value in cases.items():
        (result,) = set_params(**{name: value})
        assert not result.successful, f'{name}={value!r} was accepted'
        assert result.reason, f'no reason given for rejecting {name}'
    (ok,) = set_params(samples=32, elites=8, icem_white_fraction=0.5, goal_cost='mean')[:1]
    assert ok.successful
    h.goal.publish(image(h.rng))
    h.stream_frames()
    try:
        assert wait_for(lambda: node.mpc.planner.config.samples == 32 and len(h.actions) >= 3, 10.0)
        assert node.mpc.planner.config.icem_white_fraction == 0.5
        assert node.mpc.planner.config.goal_cost == 'mean'
    finally:
        h.stop_stream()


def test_unloadable_checkpoint_exits_non_zero_with_a_clear_message(tmp_path: Path, checkpoint: Path) -> None:
    corrupt = tmp_path / 'corrupt'
    corrupt.mkdir()
    for f in checkpoint.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    weights = next(corrupt.glob('*.safetensors'))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases = {tmp_path / 'missing': 'missing', corrupt: str(weights.name), None: "'checkpoint' is empty"}
    for path, expected in cases.items():
        ros_args = [] if path is None else ['--ros-args', '-p', f'checkpoint:={path}']
        result = subprocess.run([sys.executable, '-m', 'lewm_ros.nodes.planner_node', *ros_args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0, f'planner_node started with checkpoint {path!r}'
        output = result.stdout + result.stderr
        assert 'cannot start' in output and expected in output, output


def test_help_needs_no_ros_graph() -> None:
    result = subprocess.run([sys.executable, '-m', 'lewm_ros.nodes.planner_node', '--help'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and 'stale_timeout' in result.stdout




def test_out_of_range_parameter_at_start_exits_non_zero(checkpoint: Path) -> None:
    result = subprocess.run([sys.executable, '-m', 'lewm_ros.nodes.planner_node', '--ros-args', '-p',
                             f'checkpoint:={checkpoint}', '-p', 'samples:=1', '-p', 'safe_action:=brake'],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and 'invalid parameters' in output
    assert 'samples' in output and 'safe_action' in output, output
