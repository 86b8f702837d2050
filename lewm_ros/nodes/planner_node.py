"""``planner_node``: camera + goal image in, actions out, and the surprise of every frame.

The ROS edge around ``LatentMPC``: parameters, QoS, message conversions and the control loop.

Threads. The executor (single-threaded) only moves messages: the camera callback stores the
latest message and its arrival time, nothing more, so a 30 or 60 Hz camera costs almost
nothing; goal images, services, parameters and a 1 Hz health timer run there too. The control
loop is a thread of its own that ticks at ``control_rate_hz`` on the steady clock (or on each new
frame with ``frame_driven``): it converts the newest frame only (crop and downscale in one step),
encodes it, scores its surprise, plans when a block starts and publishes one action. Planning in
an executor callback made the multi-threaded executor spin on the busy timer and starve
everything else (25 of 100 ticks sent with a 30 Hz camera).

Safety. Every command goes through one ``ActionGate`` (finite, inside the bounds in force, or
the safe action instead) under one lock: a stale camera, a cleared goal, a planner exception and
shutdown each send the safe action at once, and no action planned for a goal that has since
been cleared or replaced is sent. Plans are bounded by ``max_plan_time`` (samples and iterations
capped at start from a measurement, and a deadline inside the solver).
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a script: a Ctrl-C during the slow imports below exits cleanly too
    from lewm_ros.nodes.node_runner import catch_signals

    catch_signals()

import os

# The node shares the CPU with DDS threads and other nodes: OpenMP workers that spin while
# waiting starve them (ticks were 20-100x slower on a loaded 2-core machine). Must precede torch.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.expand_topic_name import expand_topic_name  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32, Float64MultiArray, MultiArrayDimension  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from lewm_ros.action_safety import ActionBounds, ActionGate, BoundsError  # noqa: E402
from lewm_ros.checkpoint import CheckpointError, load_checkpoint, load_controller  # noqa: E402
from lewm_ros.device import resolve_device  # noqa: E402
from lewm_ros.image_conversion import (  # noqa: E402
    ImageConversionError,
    compressed_msg_to_square,
    image_msg_to_square,
)
from lewm_ros.latent_mpc import LatentMPC  # noqa: E402
from lewm_ros.nodes.action_messages import action_message_class, action_to_message, check_action_type  # noqa: E402
from lewm_ros.nodes.node_runner import run_node  # noqa: E402
from lewm_ros.nodes.parameter_specs import declare  # noqa: E402
from lewm_ros.nodes.planner_params import PLANNER_PARAMS, PLANNER_SETTING_PARAMS  # noqa: E402
from lewm_ros.planning.budget import PlanCost, fit_measured, fit_to_budget, measure_plan_cost  # noqa: E402
from lewm_ros.planning.config import PlannerConfig  # noqa: E402
from lewm_ros.planning.goal_metric import goal_metric_from_meta  # noqa: E402
from lewm_ros.planning.planner import LatentPlanner, needs_controller  # noqa: E402
from lewm_ros.planning.settings import ResolvedSettings, resolve  # noqa: E402
from lewm_ros.surprise import SurpriseReading  # noqa: E402

SUMMARY = ('Plan actions towards a goal image with a LeWM world model, and flag surprising frames.\n'
           'topics in:  camera/image_raw (sensor_msgs/Image, or CompressedImage on .../compressed), '
           'lewm/goal_image (sensor_msgs/Image)\n'
           'topics out: lewm/action, lewm/plan, lewm/surprise (diagnostic_msgs/DiagnosticArray), '
           'lewm/surprise/score (std_msgs/Float32), /diagnostics (node health)\n'
           'services:   ~/set_goal_from_camera, ~/clear_goal, ~/reset (std_srvs/Trigger)')
_SPECS = {spec.name: spec for spec in PLANNER_PARAMS}
_PLANNER_KEYS = (*PLANNER_SETTING_PARAMS, 'planner_preset', 'seed', 'max_plan_time')
_BOUNDS_KEYS = ('action_low', 'action_high')
_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
FRAME_DRIVEN_PLAN_TIME = 2.0  # auto plan budget when the world waits for each action (lock-step)
# frame_driven: how long a new goal waits for a frame of its episode before the newest frame is
# taken as its start (a simulator's reset frame follows its goal within milliseconds; a loaded
# machine can take tens of them, and starting from the last episode's frame misaligns the history)
NEWEST_FRAME_WAIT = 1.0


def resolve_planner_settings(meta: dict[str, Any], p: dict[str, Any]) -> ResolvedSettings:
    """The planner settings for parameters ``p``: set ones win over the preset, then the checkpoint's."""
    explicit = {field: p[name] for name, (field, unset) in PLANNER_SETTING_PARAMS.items()
                if p[name] != unset and not (isinstance(unset, float) and p[name] < 0)}
    base = PlannerConfig(threads=p['threads'], seed=p['seed'])
    return resolve(meta, p['planner_preset'] or None, explicit, explicit_source='parameter', base=base)


