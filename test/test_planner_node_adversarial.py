"""Adversarial tests of planner_node: what a careless or hostile ROS user can do to it.

Each test's docstring states the behaviour docs/ros.md promises. The first part holds attacks
that currently fail (defects); the part under "regressions that pass" holds attacks the node
withstands, kept so it goes on withstanding them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters, SetParametersAtomically  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_test_utils import wait_for  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from test_planner_node import FAST_PLANNER, RATE_HZ, Harness, image  # noqa: E402

from lewm_ros.nodes.planner_node import PlannerNode  # noqa: E402


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_planner_node import _save

    return _save(tmp_path_factory.mktemp('adversarial') / 'micro', action_low=[-1.0, -1.0],
                 action_high=[1.0, 1.0])


@pytest.fixture
def setup(rclpy_context, spinner, checkpoint):
    def make(**params):
        node = spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                       **{'control_rate_hz': RATE_HZ, **FAST_PLANNER, **params}))
        harness = Harness(spinner.add(Node('adversary', context=rclpy_context)))
        assert wait_for(lambda: harness.camera.get_subscription_count() > 0, 10.0)
        return node, harness
    return make


class Recorder:
    """Wraps the node's action publisher: every published action with its monotonic time."""

    def __init__(self, node: PlannerNode) -> None:
        self.sent: list[tuple[float, np.ndarray]] = []
        publish = node.action_pub.publish

        def record(msg) -> None:
            self.sent.append((time.monotonic(), np.array(msg.data)))
            publish(msg)

        node.action_pub.publish = record


def raw_set(h: Harness, srv, *params: ParameterMsg):
    """Call a parameter service with hand-built messages (any type, as `ros2 param set` can send)."""
    if srv is SetParametersAtomically:
        return h.call(srv, '/lewm_planner/set_parameters_atomically',
                      SetParametersAtomically.Request(parameters=list(params))).result
    return h.call(srv, '/lewm_planner/set_parameters', SetParameters.Request(parameters=list(params))).results


def msg(name: str, **value) -> ParameterMsg:
    return ParameterMsg(name=name, value=ParameterValue(**value))


# == defects ==========================================================================================
@pytest.mark.parametrize('value', [dict(type=ParameterType.PARAMETER_INTEGER, integer_value=5),
                                   dict(type=ParameterType.PARAMETER_DOUBLE, double_value=0.5),
                                   dict(type=ParameterType.PARAMETER_BOOL, bool_value=True)])
def test_scalar_action_bound_is_rejected_not_a_crash(setup, value) -> None:
    """Invalid parameter updates are rejected with the reason; the node keeps running."""
    node, h = setup()
    results = raw_set(h, SetParameters, msg('action_low', **value))
    assert len(results) == 1 and not results[0].successful and results[0].reason
    ticks = node.ticks
    assert wait_for(lambda: node.ticks > ticks + 2, 5.0)


def test_frame_driven_camera_going_stale_sends_the_safe_action(setup) -> None:
    """The safe action is sent at once when the camera goes stale (frame_driven too)."""
    node, h = setup(frame_driven=True, stale_timeout=0.3)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: node.actions_sent >= 5, 20.0), 'no actions while frames flowed'
        stale = node.safe_actions.get('camera stale', 0)  # (a goal before the first frame is one)
    sent = node.actions_sent
    time.sleep(0.3 + 1.5)  # the camera is dead for six stale_timeouts
    assert node.safe_actions.get('camera stale', 0) > stale, (
        f'camera dead for 1.8 s with stale_timeout 0.3: {node.actions_sent - sent} actions since, '
        f'safe actions {node.safe_actions}')


def test_switching_frame_driven_off_counts_no_phantom_missed_ticks(setup) -> None:
    """missed_ticks counts ticks skipped because the loop overran, not time spent frame-driven."""
    node, h = setup(frame_driven=True)
    time.sleep(3.0)
    assert node.set_parameters([Parameter('frame_driven', value=False)])[0].successful
    start = node.ticks
    assert wait_for(lambda: node.ticks >= start + 5, 10.0)
    assert node.missed_ticks <= 2, f'{node.missed_ticks} missed ticks reported after 1 s of timer ticks'


