"""``planner_node``: camera + goal image in, actions out, and the surprise of every frame.

The ROS edge around ``LatentMPC``: parameters, QoS, message conversions and a control timer.
Image callbacks only convert and store the latest frame (their own callback group), so frames
keep arriving while the control timer (a second group) plans; everything that touches the model
runs in the timer, one tick at a time. Safety: no goal, no actions; a stale camera gets the safe
action; a malformed image is dropped with a log line.
"""

from __future__ import annotations

import os

# The node shares the CPU with DDS threads and other nodes: OpenMP workers that spin while
# waiting starve them (ticks were 20-100x slower on a loaded 2-core machine). Must precede torch.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import math  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float32, Float64MultiArray, MultiArrayDimension  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lewm_ros.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from lewm_ros.device import resolve_device  # noqa: E402
from lewm_ros.image_conversion import ImageConversionError, image_msg_to_rgb, resize_square  # noqa: E402
from lewm_ros.latent_mpc import LatentMPC  # noqa: E402
from lewm_ros.nodes.action_messages import action_message_class, action_to_message, check_action_type  # noqa: E402
from lewm_ros.nodes.parameter_specs import declare, usage, wants_help  # noqa: E402
from lewm_ros.nodes.planner_params import PLANNER_PARAMS  # noqa: E402
from lewm_ros.planning.config import PlannerConfig  # noqa: E402
from lewm_ros.planning.goal_metric import NOT_CALIBRATED, goal_metric_from_meta  # noqa: E402
from lewm_ros.planning.planner import LatentPlanner  # noqa: E402
from lewm_ros.surprise import SurpriseReading  # noqa: E402

SUMMARY = ('Plan actions towards a goal image with a LeWM world model, and flag surprising frames.\n'
           'topics in:  camera/image_raw, lewm/goal_image (sensor_msgs/Image)\n'
           'topics out: lewm/action, lewm/plan, lewm/surprise (diagnostic_msgs/DiagnosticArray), '
           'lewm/surprise/score (std_msgs/Float32)\n'
           'services:   ~/set_goal_from_camera, ~/clear_goal (std_srvs/Trigger)')
_SPECS = {spec.name: spec for spec in PLANNER_PARAMS}
_PLANNER_KEYS = ('solver', 'samples', 'iterations', 'elites', 'icem_white_fraction', 'goal_cost',
                 'goal_metric', 'horizon', 'replan_every', 'seed')
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _planner_config(p: dict[str, Any]) -> PlannerConfig:
    """The planner settings held in the node's parameters (validated by PlannerConfig)."""
    return PlannerConfig(solver=p['solver'], samples=p['samples'], iterations=p['iterations'],
                         elites=p['elites'], icem_white_fraction=p['icem_white_fraction'],
                         goal_cost=p['goal_cost'], goal_metric=p['goal_metric'], horizon=p['horizon'],
                         receding_horizon=p['replan_every'], threads=p['threads'], seed=p['seed'])