def _solver_text(config: PlannerConfig) -> str:
    """``icem 300x30``, ``controller``, ``icem 100x3 from the controller``."""
    if config.solver == 'controller':
        return 'controller (one forward pass)'
    text = f'{config.solver} {config.samples}x{config.iterations}'
    return text + (' from the controller' if config.proposal == 'controller' else '')


def _nanoseconds(stamp: Any) -> int:
    """A ``builtin_interfaces/Time`` as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _as_lists(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with the bounds as plain lists (rclpy hands ``array.array`` to callbacks)."""
    return {k: list(v) if k in _BOUNDS_KEYS else v for k, v in changes.items()}


def _camera_qos(reliable: bool) -> QoSProfile:
    """Keep only the newest frame: the control loop never uses an older one."""
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


class PlannerNode(Node):
    """LeWM planning and surprise monitoring as a ROS 2 node; see the module docstring."""

    def __init__(self, context: Any = None, **overrides: Any) -> None:
        """Load the checkpoint, measure the planner, wire the topics and start the control loop.

        Raises with a clear message when something is wrong. Keyword ``overrides`` set parameters,
        as ``-p name:=value`` would.
        """
        super().__init__('lewm_planner', context=context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        try:
            self._build()
        except BaseException:
            super().destroy_node()  # a node that cannot start leaves nothing on the graph
            raise

    def _build(self) -> None:
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
        self.bounds = self._resolve_bounds(p)
        self.gate = ActionGate(self.bounds, p['safe_action'])
        self._goal_metric = goal_metric_from_meta(self.meta, cfg.embed_dim)
        self.settings = resolve_planner_settings(self.meta, p)
        self.controller = self._load_controller(p['checkpoint'], device)
        self.plan_cost: PlanCost = measure_plan_cost(self._planner(self.settings.config, self.bounds))
        planner, self.budget_note = self._fitted_planner(self.settings, self.bounds, p, timed=True)
        self.mpc = LatentMPC(planner, self._threshold(p['surprise_threshold']),
                             self.settings.config.receding_horizon)

        # Hand-over between the executor (callbacks) and the control thread, under _lock.
        self._lock = threading.Lock()
        self._latest_msg: tuple[Any, float] | None = None  # (message, monotonic arrival)
        self._new_frame = threading.Event()
        self._pending_goal: np.ndarray | str | None = None  # image, or 'clear'
        self._pending_goal_stamp: Any = None
        self._waiting_since: float | None = None  # a goal set, no frame of its episode seen yet
        self._pending_reset = False  # ~/reset: the world was reset, restart the frame history
        self._went_stale = False  # the camera was stale since the last frame: restart the history too
        self._planner_stale = False  # parameters changed: the loop rebuilds the planner
        # Everything that publishes an action holds _send_lock; _generation counts goal changes,
        # so a plan made for a goal that was cleared or replaced meanwhile is never sent.
        self._send_lock = threading.RLock()
        self._generation = 0
        self._closed = False  # after close(): nothing is sent any more
        # State of the control thread.
        self._frame: np.ndarray | None = None
        self._frame_stamp: Any = None
        self._frame_arrival: float | None = None
        self._taken_arrival: float | None = None  # arrival of the newest message the loop has taken
        self._flag_active = False
        self._warned: dict[str, float] = {}
        # Figures for /diagnostics, benchmarks and the demo (plain counters: read without locks).
        self.ticks = self.missed_ticks = self.actions_sent = self.planner_errors = self.stale_ticks = 0
        self.history_restarts: dict[str, int] = {}  # by reason (~/reset, stale camera, ...; not goals)
        self.safe_actions: dict[str, int] = {}  # safe actions sent, by reason
        self.frames_received = self.frames_used = 0
        self.frames_repeated = 0  # frames with the stamp of the last one (re-published), not used
        self.dropped = {'camera': 0, 'goal': 0}
        self.last_drop_reason = ''
        self._last_planner_error = -1e9
        self.plan_times_ms: deque[float] = deque(maxlen=1000)
        self.latencies_ms: deque[float] = deque(maxlen=1000)  # frame arrival -> action published
        self.frame_ages_ms: deque[float] = deque(maxlen=1000)  # age of the frame each tick acted on
        self._tick_starts: deque[float] = deque(maxlen=2000)

        self._camera_type = Image if p['camera_transport'] == 'raw' else CompressedImage
        self._camera_type_name = f'sensor_msgs/msg/{self._camera_type.__name__}'
        self._camera_topic = (p['camera_topic'] if p['camera_transport'] == 'raw'
                              else p['camera_topic'].rstrip('/') + '/compressed')
        # Input callbacks only store under locks, so they may run concurrently: in a multi-threaded
        # executor a mutually exclusive group would make it spin on every frame that arrives while
        # another input callback runs (rclpy retries a ready entity whose group is busy).
        self._inputs = ReentrantCallbackGroup()
        self._camera_topic_name = expand_topic_name(self._camera_topic, self.get_name(), self.get_namespace())
        self._camera_sub = None
        self._camera_reliability = 'waiting for a publisher'
        # The goal subscription first: when a goal and a frame are ready together the executor
        # serves them in creation order, and a new episode's goal must win over its first frame.
        self.create_subscription(Image, p['goal_topic'], self._on_goal, _LATCHED, callback_group=self._inputs)
        if p['camera_qos'] == 'auto':
            self._subscribe_camera_like_publishers()  # now if the camera is up, else from the health timer
        else:
            self._subscribe_camera(p['camera_qos'] == 'reliable')
        self.create_service(Trigger, '~/set_goal_from_camera', self._srv_goal_from_camera,
                            callback_group=self._inputs)
        self.create_service(Trigger, '~/clear_goal', self._srv_clear_goal, callback_group=self._inputs)
        self.create_service(Trigger, '~/reset', self._srv_reset, callback_group=self._inputs)
        self.action_pub = self.create_publisher(action_message_class(p['action_type']), p['action_topic'], 10)
        self.plan_pub = self.create_publisher(Float64MultiArray, p['plan_topic'], 10)
        self.surprise_pub = self.create_publisher(DiagnosticArray, p['surprise_topic'], 10)
        score_topic = p['surprise_score_topic'] or p['surprise_topic'].rstrip('/') + '/score'
        self.score_pub = self.create_publisher(Float32, score_topic, 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, p['diagnostics_topic'], 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0, self._on_health)
        self._log_start(device, threshold=self.mpc.surprise_threshold)

        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._control_loop, name='lewm-control', daemon=True)
        self._loop.start()

    # -- set-up helpers ---------------------------------------------------------------------------
    def _resolve_bounds(self, p: dict[str, Any]) -> ActionBounds:
        """The bounds in force for parameters ``p`` (raises ``BoundsError`` with the reason)."""
        meta = self.meta
        return ActionBounds.resolve(self.action_dim, meta.get('action_low'), meta.get('action_high'),
                                    p['action_low'], p['action_high'], p['allow_unbounded_actions'])

    def _planner(self, config: PlannerConfig, bounds: ActionBounds) -> LatentPlanner:
        return LatentPlanner(self.model, config, bounds.low, bounds.high, self._goal_metric, self.controller)

    def _load_controller(self, checkpoint: str, device: Any) -> Any:
        """The checkpoint's controller: required when the settings use it, else loaded when present."""
        if needs_controller(self.settings.config):
            return load_controller(checkpoint, self.meta, device)  # raises, saying how to get one
        if 'controller' not in self.meta:
            return None
        try:
            return load_controller(checkpoint, self.meta, device)
        except CheckpointError as err:  # unused now; a switch to it will be refused with this reason
            self.get_logger().warning(f'the controller stored in the checkpoint cannot be used: {err}')
            return None

    def plan_budget(self, p: dict[str, Any] | None = None) -> float:
        """Seconds a plan may take with parameters ``p`` (default: those in force)."""
        p = self.params if p is None else p
        if p['max_plan_time'] > 0:
            return float(p['max_plan_time'])
        return FRAME_DRIVEN_PLAN_TIME if p['frame_driven'] else 0.8 / p['control_rate_hz']

    def _fitted_planner(self, settings: ResolvedSettings, bounds: ActionBounds, p: dict[str, Any],
                        timed: bool = False) -> tuple[LatentPlanner, str | None]:
        """The planner for ``settings``, capped to the plan budget of ``p`` (``timed``: checked by timing)."""
        planner = self._planner(settings.config, bounds)
        if timed:
            config, note = fit_measured(planner, self.plan_cost, self.plan_budget(p))
        else:
            config, note = fit_to_budget(planner.config, self.plan_cost, self.plan_budget(p))
        return self._planner(config, bounds), note

    def _threshold(self, parameter: float) -> float | None:
        """The surprise threshold in force: the parameter when >= 0, else the checkpoint's calibration."""
        return parameter if parameter >= 0 else (self.meta.get('surprise') or {}).get('threshold')

    def _log_start(self, device: Any, threshold: float | None) -> None:
        p, cfg, planner = self.params, self.model.config, self.mpc.planner.config
        log = self.get_logger()
        log.info(f"loaded {p['checkpoint']} ({self.model.num_parameters() / 1e6:.1f} M parameters, "
                 f'{self.image_size} px, frameskip {cfg.frameskip}, history {cfg.history}) on {device}; '
                 f'planning {_solver_text(planner)} in force, '
                 f"{p['control_rate_hz']:g} Hz{' (frame driven)' if p['frame_driven'] else ''}; "
                 f'plan budget {self.plan_budget() * 1e3:.0f} ms (measured '
                 f'{self.plan_cost.seconds(planner.samples, planner.iterations) * 1e3:.0f} ms per plan); '
                 f'actions within {self.bounds.describe()}, safe action {p["safe_action"]}; '
                 'surprise threshold '
                 f"{'none (run `lewm calibrate`)' if threshold is None else f'{threshold:.4g}'}; camera "
                 f'{self._camera_topic_name} ({p["camera_transport"]}, {self._camera_reliability})')
        log.info(f'planner settings: {self.settings.describe()}')
        if self.budget_note:
            log.warning(self.budget_note)
        if not self.bounds.bounded:
            log.warning('allow_unbounded_actions is true and the checkpoint records no bounds: actions are '
                        'only checked to be finite')
        zero = np.zeros(self.action_dim)
        if p['safe_action'] == 'zero' and not self.bounds.contains(zero):
            log.warning(f'zero lies outside the action bounds {self.bounds.describe()}: the safe action is '
                        f'{self.bounds.clip(zero).tolist()}')

    # -- camera subscription ------------------------------------------------------------------------
    def _camera_publishers(self) -> list[Any]:
        """Endpoint info of the publishers of our message type on the camera topic."""
        return [info for info in self.get_publishers_info_by_topic(self._camera_topic_name)
                if info.topic_type == self._camera_type_name]

    def _subscribe_camera(self, reliable: bool) -> None:
        self._camera_reliability = 'reliable' if reliable else 'best-effort'
        self._camera_sub = self.create_subscription(self._camera_type, self._camera_topic, self._on_camera,
                                                    _camera_qos(reliable), callback_group=self._inputs)

    def _subscribe_camera_like_publishers(self) -> None:
        """camera_qos auto: once publishers exist, subscribe reliable if all of them are, else best effort.

        A best-effort subscriber loses large frames from a reliable publisher (in bursts, or all
        of them), and a reliable one gets nothing from a best-effort publisher. The subscription
        is made once and never replaced: destroying a subscription with a message pending can
        leave rclpy's multi-threaded executor spinning on a task it can no longer run.
        """
        publishers = self._camera_publishers()
        if not publishers:
            return
        self._subscribe_camera(all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                                   for info in publishers))
        self.get_logger().info(f'camera_qos auto: {len(publishers)} publisher(s) on '
                               f'{self._camera_topic_name}: subscribing {self._camera_reliability}')

    def _check_camera_input(self, now: float) -> None:
        """Explain why no frames arrive: no publisher, another message type, or QoS."""
        last = self._latest_msg[1] if self._latest_msg else None
        if last is not None and now - last < max(2.0, 2 * self.params['stale_timeout']):
            return
        topic = self._camera_topic_name
        publishers = self.get_publishers_info_by_topic(topic)
        if not publishers:
            other = topic[:-len('/compressed')] if topic.endswith('/compressed') else topic + '/compressed'
            hint = ('; ' + other + ' has publishers: set camera_transport accordingly'
                    if self.get_publishers_info_by_topic(other) else '')
            self._warn_every('no-publisher', 10.0, f'no camera frames: nothing is published on {topic}{hint}')
            return
        wrong = sorted({info.topic_type for info in publishers} - {self._camera_type_name})
        if wrong:
            self._warn_every('wrong-type', 10.0, f'camera topic {topic} carries {", ".join(wrong)} but '
                             f'this node reads {self._camera_type_name}: set camera_transport (raw: '
                             'sensor_msgs/Image, compressed: sensor_msgs/CompressedImage on '
                             '<camera_topic>/compressed)')
            return
        reliable = [info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers]
        if self._camera_reliability == 'best-effort' and all(reliable):
            self._warn_every('qos', 10.0, f'{len(publishers)} reliable publisher(s) on {topic} but no frame '
                             'arrives: large frames sent to a best-effort subscriber are often lost whole; '
                             'set camera_qos:=reliable (or auto)')
        elif self._camera_reliability == 'reliable' and not any(reliable):
            self._warn_every('qos', 10.0, f'the publishers on {topic} are best effort and this node '
                             'subscribes reliable (incompatible QoS): set camera_qos:=sensor_data (or auto)')
        else:
            self._warn_every('no-frames', 10.0, f'{len(publishers)} publisher(s) on {topic} but no frame '
                             'arrives (check the publisher is running and its QoS)')

    def _warn_every(self, key: str, seconds: float, text: str, level: str = 'warning') -> None:
        """Log at most once per ``seconds`` for each ``key`` (one shared throttle would hide problems)."""
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= seconds:
            self._warned[key] = now
            # rclpy ties a severity to each call site: one call per level.
            if level == 'info':
                self.get_logger().info(text)
            else:
                self.get_logger().warning(text)

    # -- parameters -------------------------------------------------------------------------------
    def _check_update(self, changes: dict[str, Any]) -> str | None:
        """Why the parameter values after ``changes`` are unusable, or None."""
        for name, value in changes.items():
            if value is None:  # NOT_SET: rclpy would undeclare the parameter
                return (f'{name} cannot be unset' + (" (use [] for the checkpoint's bounds)"
                                                     if name in _BOUNDS_KEYS else ''))
            problem = _SPECS[name].check(value) if name in _SPECS else None
            if problem:
                return problem
        merged = {**self.params, **_as_lists(changes)}
        try:
            settings = resolve_planner_settings(self.meta, merged)
            self._resolve_bounds(merged)
        except ValueError as err:  # BoundsError and PlannerSettingsError are ones
            return str(err)
        if needs_controller(settings.config) and self.controller is None:
            return (f"solver {settings.config.solver} with proposal {settings.config.proposal} needs the "
                    "checkpoint's controller, and it has no usable one (`lewm train-controller`)")
        return None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate and put in force at once: bounds and safe action before the reply, the planner next tick.

        Under the send lock, so no action leaves between the check and the swap, and every action
        sent after the reply meets the new bounds (a plan made under the old ones is clipped).
        """
        changes = {param.name: param.value for param in params}
        with self._send_lock:
            problem = self._check_update(changes)
            if problem:
                self.get_logger().warning(f'rejected parameter update: {problem}')
                return SetParametersResult(successful=False, reason=problem)
            self._apply_params(_as_lists(changes))
        return SetParametersResult(successful=True)

    def _apply_params(self, changes: dict[str, Any]) -> None:
        """Put validated changes in force (executor thread, send lock held); the loop rebuilds the planner."""
        params = {**self.params, **changes}
        bounds = self._resolve_bounds(params)
        gate = ActionGate(bounds, params['safe_action'])
        gate.last_sent = self.gate.last_sent
        self.params, self.bounds, self.gate = params, bounds, gate
        if any(k in changes for k in (*_PLANNER_KEYS, *_BOUNDS_KEYS, 'frame_driven')):
            self._planner_stale = True
        if 'surprise_threshold' in changes:
            self.mpc.surprise_threshold = self._threshold(changes['surprise_threshold'])
        zero = np.zeros(self.action_dim)
        if params['safe_action'] == 'zero' and not bounds.contains(zero):
            self.get_logger().warning(f'zero lies outside the action bounds {bounds.describe()}: the safe '
                                      f'action is now {bounds.clip(zero).tolist()}')
        self.get_logger().info(f'parameters updated: {changes}')

    def _rebuild_planner(self) -> None:
        """The planner for the parameters in force (control thread, between two plans)."""
        self._planner_stale = False
        params, bounds = self.params, self.bounds
        self.settings = resolve_planner_settings(self.meta, params)
        planner, note = self._fitted_planner(self.settings, bounds, params)
        self.mpc.replace_planner(planner, self.settings.config.receding_horizon)
        self.get_logger().info(f'planner settings in force: {self.settings.describe()}')
        self.budget_note = note
        if note:
            self.get_logger().warning(note)

    # -- inputs (executor thread: store, never plan) -------------------------------------------------
    def _on_camera(self, msg: Any) -> None:
        with self._lock:
            self._latest_msg = (msg, time.monotonic())
            self.frames_received += 1
        self._new_frame.set()

    def _convert(self, msg: Any, source: str, count: bool = True) -> np.ndarray | None:
        """The frame in ``msg`` at the model's size, or None (logged; counted if ``count``) when malformed."""
        try:
            if isinstance(msg, CompressedImage):
                return compressed_msg_to_square(msg, self.image_size)
            return image_msg_to_square(msg, self.image_size)
        except ImageConversionError as err:
            self.dropped[source] += count
            self.last_drop_reason = f'{source}: {err}'
            self._warn_every(f'drop-{source}', 1.0, f'dropped {source} image: {err}')
            return None

    @property
    def dropped_frames(self) -> int:
        """Camera frames and goal images dropped as malformed."""
        return sum(self.dropped.values())

    def _on_goal(self, msg: Image) -> None:
        goal = self._convert(msg, 'goal')
        if goal is not None:
            self._change_goal(goal, msg.header.stamp)
            self.get_logger().info(f'goal image received ({msg.width}x{msg.height} {msg.encoding})')

    def _change_goal(self, goal: np.ndarray | str, stamp: Any = None) -> None:
        """Hand a new goal (or 'clear') to the control loop; plans for the old one are void from now.

        ``stamp``: the goal image's header stamp; a camera frame stamped at or after it already
        shows the goal's episode (a simulator publishes the goal first, then the episode's frame).
        """
        with self._send_lock, self._lock:
            self._generation += 1
            self._pending_goal = goal
            self._pending_goal_stamp = stamp
        self._new_frame.set()  # frame-driven loops wake up for it

    def _srv_goal_from_camera(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            latest = self._latest_msg
        # The loop counts this message's drop when it takes it: count it once.
        frame = None if latest is None else self._convert(latest[0], 'camera', count=False)
        if frame is not None:
            self._change_goal(frame, latest[0].header.stamp)
        response.success = frame is not None
        response.message = ('the current view is the goal' if frame is not None else
                            'no camera frame received yet' if latest is None else
                            f'the last camera frame is unusable: {self.last_drop_reason}')
        return response

    def _srv_clear_goal(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._send_lock:  # one lock for both: no planned action can slip in between
            self._change_goal('clear')
            self._send(None, 'goal cleared')
        response.success = True
        response.message = 'goal cleared: safe action sent, no actions until a new goal'
        return response

    def _srv_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            self._pending_reset = True
        self._new_frame.set()
        response.success = True
        response.message = ('episode reset: the next frame starts a new history (not scored as a surprise); '
                            'the goal is kept')
        return response

    # -- output gate (every action goes through here) ----------------------------------------------------
    def _send(self, action: np.ndarray | None, why: str, generation: int | None = None) -> np.ndarray | None:
        """Publish ``action`` through the gate (None: the safe action, sent because of ``why``).

        Returns what was sent, or None when nothing was. ``generation``: the goal generation the
        action was planned for; a plan for a goal that was cleared or replaced since is not sent.
        """
        with self._send_lock:
            if self._closed or (generation is not None and generation != self._generation):
                return None
            sent, problem = self.gate.gate(action)
            if problem:
                self.get_logger().error(f'refused to send the planned action ({problem}): sending the safe '
                                        'action instead')
            stamp = self.get_clock().now().to_msg()
            self.action_pub.publish(action_to_message(sent, self.params['action_type'], stamp,
                                                      self.params['frame_id']))
            self.actions_sent += 1
            if action is None or problem:
                reason = 'refused plan' if problem else why
                self.safe_actions[reason] = self.safe_actions.get(reason, 0) + 1
            return sent

    # -- control loop (its own thread) ---------------------------------------------------------------
    def _control_loop(self) -> None:
        try:
            self._run_loop()
        except Exception:
            if not self._stop.is_set():  # after close() the node may be half torn down: end quietly
                raise

    def _run_loop(self) -> None:
        period = 1.0 / self.params['control_rate_hz']
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.params['frame_driven']:
                self._new_frame.wait(timeout=period)  # a lock-step world answers each action with a frame
                self._new_frame.clear()
                next_tick = time.monotonic()  # so that leaving frame_driven starts on time, nothing missed
            else:
                delay = next_tick - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            if self._stop.is_set():
                break
            self._tick_safely()
            if not self.params['frame_driven']:
                next_tick += period
                now = time.monotonic()
                while now - next_tick > 0.5 * period:  # overran: skip the ticks that are past, no burst
                    next_tick += period
                    self.missed_ticks += 1

    def _tick_safely(self) -> None:
        """One tick; any exception is logged, answered with the safe action, and the loop goes on."""
        try:
            self._tick()
        except Exception as err:  # noqa: BLE001 - the control loop must survive anything
            if not self._stop.is_set():  # a tick cut short by shutdown is no failure
                self._answer_failure(err, 'tick failed')

    def _answer_failure(self, err: Exception, what: str) -> None:
        """Log ``err``, drop the plan, send the safe action (counted under ``what``)."""
        self.planner_errors += 1
        self._last_planner_error = time.monotonic()
        self.get_logger().error(f'{what} ({type(err).__name__}: {err}): sending the safe action',
                                throttle_duration_sec=1.0)
        try:
            self.mpc.restart_plan()
            self.mpc.executed(self._send(None, what))
        except Exception as again:  # noqa: BLE001 - e.g. the tick failed before its frame was recorded
            self.get_logger().error(f'after {what}: {type(again).__name__}: {again}',
                                    throttle_duration_sec=1.0)

    def _tick(self) -> None:
        start = time.monotonic()
        self.ticks += 1
        self._tick_starts.append(start)
        with self._lock:
            latest, goal, generation = self._latest_msg, self._pending_goal, self._generation
            goal_stamp = self._pending_goal_stamp
            reset, self._pending_goal, self._pending_reset = self._pending_reset, None, False
            if latest is not None and latest[1] == self._taken_arrival:
                latest = None  # nothing new since the last tick
            elif latest is not None:
                self._taken_arrival = latest[1]
        if self._planner_stale:
            self._rebuild_planner()
        frame, why = None, 'reset'
        if latest is not None and self._repeats_last_frame(latest[0]):
            latest = None  # the same instant published again (a lock-step sim waiting): no new view
            self.frames_repeated += 1
        if latest is not None:
            frame = self._convert(latest[0], 'camera')
            if frame is not None:
                # After a stale camera what happened meanwhile is unknown (a reset, the robot moved
                # by hand): the new frame starts a new history.
                why = 'reset' if reset else 'stale camera'
                reset, self._went_stale = reset or self._went_stale, False
                self._frame, self._frame_stamp, self._frame_arrival = frame, latest[0].header.stamp, latest[1]
                self.frames_used += 1
        if reset:
            self.mpc.restart_history()
            why = why if frame is not None else 'reset'
            self.history_restarts[why] = self.history_restarts.get(why, 0) + 1
            if frame is None:
                self._waiting_since = start  # the next frame starts the history (frame_driven: or the newest)
        if frame is not None:
            self._waiting_since = None
        elif self._frame is not None and self._newest_view_is_current(goal, goal_stamp, start):
            frame = self._frame  # the newest frame starts the new goal's history
            self._waiting_since = None
        if self.params['frame_driven'] and frame is None and goal is None:
            # Lock-step: the world moves only when we act, so a tick without a new frame is not a
            # time step (counting it would misalign the history with the simulator's steps); but
            # a camera that stopped altogether still gets the safe action.
            if self.mpc.has_goal and self._camera_stale(start):
                self._send_stale()
            return
        if isinstance(goal, np.ndarray):
            self.mpc.set_goal(goal)
        elif goal == 'clear':
            self.mpc.clear_goal()
        if self._frame is not None:
            reading = self.mpc.observe(frame)
            if reading is not None:
                self._publish_surprise(reading, self._frame_stamp)
        if not self.mpc.has_goal:
            if self._frame_arrival is not None and self._camera_stale(start):
                self._went_stale = True  # the surprise monitor runs without a goal too
            self._warn_every('no-goal', 5.0, 'no goal: not acting (publish an image on '
                             f"{self.params['goal_topic']} or call ~/set_goal_from_camera)", level='info')
            self.mpc.executed(None)
            return
        if self._camera_stale(start):
            self.mpc.executed(self._send_stale())
            return
        self.frame_ages_ms.append((start - self._frame_arrival) * 1e3)
        try:
            action, plan = self.mpc.act(deadline=start + self.plan_budget())
        except Exception as err:  # noqa: BLE001 - a failed plan must not take the node down
            self._answer_failure(err, 'planning failed')
            return
        if action is None:  # the goal just changed and no frame of the new episode arrived yet
            self.mpc.executed(None)
            return
        if plan is not None:
            self._publish_plan(plan.sequence[0].cpu().numpy())
            self.plan_times_ms.append(plan.timing['total_ms'])
        sent = self._send(action, 'planned', generation)
        if sent is not None and frame is not None:
            self.latencies_ms.append((time.monotonic() - self._frame_arrival) * 1e3)
        self.mpc.executed(sent)

    def _newest_view_is_current(self, goal: Any, goal_stamp: Any, now: float) -> bool:
        """Whether, after a new goal (or a reset) and no new frame, the newest frame starts the history.

        Yes if it is stamped at or after the goal (it shows the goal's episode already). Otherwise
        wait for the next frame; with ``frame_driven`` at most ``NEWEST_FRAME_WAIT``, since a
        lock-step world waits for our action and the newest frame is where it stands.
        """
        if isinstance(goal, np.ndarray):
            if goal_stamp is not None and _nanoseconds(self._frame_stamp) >= _nanoseconds(goal_stamp):
                return True
            self._waiting_since = now
            return False
        return (self._waiting_since is not None and self.params['frame_driven']
                and now - self._waiting_since >= NEWEST_FRAME_WAIT)

    def _repeats_last_frame(self, msg: Any) -> bool:
        """Whether ``msg`` carries the (non-zero) stamp of the frame used last: a re-published view."""
        stamp, last = msg.header.stamp, self._frame_stamp
        return bool(last is not None and (stamp.sec or stamp.nanosec) and stamp.sec == last.sec
                    and stamp.nanosec == last.nanosec)

    def _camera_stale(self, now: float) -> bool:
        return self._frame_arrival is None or now - self._frame_arrival > self.params['stale_timeout']

    def _send_stale(self) -> np.ndarray | None:
        """The safe action for a stale camera; the plan made before the outage is dropped."""
        waited = ('no camera frame yet' if self._frame_arrival is None else
                  f"camera stale (no frame for more than {self.params['stale_timeout']} s)")
        self._warn_every('stale', 2.0, f"{waited}: sending the safe action ({self.params['safe_action']})")
        self.mpc.restart_plan()
        self._went_stale = self._frame_arrival is not None  # no frame yet: nothing to restart
        sent = self._send(None, 'camera stale')
        self.stale_ticks += 1
        return sent

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

    # -- health (executor thread, 1 Hz) -------------------------------------------------------------------
    def health(self) -> dict[str, float | int | str]:
        """The node's figures over the last few seconds: what /diagnostics reports."""
        now = time.monotonic()
        starts = [t for t in list(self._tick_starts) if now - t <= 5.0]
        rate = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 2 else 0.0

        def pct(values: deque[float], q: float) -> float:
            recent = list(values)[-200:]
            return float(np.percentile(recent, q)) if recent else float('nan')

        planner = self.mpc.planner.config
        return {
            'tick_rate_hz': round(rate, 2), 'control_rate_hz': self.params['control_rate_hz'],
            'ticks': self.ticks, 'missed_ticks': self.missed_ticks,
            'plan_ms_median': round(pct(self.plan_times_ms, 50), 2),
            'plan_ms_p99': round(pct(self.plan_times_ms, 99), 2),
            'plan_budget_ms': round(self.plan_budget() * 1e3, 1),
            'planner': (f'{_solver_text(planner)}, '
                        f'horizon {planner.horizon}, replan every {planner.receding_horizon}, '
                        f'{planner.goal_cost} {planner.goal_metric} cost'),
            'frame_age_ms_median': round(pct(self.frame_ages_ms, 50), 2),
            'frame_to_action_ms_p99': round(pct(self.latencies_ms, 99), 2),
            'frames_received': self.frames_received, 'frames_used': self.frames_used,
            'frames_repeated': self.frames_repeated,
            'frames_superseded': max(0, self.frames_received - self.frames_used - self.frames_repeated
                                     - self.dropped['camera']),
            'dropped_camera': self.dropped['camera'], 'dropped_goal': self.dropped['goal'],
            'last_drop_reason': self.last_drop_reason, 'stale_ticks': self.stale_ticks,
            **{f'history_restarts_{k.replace(" ", "_")}': v
               for k, v in sorted(self.history_restarts.items())},
            'actions_sent': self.actions_sent, 'safe_actions_sent': sum(self.safe_actions.values()),
            **{f'safe_actions_{k.replace(" ", "_")}': v for k, v in sorted(self.safe_actions.items())},
            'planner_errors': self.planner_errors, 'camera_qos': self._camera_reliability,
        }

    def _on_health(self) -> None:
        now = time.monotonic()
        if self._camera_sub is None:
            self._subscribe_camera_like_publishers()
        self._check_camera_input(now)
        figures = self.health()
        status = DiagnosticStatus(name=f'{self.get_name()}: control loop',
                                  hardware_id=self.get_fully_qualified_name())
        rate, wanted = figures['tick_rate_hz'], self.params['control_rate_hz']
        if now - self._last_planner_error < 5.0:
            status.level, status.message = DiagnosticStatus.ERROR, 'planning failed: sending the safe action'
        elif self._frame_arrival is None or now - self._frame_arrival > self.params['stale_timeout']:
            status.level, status.message = DiagnosticStatus.WARN, 'camera stale'
        elif not self.params['frame_driven'] and rate < 0.9 * wanted:
            status.level, status.message = DiagnosticStatus.WARN, f'ticking at {rate:.1f} Hz of {wanted:g}'
        else:
            status.level, status.message = DiagnosticStatus.OK, 'ok'
        status.values = [KeyValue(key=k, value=str(v)) for k, v in figures.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(msg)

    # -- shutdown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Send the safe action at once (a driver that holds the last command stops), then stop the loop.

        A plan still in flight is not waited for: it is void (no action leaves after this), and
        the loop thread is a daemon that ends with the process.
        """
        if self._closed:
            return
        with self._send_lock:
            self._generation += 1
            if self.actions_sent or self.mpc.has_goal:  # a node that only monitored surprise stays silent
                self._send(None, 'shutdown')
            self._closed = True
        self._stop.set()
        self._new_frame.set()
        self._loop.join(timeout=1.0)
        self.action_pub.wait_for_all_acked(timeout=rclpy_duration(1.0))

    def destroy_node(self) -> None:
        """Close (safe action out) before the publishers go away."""
        if hasattr(self, '_loop'):  # a node whose construction failed has no loop
            self.close()
        super().destroy_node()


def rclpy_duration(seconds: float) -> Any:
    """An ``rclpy.duration.Duration`` of ``seconds``."""
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run lewm_ros planner_node``; exits non-zero when it cannot start."""
    return run_node(args, 'planner_node', 'lewm_planner', SUMMARY, PLANNER_PARAMS, PlannerNode,
                    (ValueError, CheckpointError, FileNotFoundError, BoundsError))


if __name__ == '__main__':
    sys.exit(main())