def test_no_action_outside_accepted_bounds_after_the_update_is_acknowledged(setup) -> None:
    """Every published action is inside the bounds in force: once action_high is accepted, none exceeds it."""
    # A plan that fills its budget (1 s), so that one is in flight when the bounds change.
    node, h = setup(solver='icem', samples=2000, iterations=1000, elites=30, max_plan_time=1.0)
    rec = Recorder(node)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: len(rec.sent) >= 2, 30.0), 'no actions'
        time.sleep(0.2)  # inside the next plan
        result = node.set_parameters([Parameter('action_high', value=[-0.9, -0.9])])[0]
        accepted = time.monotonic()
        assert result.successful, result.reason
        assert wait_for(lambda: any(t > accepted + 1.5 for t, _ in rec.sent), 20.0)
    late = [a for t, a in rec.sent if t > accepted and np.any(a > -0.9 + 1e-9)]
    assert not late, f'{len(late)} action(s) above the accepted action_high -0.9 after the reply: {late[:3]}'


def test_shutdown_sends_the_safe_action_promptly_during_a_long_plan(setup) -> None:
    """SIGINT/SIGTERM stop the control loop and send the safe action (promptly, not after the plan)."""
    node, h = setup(solver='cem', samples=2000, iterations=1000, elites=30, max_plan_time=20.0)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: node.ticks >= 2 and node.frames_used >= 1, 20.0)
        time.sleep(1.0)  # a 20 s plan is in flight
        start = time.monotonic()
        node.close()
        took = time.monotonic() - start
    assert node.safe_actions.get('shutdown') == 1
    assert took < 3.0, f'close() took {took:.1f} s: the robot kept its last command that long'


def test_clear_goal_right_after_a_bounds_update_holds_inside_the_new_bounds(setup) -> None:
    """The safe action (hold) is clipped to the bounds in force, also on ~/clear_goal."""
    node, h = setup(safe_action='hold', control_rate_hz=1.0)
    rec = Recorder(node)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: len(rec.sent) >= 1, 20.0), 'no actions'
        assert node.set_parameters([Parameter('action_high', value=[-0.99, -0.99])])[0].successful
        assert h.call(Trigger, '/lewm_planner/clear_goal').success
    held = rec.sent[-1][1] if node.safe_actions.get('goal cleared') else None
    assert held is not None
    assert np.all(held <= -0.99 + 1e-9), f'clear_goal held {held}, above the accepted action_high -0.99'


def test_a_bad_frame_is_counted_once_in_dropped_camera(setup) -> None:
    """/diagnostics dropped_camera counts camera frames dropped (one bad frame, one drop)."""
    node, h = setup()
    bad = image(h.rng)
    bad.encoding = 'yuv422_nope'
    h.camera.publish(bad)
    assert wait_for(lambda: node.dropped['camera'] == 1, 5.0)
    response = h.call(Trigger, '/lewm_planner/set_goal_from_camera')
    assert not response.success
    assert node.frames_received == 1
    assert node.dropped['camera'] == 1, f"1 frame received, dropped_camera {node.dropped['camera']}"


def _node_process(checkpoint: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'lewm_ros.nodes.planner_node', '--ros-args',
                             '-p', f'checkpoint:={checkpoint}', '-p', 'device:=cpu'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_exits_cleanly(checkpoint: Path, sig: signal.Signals) -> None:
    """SIGINT and SIGTERM exit 0 (or 1 when it cannot start) with no traceback, whenever they come."""
    proc = _node_process(checkpoint)
    time.sleep(0.3)  # still importing torch and rclpy
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1) and 'Traceback' not in out, f'exit code {proc.returncode}:\n{out[-600:]}'