class PlannerNode(Node):
    """LeWM planning and surprise monitoring as a ROS 2 node; see the module docstring."""

    def __init__(self, context: Any = None, **overrides: Any) -> None:
        """Load the checkpoint and wire the topics; raises with a clear message when something is wrong.

        Keyword ``overrides`` set parameters, as ``-p name:=value`` would.
        """
        super().__init__('lewm_planner', context=context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        p = declare(self, PLANNER_PARAMS)
        self.params = p
        if not p['checkpoint']:
            raise ValueError("parameter 'checkpoint' is empty: pass the directory written by `lewm train`, "
                             'e.g. --ros-args -p checkpoint:=/path/to/checkpoint')
        device = resolve_device(p['device'])
        self.model, self.meta = load_checkpoint(p['checkpoint'], device)
        cfg = self.model.config
        self.image_size, self.action_dim = cfg.image_size, cfg.action_dim
        check_action_type(p['action_type'], self.action_dim)
        self._trained_low = _bounds(self.meta.get('action_low'), -math.inf, self.action_dim)
        self._trained_high = _bounds(self.meta.get('action_high'), math.inf, self.action_dim)
        self._goal_metric = goal_metric_from_meta(self.meta, cfg.embed_dim)
        threshold = self._threshold(p['surprise_threshold'])
        self.mpc = LatentMPC(self._make_planner(p), threshold, p['replan_every'])

        self._lock = threading.Lock()  # guards what the image callbacks hand to the timer
        self._latest: tuple[np.ndarray, Any, float] | None = None  # (frame, stamp, monotonic arrival)
        self._new_frame = False
        self._pending_goal: np.ndarray | str | None = None  # image, or 'clear' / 'camera'
        self._pending_params: dict[str, Any] = {}
        self._last_action: np.ndarray | None = None
        self._flag_active = False
        self.dropped_frames = 0
        self.ticks = 0
        self.actions_sent = 0
        # Recent figures for benchmarks and the demo: plan time, and frame arrival -> action published.
        self.plan_times_ms: deque[float] = deque(maxlen=1000)
        self.latencies_ms: deque[float] = deque(maxlen=1000)

        sensors, control = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, p['camera_topic'], self._on_camera, qos_profile_sensor_data,
                                 callback_group=sensors)
        self.create_subscription(Image, p['goal_topic'], self._on_goal, _LATCHED, callback_group=sensors)
        self.create_service(Trigger, '~/set_goal_from_camera', self._srv_goal_from_camera,
                            callback_group=sensors)
        self.create_service(Trigger, '~/clear_goal', self._srv_clear_goal, callback_group=sensors)
        self.action_pub = self.create_publisher(action_message_class(p['action_type']), p['action_topic'], 10)
        self.plan_pub = self.create_publisher(Float64MultiArray, p['plan_topic'], 10)
        self.surprise_pub = self.create_publisher(DiagnosticArray, p['surprise_topic'], 10)
        self.score_pub = self.create_publisher(Float32, p['surprise_score_topic'], 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.timer = self.create_timer(1.0 / p['control_rate_hz'], self._on_tick, callback_group=control)
        self.get_logger().info(
            f"loaded {p['checkpoint']} ({self.model.num_parameters() / 1e6:.1f} M parameters, "
            f'{self.image_size} px, frameskip {cfg.frameskip}, history {cfg.history}) on {device}; '
            f"{p['solver']} {p['samples']}x{p['iterations']}, horizon {p['horizon']} blocks, "
            f"{p['control_rate_hz']:g} Hz; surprise threshold "
            f"{'none (run `lewm calibrate`)' if threshold is None else f'{threshold:.4g}'}")

    # -- set-up helpers ---------------------------------------------------------------------------
    def _make_planner(self, p: dict[str, Any]) -> LatentPlanner:
        config = _planner_config(p)
        low, high = self._trained_low, self._trained_high
        if p['action_low'] is not None:
            low = np.maximum(low, np.asarray(p['action_low'], np.float64))
        if p['action_high'] is not None:
            high = np.minimum(high, np.asarray(p['action_high'], np.float64))
        self._low, self._high = low, high
        return LatentPlanner(self.model, config, low, high, self._goal_metric)

    def _threshold(self, parameter: float) -> float | None:
        """The surprise threshold in force: the parameter when >= 0, else the checkpoint's calibration."""
        return parameter if parameter >= 0 else (self.meta.get('surprise') or {}).get('threshold')

    def _check_update(self, changes: dict[str, Any]) -> str | None:
        """Why the combined parameter values after ``changes`` are unusable, or None."""
        merged = {**self.params, **self._pending_params, **changes}
        for name, value in changes.items():
            problem = _SPECS[name].check(value) if name in _SPECS and value is not None else None
            if problem:
                return problem
        for name in ('action_low', 'action_high'):
            if merged[name] is not None and len(merged[name]) != self.action_dim:
                return (f'{name} needs {self.action_dim} values (one per action dimension), '
                        f'got {len(merged[name])}')
        try:
            _planner_config(merged)
        except ValueError as err:
            return str(err)
        if merged['goal_metric'] == 'whitened' and self._goal_metric is None:
            return NOT_CALIBRATED
        low = self._trained_low if merged['action_low'] is None else merged['action_low']
        high = self._trained_high if merged['action_high'] is None else merged['action_high']
        if np.any(np.asarray(low) >= np.asarray(high)):
            return f'action_low {list(low)} must be below action_high {list(high)} in every dimension'
        return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {param.name: param.value for param in params}
        problem = self._check_update(changes)
        if problem:
            self.get_logger().warning(f'rejected parameter update: {problem}')
            return SetParametersResult(successful=False, reason=problem)
        with self._lock:
            self._pending_params.update(changes)  # applied by the timer, between two plans
        return SetParametersResult(successful=True)

    # -- inputs (sensor callback group: store, never plan) -----------------------------------------
    def _convert(self, msg: Image, what: str) -> np.ndarray | None:
        try:
            return resize_square(image_msg_to_rgb(msg), self.image_size)
        except ImageConversionError as err:
            self.dropped_frames += 1
            self.get_logger().warning(f'dropped {what}: {err}', throttle_duration_sec=1.0)
            return None

    def _on_camera(self, msg: Image) -> None:
        frame = self._convert(msg, 'camera frame')
        if frame is not None:
            with self._lock:
                self._latest = (frame, msg.header.stamp, time.monotonic())
                self._new_frame = True

    def _on_goal(self, msg: Image) -> None:
        goal = self._convert(msg, 'goal image')
        if goal is not None:
            with self._lock:
                self._pending_goal = goal
            self.get_logger().info(f'goal image received ({msg.width}x{msg.height} {msg.encoding})')

    def _srv_goal_from_camera(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            have_frame = self._latest is not None
            if have_frame:
                self._pending_goal = self._latest[0].copy()
        response.success = have_frame
        response.message = 'the current view is the goal' if have_frame else 'no camera frame received yet'
        return response

    def _srv_clear_goal(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._pending_goal = 'clear'
        response.success, response.message = True, 'goal cleared: no actions until a new goal'
        return response

    # -- control (timer callback group) ------------------------------------------------------------
    def _on_tick(self) -> None:
        self.ticks += 1
        with self._lock:
            latest, new_frame, goal, changes = self._latest, self._new_frame, self._pending_goal, \
                self._pending_params
            self._new_frame, self._pending_goal, self._pending_params = False, None, {}
        if changes:
            self._apply_params(changes)
        if self.params['frame_driven'] and not new_frame and goal is None:
            # Lock-step: the world moves only when we act, so a tick without a new frame is not a
            # time step (counting it would misalign the history with the simulator's steps).
            return
        if isinstance(goal, np.ndarray):
            self.mpc.set_goal(goal)
        elif goal == 'clear':
            self.mpc.clear_goal()
        if latest is not None:
            reading = self.mpc.observe(latest[0] if new_frame else None)
            if reading is not None:
                self._publish_surprise(reading, latest[1])
        if not self.mpc.has_goal:
            self.get_logger().info(f"no goal: not acting (publish an image on {self.params['goal_topic']} or "
                                   'call ~/set_goal_from_camera)', throttle_duration_sec=5.0)
            self.mpc.executed(None)
            return
        stale = latest is None or time.monotonic() - latest[2] > self.params['stale_timeout']
        if stale:
            action = self._safe_action()
            self.get_logger().warning(
                f"camera stale (no frame for more than {self.params['stale_timeout']} s): sending the "
                f"safe action ({self.params['safe_action']})", throttle_duration_sec=2.0)
        else:
            action, plan = self.mpc.act()
            if action is None:  # the goal just changed and no frame of the new episode arrived yet
                self.mpc.executed(None)
                return
            # The planner clamps in float32; clamp again in the float64 we publish, so a bound of
            # 0.3 is never exceeded by a rounding error.
            action = np.clip(action, self._low, self._high)
            if plan is not None:
                self._publish_plan(plan.sequence[0].cpu().numpy())
                self.plan_times_ms.append(plan.timing['total_ms'])
        self.action_pub.publish(action_to_message(action, self.params['action_type'],
                                                  self.get_clock().now().to_msg(), self.params['frame_id']))
        self.actions_sent += 1
        if new_frame and not stale:
            self.latencies_ms.append((time.monotonic() - latest[2]) * 1e3)
        self._last_action = action
        self.mpc.executed(action)

    def _safe_action(self) -> np.ndarray:
        if self.params['safe_action'] == 'hold' and self._last_action is not None:
            return self._last_action
        return np.zeros(self.action_dim)

    def _apply_params(self, changes: dict[str, Any]) -> None:
        self.params.update(changes)
        if any(k in changes for k in (*_PLANNER_KEYS, 'action_low', 'action_high')):
            self.mpc.replace_planner(self._make_planner(self.params), self.params['replan_every'])
        if 'surprise_threshold' in changes:
            self.mpc.surprise_threshold = self._threshold(changes['surprise_threshold'])
        self.get_logger().info(f'parameters updated: {changes}')

    # -- outputs ----------------------------------------------------------------------------------
    def _publish_surprise(self, reading: SurpriseReading, stamp: Any) -> None:
        status = DiagnosticStatus(name='lewm/surprise', hardware_id=self.get_fully_qualified_name())
        status.level = DiagnosticStatus.WARN if reading.flag else DiagnosticStatus.OK
        if reading.score is None:
            needed = self.mpc.frames_until_surprise
            status.message = f'warming up: {needed} more frame(s) before the first score'
        else:
            status.message = 'surprise above threshold' if reading.flag else 'nominal'
            self.score_pub.publish(Float32(data=float(reading.score)))

        def fmt(x: float | None) -> str:
            return 'nan' if x is None else f'{x:.6g}'

        status.values = [KeyValue(key='score', value=fmt(reading.score)),
                         KeyValue(key='threshold', value=fmt(reading.threshold)),
                         KeyValue(key='running_mean', value=fmt(reading.mean if reading.count else None)),
                         KeyValue(key='flagged', value=str(reading.flag).lower())]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = stamp
        self.surprise_pub.publish(msg)
        if reading.flag and not self._flag_active:
            self.get_logger().warning(
                f'surprise {reading.score:.4g} above threshold {reading.threshold:.4g}: '
                'the camera shows something the model did not expect')
        self._flag_active = reading.flag

    def _publish_plan(self, sequence: np.ndarray) -> None:
        msg = Float64MultiArray(data=[float(v) for v in sequence.reshape(-1)])
        for label, size in zip(('horizon', 'frameskip', 'action'), sequence.shape, strict=True):
            msg.layout.dim.append(MultiArrayDimension(label=label, size=int(size)))
        for i, dim in enumerate(msg.layout.dim):
            dim.stride = int(np.prod(sequence.shape[i:]))
        self.plan_pub.publish(msg)


def _bounds(values: list[float] | None, fill: float, dim: int) -> np.ndarray:
    return np.full(dim, fill) if values is None else np.asarray(values, np.float64)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run lewm_ros planner_node``; exits non-zero when it cannot start."""
    argv = sys.argv if args is None else args
    if wants_help(argv):
        print(usage('planner_node', SUMMARY, PLANNER_PARAMS))
        return 0
    rclpy.init(args=argv)
    try:
        node = PlannerNode()
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        rclpy.logging.get_logger('lewm_planner').fatal(f'cannot start: {err}')
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