def test_node_process_survives_a_scalar_action_bound(checkpoint: Path, rclpy_context, spinner) -> None:
    """`ros2 param set /lewm_planner action_low 5` is rejected; the node process keeps running."""
    proc = _node_process(checkpoint)
    try:
        client_node = spinner.add(Node('adversary_client', context=rclpy_context))
        client = client_node.create_client(SetParameters, '/lewm_planner/set_parameters')
        assert client.wait_for_service(timeout_sec=60.0), 'the node process did not come up'
        future = client.call_async(SetParameters.Request(parameters=[
            msg('action_low', type=ParameterType.PARAMETER_INTEGER, integer_value=5)]))
        wait_for(future.done, 5.0)
        time.sleep(1.0)
        assert proc.poll() is None, f'the node died (exit {proc.returncode}):\n{proc.stdout.read()[-800:]}'
        assert future.done() and not future.result().results[0].successful
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_unsetting_an_action_bound_keeps_it_readable_and_settable(setup) -> None:
    """Every parameter keeps a value (`ros2 param get` reads it), and action_low can be set again."""
    node, h = setup(action_low=[-0.5, -0.5])
    results = raw_set(h, SetParameters, msg('action_low', type=ParameterType.PARAMETER_NOT_SET))
    if results[0].successful:
        assert node.has_parameter('action_low'), 'action_low was undeclared by a NOT_SET update'
    again = raw_set(h, SetParameters, msg('action_low', type=ParameterType.PARAMETER_DOUBLE_ARRAY,
                                          double_array_value=[-0.4, -0.4]))
    assert again[0].successful, again[0].reason


def test_an_update_that_empties_the_bounds_is_rejected_even_while_the_last_one_is_applied(setup) -> None:
    """A bounds update that would leave the pair empty is rejected (validated as a pair, on every update)."""
    node, h = setup(control_rate_hz=50.0)
    for attempt in range(20):  # right behind the previous update, while the loop ticks at 50 Hz
        assert node.set_parameters([Parameter('action_low', value=[0.5, 0.5])])[0].successful
        result = node.set_parameters([Parameter('action_high', value=[0.4, 0.4])])[0]
        assert not result.successful, (
            f'attempt {attempt}: action_high [0.4, 0.4] accepted with action_low [0.5, 0.5]; parameters say '
            f"{node.get_parameter('action_low').value} .. {node.get_parameter('action_high').value}, "
            f'bounds in force {node.bounds.describe()}')
        assert node.bounds.describe() == '[0.5, 0.5] .. [1, 1]'
        assert node.set_parameters([Parameter('action_low', value=[])])[0].successful
        time.sleep(0.01)  # let a tick run in between, as the original race needed


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new('L', (width, height)).save(buffer, 'PNG', optimize=True)
    return buffer.getvalue()


def test_a_small_png_bomb_does_not_stall_the_control_loop(rclpy_context, spinner, checkpoint) -> None:
    """The control loop keeps its rate whatever one camera message holds (a 100 KB PNG of 8000 x 8000 px)."""
    from sensor_msgs.msg import CompressedImage

    node = spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                   camera_transport='compressed', camera_qos='reliable',
                                   **{'control_rate_hz': RATE_HZ, **FAST_PLANNER}))
    h = Harness(spinner.add(Node('adversary_bomb', context=rclpy_context)))
    pub = h.node.create_publisher(CompressedImage, 'camera/image_raw/compressed', 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
    small, bomb = _png(32, 32), _png(8000, 8000)
    assert len(bomb) < 150_000
    h.goal.publish(image(h.rng))
    for _ in range(10):
        pub.publish(CompressedImage(format='png', data=small))
        time.sleep(0.1)
    assert wait_for(lambda: node.actions_sent >= 2, 10.0)
    start = time.monotonic()
    pub.publish(CompressedImage(format='png', data=bomb))
    time.sleep(0.3)  # the newest frame when the next tick comes
    while time.monotonic() < start + 3.0:
        pub.publish(CompressedImage(format='png', data=small))
        time.sleep(0.1)
    starts = [t for t in node._tick_starts if t >= start - 0.5]
    gap = max(b - a for a, b in zip(starts, starts[1:], strict=False))
    assert gap < 2.5 / RATE_HZ, f'the control loop stood still for {gap:.2f} s on one {len(bomb)} byte frame'


# == regressions that pass ============================================================================
def test_no_planned_action_after_a_clear_goal_reply(setup) -> None:
    """~/clear_goal: the safe action goes out before the reply, and no planned action after it."""
    node, h = setup(control_rate_hz=20.0)
    log: list[tuple[float, str]] = []
    send = node._send

    def spy(action, why, generation=None):
        sent = send(action, why, generation)
        if sent is not None:
            log.append((time.monotonic(), why))
        return sent

    node._send = spy
    with h.streaming(rate_hz=40.0):
        for _ in range(8):
            h.goal.publish(image(h.rng))
            assert wait_for(lambda: any(w == 'planned' for _, w in log[-3:]), 10.0), 'no planned action'
            assert h.call(Trigger, '/lewm_planner/clear_goal').success
            replied = time.monotonic()
            assert log[-1][1] == 'goal cleared' or any(w == 'goal cleared' for _, w in log[-3:])
            time.sleep(0.3)
            late = [w for t, w in log if t > replied and w == 'planned']
            assert not late, f'{len(late)} planned action(s) after the clear_goal reply'


NUMBERS = ('samples', 'iterations', 'elites', 'replan_every')
FLOATS = ('icem_white_fraction', 'max_plan_time', 'stale_timeout', 'surprise_threshold')


@pytest.mark.parametrize('srv', [SetParameters, SetParametersAtomically])
def test_hostile_parameter_values_are_all_rejected(setup, srv) -> None:
    """Invalid updates (NaN, inf, wrong types, out of range, bad arrays) are rejected; nothing changes."""
    node, h = setup()
    before = dict(node.params)
    bad = []
    for name in FLOATS:
        for v in (float('nan'), float('inf'), float('-inf'), -5.0, 1e12):
            bad.append(msg(name, type=ParameterType.PARAMETER_DOUBLE, double_value=v))
        bad.append(msg(name, type=ParameterType.PARAMETER_STRING, string_value='1.0'))
    for name in NUMBERS:
        for v in (-1, 2**62):  # 0 is valid: the checkpoint's setting
            bad.append(msg(name, type=ParameterType.PARAMETER_INTEGER, integer_value=v))
        bad.append(msg(name, type=ParameterType.PARAMETER_DOUBLE, double_value=10.0))
    for name in ('action_low', 'action_high'):
        bad += [msg(name, type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[0.1]),
                msg(name, type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[0.1, 0.2, 0.3]),
                msg(name, type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[float('nan'), 0.0]),
                msg(name, type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[float('inf'), 0.0]),
                msg(name, type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=['0', '0']),
                msg(name, type=ParameterType.PARAMETER_BOOL_ARRAY, bool_array_value=[True, False]),
                msg(name, type=ParameterType.PARAMETER_STRING, string_value='[0.5, 0.5]')]
    bad += [msg('action_low', type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[2.0, 2.0]),
            msg('safe_action', type=ParameterType.PARAMETER_STRING, string_value='brake'),
            msg('goal_metric', type=ParameterType.PARAMETER_STRING, string_value='whitened'),
            msg('frame_driven', type=ParameterType.PARAMETER_INTEGER, integer_value=1),
            msg('horizon', type=ParameterType.PARAMETER_INTEGER, integer_value=3),
            msg('control_rate_hz', type=ParameterType.PARAMETER_DOUBLE, double_value=1000.0)]
    for param in bad:
        result = raw_set(h, srv, param)
        result = result if srv is SetParametersAtomically else result[0]
        assert not result.successful, f'accepted {param.name} = {param.value}'
    # Atomically: one bad value voids the good ones with it.
    result = raw_set(h, SetParametersAtomically,
                     msg('samples', type=ParameterType.PARAMETER_INTEGER, integer_value=20),
                     msg('stale_timeout', type=ParameterType.PARAMETER_DOUBLE, double_value=float('nan')))
    assert not result.successful
    ticks = node.ticks
    assert wait_for(lambda: node.ticks > ticks + 2, 5.0), 'the control loop stopped'
    assert node.params == before


def test_atomic_pair_update_that_crosses_the_old_bounds_is_applied(setup) -> None:
    """action_low/high validated as a pair: an atomic move of both past each other is accepted."""
    node, h = setup(action_low=[-1.0, -1.0], action_high=[-0.5, -0.5])
    array = ParameterType.PARAMETER_DOUBLE_ARRAY
    result = raw_set(h, SetParametersAtomically, msg('action_low', type=array, double_array_value=[0.6, 0.6]),
                     msg('action_high', type=array, double_array_value=[0.9, 0.9]))
    assert result.successful, result.reason
    assert wait_for(lambda: list(node.bounds.low) == [0.6, 0.6] and list(node.bounds.high) == [0.9, 0.9], 5.0)


def _raw(height: int, width: int, encoding: str, data: bytes, step: int, bigendian: int = 0) -> Image:
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step, data=data)


def test_hostile_frames_are_dropped_or_used_and_the_loop_goes_on(setup) -> None:
    """Bad input is dropped and counted; odd but valid frames (4K, 1 x N, padded rows) are used."""
    node, h = setup()
    rng = np.random.default_rng(1)
    good = [
        _raw(2160, 3840, 'rgb8', rng.integers(0, 256, 2160 * 3840 * 3, dtype=np.uint8).tobytes(), 3840 * 3),
        _raw(1, 500, 'rgb8', bytes(1500), 1500),
        _raw(500, 1, 'mono8', bytes(500), 1),
        _raw(20, 20, 'rgb8', bytes(20 * 64), 64),  # padded rows
    ]
    bad = [
        _raw(20, 20, 'rgb8', bytes(20 * 59), 59),  # step shorter than a row
        _raw(20, 20, 'rgb8', bytes(10), 60),  # data too short
        _raw(0, 20, 'rgb8', b'', 60),
        _raw(2**31 - 1, 2**31 - 1, 'rgb8', b'', 2**32 - 1),  # claims an absurd size, carries nothing
        _raw(4, 4, '32FC1', np.full(16, np.nan, np.float32).tobytes(), 16),
        _raw(4, 4, '16UC1', bytes(32), 8),
    ]
    for frame in good + bad:
        used, dropped = node.frames_used, node.dropped['camera']
        h.camera.publish(frame)
        assert wait_for(lambda u=used, d=dropped: node.frames_used > u or node.dropped['camera'] > d, 10.0)
        assert node.frames_used > used if frame in good else node.dropped['camera'] > dropped, frame.encoding
    assert node.planner_errors == 0


def test_big_endian_float_frame_converts_like_little_endian() -> None:
    """32FC3 with is_bigendian set is read big-endian (the same picture as little-endian)."""
    from lewm_ros.image_conversion import image_msg_to_square

    values = np.random.default_rng(2).random((8, 8, 3), dtype=np.float32)
    little = _raw(8, 8, '32FC3', values.astype('<f4').tobytes(), 8 * 12, 0)
    big = _raw(8, 8, '32FC3', values.astype('>f4').tobytes(), 8 * 12, 1)
    np.testing.assert_array_equal(image_msg_to_square(little, 8), image_msg_to_square(big, 8))


def test_compressed_garbage_and_a_wrong_type_publisher_do_no_harm(rclpy_context, spinner, checkpoint) -> None:
    """Compressed data that does not decode is dropped and counted; a String on the topic is ignored."""
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String

    node = spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                   camera_transport='compressed', camera_qos='reliable',
                                   **{'control_rate_hz': RATE_HZ, **FAST_PLANNER}))
    adv = spinner.add(Node('adversary_compressed', context=rclpy_context))
    pub = adv.create_publisher(CompressedImage, 'camera/image_raw/compressed', 10)
    adv.create_publisher(String, 'camera/image_raw', 10).publish(String(data='not an image'))
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
    garbage = [b'', b'\xff\xd8\xff' + bytes(100), b'\x89PNG\r\n\x1a\n' + bytes(50), bytes(range(256)) * 40,
               b'GIF89a' + bytes(30)]
    for i, data in enumerate(garbage):
        pub.publish(CompressedImage(format='jpeg', data=data))
        assert wait_for(lambda n=i: node.dropped['camera'] > n, 10.0), f'garbage {i} not dropped'
    ticks = node.ticks
    assert wait_for(lambda: node.ticks > ticks + 2, 5.0) and node.planner_errors == 0


def test_200_hz_small_frames_keep_the_control_rate(setup) -> None:
    """A fast camera costs the loop almost nothing: the control rate holds, no stale tick."""
    node, h = setup()
    h.goal.publish(image(h.rng))
    with h.streaming(rate_hz=200.0, make=lambda: _raw(8, 8, 'rgb8', bytes(192), 24)):
        assert wait_for(lambda: node.actions_sent >= 3, 20.0)
        ticks, start = node.ticks, time.monotonic()
        assert wait_for(lambda: node.ticks >= ticks + 15, 10.0)
        rate = (node.ticks - ticks) / (time.monotonic() - start)
    assert abs(rate - RATE_HZ) <= 0.25 * RATE_HZ and node.stale_ticks == 0


@pytest.mark.parametrize('when', ['start', 'run time'])
def test_samples_100000_cannot_block_the_loop(setup, when) -> None:
    """samples: 100000 is capped to the plan budget where it does not fit, at start and at run time."""
    node, h = setup(**({'samples': 100000, 'elites': 100} if when == 'start' else {}))
    if when == 'run time':
        results = node.set_parameters([Parameter('samples', value=100000), Parameter('elites', value=100)])
        assert all(r.successful for r in results)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: len(node.plan_times_ms) >= 3, 30.0), 'no plans'
    budget_ms = node.plan_budget() * 1e3
    # capped unless 100000 samples fit the budget as timed: an idle machine plans them with the micro
    # model in about 140 ms of the 160, and then keeps them (what the loop needs is the plan time)
    kept = node.mpc.planner.config.samples == 100000
    assert not kept or max(node.plan_times_ms) <= 1.5 * budget_ms, (list(node.plan_times_ms), budget_ms)
    assert max(node.plan_times_ms) < 2 * budget_ms + 50, (list(node.plan_times_ms), budget_ms)


def test_tiny_max_plan_time_still_acts(setup) -> None:
    """max_plan_time 0.001: one iteration per plan, actions still flow, no planner errors."""
    node, h = setup(max_plan_time=0.001)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: len(node.plan_times_ms) >= 3 and node.actions_sent >= 3, 20.0)
    assert node.planner_errors == 0



def test_clear_goal_answers_at_once_during_a_long_plan(setup) -> None:
    """~/clear_goal sends the safe action at once, not after the plan in flight."""
    node, h = setup(solver='cem', samples=2000, iterations=1000, elites=30, max_plan_time=3.0)
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: node.frames_used >= 1 and node.ticks >= 2, 20.0)
        time.sleep(0.5)
        start = time.monotonic()
        assert h.call(Trigger, '/lewm_planner/clear_goal').success
        took = time.monotonic() - start
    assert node.safe_actions.get('goal cleared') == 1 and took < 0.5, f'clear_goal took {took:.2f} s'


def _rss_mb() -> float:
    return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def test_memory_stays_flat_under_30_hz_640x480_frames(setup) -> None:
    """No growth with a steady 30 Hz camera: the node keeps the newest frame and bounded windows only."""
    node, h = setup()
    h.goal.publish(image(h.rng))
    frame = Image(**{**vars_of(image(h.rng)), 'height': 480, 'width': 640, 'step': 1920,
                     'data': np.random.default_rng(3).integers(0, 256, 480 * 1920, dtype=np.uint8).tobytes()})
    with h.streaming(rate_hz=30.0, make=lambda: frame):
        assert wait_for(lambda: node.actions_sent >= 5, 20.0)
        time.sleep(5.0)
        before = _rss_mb()
        time.sleep(25.0)
        after = _rss_mb()
    assert node.frames_received >= 700
    assert after - before < 30.0, f'RSS grew {after - before:.1f} MB in 25 s ({before:.0f} -> {after:.0f} MB)'


def vars_of(msg: Image) -> dict:
    return {'header': msg.header, 'encoding': msg.encoding, 'is_bigendian': 0}


def test_diagnostics_after_a_planner_failure_and_a_dead_camera(setup) -> None:
    """/diagnostics: ERROR after a planning failure (safe action sent), WARN when the camera is stale."""
    from diagnostic_msgs.msg import DiagnosticStatus

    node, h = setup(stale_timeout=0.3)
    h.goal.publish(image(h.rng))
    act = node.mpc.act

    def broken(deadline=None):
        raise RuntimeError('injected')

    with h.streaming():
        assert wait_for(lambda: node.safe_actions.get('planned', 0) == 0 and node.actions_sent >= 3, 20.0)
        node.mpc.act = broken
        assert wait_for(lambda: node.safe_actions.get('planning failed', 0) >= 2, 10.0)
        count = len(h.health)
        assert wait_for(lambda: len(h.health) > count, 3.0)
        status = h.health[-1].status[0]
        assert status.level == DiagnosticStatus.ERROR, status
        node.mpc.act = act
        sent = node.actions_sent
        assert wait_for(lambda: node.actions_sent >= sent + 3, 10.0), 'did not recover'
    assert wait_for(lambda: node.stale_ticks >= 2, 10.0)
    time.sleep(5.5)  # past the 5 s ERROR window
    count = len(h.health)
    assert wait_for(lambda: len(h.health) > count, 3.0)
    status = h.health[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and status.message == 'camera stale', status
    assert int(values['safe_actions_camera_stale']) >= 1 and int(values['safe_actions_planning_failed']) >= 2
    assert int(values['actions_sent']) >= int(values['safe_actions_sent'])


def test_a_frame_stamped_in_the_future_cannot_keep_a_dead_camera_fresh(setup) -> None:
    """Staleness is time since a frame arrived: a stamp an hour ahead does not delay the safe action."""
    node, h = setup(stale_timeout=0.3)
    h.goal.publish(image(h.rng))

    def future() -> Image:
        frame = image(h.rng)
        frame.header.stamp.sec = int(time.time()) + 3600
        return frame

    with h.streaming(make=future):
        assert wait_for(lambda: node.safe_actions.get('planned', 0) == 0 and node.actions_sent >= 5, 20.0)
        stale = node.safe_actions.get('camera stale', 0)
    assert wait_for(lambda: node.safe_actions.get('camera stale', 0) > stale, 0.3 + 3 / RATE_HZ + 0.5)


def test_a_burst_of_updates_during_planning_ends_in_the_last_value(setup) -> None:
    """Rapid updates are applied between plans, in order: the last accepted value is the one in force."""
    node, h = setup(control_rate_hz=20.0)
    h.goal.publish(image(h.rng))
    with h.streaming(rate_hz=40.0):
        assert wait_for(lambda: node.actions_sent >= 3, 20.0)
        for i in range(150):
            result = raw_set(h, SetParametersAtomically,
                             msg('samples', type=ParameterType.PARAMETER_INTEGER, integer_value=16 + i % 5),
                             msg('goal_cost', type=ParameterType.PARAMETER_STRING,
                                 string_value=('final', 'mean')[i % 2]))
            assert result.successful, result.reason
        assert wait_for(lambda: node.params['samples'] == 20 and node.params['goal_cost'] == 'mean', 5.0)
        sent = node.actions_sent
        assert wait_for(lambda: node.actions_sent >= sent + 5, 10.0)
    assert node.mpc.planner.config.goal_cost == 'mean' and node.planner_errors == 0
