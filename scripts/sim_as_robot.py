#!/usr/bin/env python3
"""Sim as the robot, end to end: record a MuJoCo task over ROS 2 into a rosbag2, import it, train, plan.

The path of docs/robot.md (record a bag, ``lewm import-bag``, ``lewm train``, ``lewm calibrate``,
plan), with ``sim_node`` standing in for the robot. Stages, each runnable alone on the work folder
``--out`` (``all`` runs them in order):

  record     sim_node, a teleop node and a bag recorder in one process, over real ROS 2 topics:
             a drive bag and a held-out calibration bag (rosbag2, MCAP or sqlite3)
  import     ``lewm import-bag`` of both bags
  train      ``lewm train`` (tiny preset by default)
  calibrate  ``lewm calibrate --closed-loop 0`` on the held-out bag (surprise threshold, goal metric)
  evaluate   ``lewm eval`` in MuJoCo (the success figure) and the planner node driving sim_node over
             ROS (lock-step, frame-driven) for a few episodes

Every ``lewm`` command is printed before it runs, so the path can be replayed by hand.

How the recording works, and why
--------------------------------
sim_node runs in ``realtime`` mode: its camera publishes on its own 10 Hz timer while the teleop
node publishes commands on a timer of its own (20 Hz), as on a robot. Both timers run on the ROS
simulation clock (``use_sim_time``, the ``/clock`` topic), which this script advances from one
timer event to the next as soon as everything the last event caused has been delivered: the bag
records sim time, exactly as ``ros2 bag record --use-sim-time`` does behind Gazebo. Wall-clock
real time at 10 Hz was not an option: 400 episodes of 101 frames take 67 minutes at 10 Hz, and on
a loaded 2-core machine the timers jitter by more than the import's tolerance (half a frame
period), so frames would be dropped or doubled at resampling. Lock-step mode (one step per
command) has the opposite problem: frames come whenever the loop gets round to them, and the
stamps the import resamples on are irregular. On the simulation clock the stamps are exact, no
frame is lost to load, and recording runs faster than real time (12 times on 2 busy cores).

The teleop (``--policy mixed`` by default: mostly uniform random commands, a quarter of the
episodes driven to a goal by the scripted expert with noise, as ``lewm collect --policy mixed``)
looks at the robot the way a teleoperator does: it reads the simulator's state through the
SimNode object, and nothing else, to choose its command. It decides at each camera frame,
publishes the decision at once and re-publishes it at 20 Hz until the next frame (the keep-alive
of joystick teleop nodes). Decisions change only at frame instants on purpose: sim_node's
realtime step applies the command held at a tick to the step that ends in that tick's frame, so a
command that changed between two frames would be credited by the import's zero-order hold to the
frame after the one it moved the robot from (one step late). Decided at the frame, the command in
force at frame k is exactly the one that takes the robot to frame k + 1; the test checks it, by
replaying the imported actions in a fresh simulator and getting the imported frames back.

At the end of an episode the teleop publishes ``/episode_end`` (std_msgs/Empty) and calls
``sim/reset``, half a command period after the episode's last frame; the import splits the
episodes there (``--boundary-topic``). The recorder subscribes to the camera, the command topic
and ``/episode_end`` and writes every message, serialised with ``rclpy.serialization``, into a
rosbag2 with ``rosbags.rosbag2.Writer``, with the message definitions of the running ROS
distribution (checked by decoding what rclpy serialised) and its receive time on the sim clock.

Run it on a DDS domain of its own (``ROS_DOMAIN_ID``): it publishes ``/clock``, and a ``/clock`` or
camera from another process on the same domain would mix in. Loopback-only discovery is the default.

Examples::

    scripts/sim_as_robot.py all --out runs/sim_as_robot                     # everything, ~25 min on 2 cores
    scripts/sim_as_robot.py record --out runs/sim_as_robot --episodes 400 --storage sqlite3
    scripts/sim_as_robot.py import --out runs/sim_as_robot
    scripts/sim_as_robot.py train --out runs/sim_as_robot --steps 2500
    scripts/sim_as_robot.py calibrate --out runs/sim_as_robot
    scripts/sim_as_robot.py evaluate --out runs/sim_as_robot --eval-episodes 50 --ros-episodes 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the checkout this script belongs to, before any installed copy
    sys.path.insert(0, str(REPO))
# DDS stays on this machine unless the caller says otherwise (Jazzy+ reads the first, Humble the second)
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', 'egl')

import numpy as np  # noqa: E402

CAMERA_TOPIC = '/camera/image_raw'
ACTION_TOPIC = '/lewm/action'
BOUNDARY_TOPIC = '/episode_end'
RATE_KEYS = ('episodes', 'successes', 'success_rate', 'success_ci95')
STAGES = ('record', 'import', 'train', 'calibrate', 'evaluate', 'all')
SETTLE_TIMEOUT_S = 30.0  # one instant of sim time that does not settle within this is an error
TYPESTORES_BY_RCLPY_MAJOR = {3: 'humble', 4: 'iron', 7: 'jazzy', 9: 'kilted'}


# -- small helpers ------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def ros_type_name(msg_class: type) -> str:
    """``sensor_msgs.msg.Image`` -> ``sensor_msgs/msg/Image``, the name rosbag2 stores."""
    return f'{msg_class.__module__.split(".")[0]}/msg/{msg_class.__name__}'


def typestore_name(requested: str = 'auto') -> str:
    """The rosbags type store of the running ROS distribution: $ROS_DISTRO, else rclpy's version."""
    from rosbags.typesys import Stores

    known = {s.value.removeprefix('ros2_') for s in Stores if s.value.startswith('ros2_')}
    if requested != 'auto':
        if requested not in known:
            raise SystemExit(f'--typestore {requested!r}: choose auto or one of {", ".join(sorted(known))}')
        return requested
    distro = os.environ.get('ROS_DISTRO', '').lower()
    if distro in known:
        return distro
    try:
        from importlib.metadata import version

        major = int(version('rclpy').split('.')[0])
    except Exception:  # noqa: BLE001 - rclpy from a ROS install without package metadata
        major = -1
    return TYPESTORES_BY_RCLPY_MAJOR.get(major, 'jazzy')


def same_message(ours: Any, theirs: Any) -> bool:
    """Whether an rclpy message and a rosbags one hold the same values, field by field."""
    if hasattr(ours, 'get_fields_and_field_types'):
        return all(same_message(getattr(ours, name), getattr(theirs, name, None))
                   for name in ours.get_fields_and_field_types())
    if isinstance(ours, (str, bytes, int, float, bool)):
        return ours == theirs
    ours_list, theirs_list = list(ours), list(theirs)
    if len(ours_list) != len(theirs_list):
        return False
    if ours_list and hasattr(ours_list[0], 'get_fields_and_field_types'):
        return all(same_message(a, b) for a, b in zip(ours_list, theirs_list, strict=True))
    return bool(np.array_equal(np.asarray(ours_list), np.asarray(theirs_list)))


def get_typestore(name: str) -> Any:
    """The rosbags type store ``ros2_<name>``."""
    from rosbags.typesys import Stores
    from rosbags.typesys import get_typestore as _get

    return _get(Stores(f'ros2_{name}'))


def lewm_command(args: list[Any]) -> list[str]:
    """``lewm ARGS`` as a command line of this interpreter (``python -m training.cli``)."""
    return [sys.executable, '-m', 'training.cli', *map(str, args)]


def run_lewm(args: list[Any], log: Path | None = None) -> tuple[str, float]:
    """Run ``lewm ARGS`` (printed first); returns its stdout and wall seconds; exits on failure."""
    shown = 'lewm ' + ' '.join(shlex.quote(str(a)) for a in args)
    print(f'\n$ {shown}', flush=True)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))
    env = {**os.environ, 'PYTHONPATH': path}
    start = time.perf_counter()
    # stderr (progress bars, logs) goes straight to the terminal; stdout is kept for the JSON lines
    process = subprocess.Popen(lewm_command(args), stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    rc = process.wait()
    seconds = time.perf_counter() - start
    out = ''.join(lines)
    if log is not None:
        log.write_text(out)
    if rc != 0:
        raise SystemExit(f'`{shown}` failed with exit code {rc}')
    return out, seconds


def last_json(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return {}


def require(path: Path, stage: str) -> Path:
    """``path``, or a clear error naming the stage to run first when it is missing."""
    if not path.exists():
        raise SystemExit(f'{path} does not exist: run the `{stage}` stage first')
    return path


def read_json(path: Path, stage: str) -> dict[str, Any]:
    """A stage's result file (see ``require``)."""
    return json.loads(require(path, stage).read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + '\n')


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob('*') if p.is_file())


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.0002) -> None:
    """Poll ``predicate`` until true; ``RuntimeError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out after {timeout:g} s waiting for {what}')
        time.sleep(interval)


# -- the recording nodes -----------------------------------------------------------------------
def _sim_time_override() -> list[Any]:
    from rclpy.parameter import Parameter

    return [Parameter('use_sim_time', value=True)]


class BagRecorder:
    """A node that writes every message of some topics into a rosbag2, stamped with its receive time.

    The receive time is the node's clock, the simulation clock here (``use_sim_time``), as
    ``ros2 bag record --use-sim-time`` stamps messages. Messages are serialised with
    ``rclpy.serialization.serialize_message``; the stored definitions come from the rosbags type
    store of the running distribution, and the first message of each topic is decoded with that
    type store, which must give back the values of the rclpy message. A thread of its own owns the
    ``rosbags`` writer (sqlite3 connections belong to the thread that opened them) and does the disk
    writes, so the callbacks only serialise and queue.
    """

    def __init__(self, context: Any, path: Path, storage: str, topics: dict[str, type], typestore: str,
                 use_sim_time: bool = True) -> None:
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin

        plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise SystemExit(f'--storage must be mcap or sqlite3, got {storage!r}')
        self.typestore_name = typestore
        self.typestore = get_typestore(typestore)
        self.path = Path(path)
        self.msgtypes = {topic: ros_type_name(cls) for topic, cls in topics.items()}
        self.counts = dict.fromkeys(topics, 0)  # messages received (and queued for writing)
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.checked: set[str] = set()
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        opened = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, args=(plugins[storage], opened), daemon=True,
                                        name='bag-writer')
        self._thread.start()
        opened.wait()
        if self.error is not None:
            raise self.error
        self.node = Node('lewm_bag_recorder', context=context,
                         parameter_overrides=_sim_time_override() if use_sim_time else [])
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [
            self.node.create_subscription(cls, topic, lambda m, t=topic: self._on_message(t, m), qos)
            for topic, cls in topics.items()]

    def _write_loop(self, plugin: Any, opened: threading.Event) -> None:
        from rosbags.rosbag2 import Writer

        try:
            writer = Writer(self.path, version=9, storage_plugin=plugin)
            writer.open()
            connections = {topic: writer.add_connection(topic, msgtype, typestore=self.typestore)
                           for topic, msgtype in self.msgtypes.items()}
        except BaseException as err:  # noqa: BLE001 - raised again in __init__
            self.error = err
            opened.set()
            return
        opened.set()
        try:
            while (item := self._queue.get()) is not None:
                topic, ns, raw = item
                writer.write(connections[topic], ns, raw)
        except BaseException as err:  # noqa: BLE001 - reported by the driver
            self.error = err
        finally:
            writer.close()  # metadata.yaml: an interrupted recording is still a readable bag

    def _on_message(self, topic: str, msg: Any) -> None:
        from rclpy.serialization import serialize_message

        try:
            ns = self.node.get_clock().now().nanoseconds
            raw = serialize_message(msg)
            if topic not in self.checked:
                msgtype = self.msgtypes[topic]
                if not same_message(msg, self.typestore.deserialize_cdr(raw, msgtype)):
                    raise RuntimeError(f'the {self.typestore_name} definition of {msgtype} does not match '
                                       'what rclpy serialised; pass --typestore for the running ROS '
                                       'distribution')
                self.checked.add(topic)
            self._queue.put((topic, ns, raw))
            self.counts[topic] += 1
            self.first_ns = ns if self.first_ns is None else self.first_ns
            self.last_ns = ns
        except BaseException as err:  # noqa: BLE001 - reported by the driver, which stops the recording
            self.error = err

    def close(self) -> None:
        """Write what is queued, finish the bag (metadata.yaml) and remove the node."""
        self.node.destroy_node()
        self._queue.put(None)
        self._thread.join()


@dataclass
class TeleopEpisode:
    """What the teleop did in one episode: the commands it decided, one per frame but the last."""

    sim_episode: int
    expert: bool
    commands: list[list[float]] = field(default_factory=list)
    goals_reached: int = 0


class Teleop:
    """A node that drives the sim like a teleoperator: a command per camera frame, re-published at a rate.

    See the module docstring. The scripted policy (``lewm_ros.sim.experts.make_policy``) reads the
    simulator's state through the SimNode object, in the sim's MuJoCo thread.
    """

    def __init__(self, context: Any, sim: Any, *, episodes: int, steps: int, policy: str, noise: float,
                 expert_fraction: float, seed: int, command_rate_hz: float) -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from std_msgs.msg import Empty, Float64MultiArray
        from std_srvs.srv import Trigger

        self.node = Node('lewm_teleop', context=context, parameter_overrides=_sim_time_override())
        self.sim, self.episodes, self.steps = sim, episodes, steps
        self.policy_name, self.noise, self.expert_fraction = policy, noise, expert_fraction
        self.command_period = 1.0 / command_rate_hz
        self.rng = np.random.default_rng([seed, 1])
        self._float_array, self._empty, self._trigger = Float64MultiArray, Empty, Trigger
        self.action_pub = self.node.create_publisher(Float64MultiArray, ACTION_TOPIC, 10)
        self.boundary_pub = self.node.create_publisher(Empty, BOUNDARY_TOPIC, 10)
        self.reset_client = self.node.create_client(Trigger, '/sim/reset')
        self.node.create_subscription(Image, CAMERA_TOPIC, self._on_frame, 10)
        self.timer: Any = None
        self.active = self.finished = self.ending = False
        self.frames = self.commands_sent = self.boundaries_sent = 0
        self.resets_requested = self.timer_calls = 0
        self.frame_in_episode = 0
        self.command: np.ndarray | None = None
        self.policy: Any = None
        self.reset_future: Any = None
        self.log: list[TeleopEpisode] = []
        self.error: BaseException | None = None

    def in_sim(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` in the sim's MuJoCo thread (its EGL context and data belong there)."""
        return self.sim._in_mujoco_thread(fn, *args)

    def start(self) -> None:
        """Start the keep-alive timer (now: its phase is set by the clock) and the first episode."""
        self.timer = self.node.create_timer(self.command_period, self._on_timer)
        self.active = True
        self._next_episode()

    def _next_episode(self) -> None:
        from lewm_ros.sim.experts import make_policy

        self.policy = make_policy(self.sim.env, self.policy_name, noise=self.noise, rng=self.rng,
                                  expert_fraction=self.expert_fraction)
        expert = self.policy_name == 'expert' or bool(getattr(self.policy, 'uses_expert', False))
        self.log.append(TeleopEpisode(sim_episode=self.sim.episode + 1, expert=expert))
        self.frame_in_episode = 0
        self.command = None
        self.resets_requested += 1
        self.reset_future = self.reset_client.call_async(self._trigger.Request())
        self.reset_future.add_done_callback(self._on_reset_done)

    def _on_reset_done(self, future: Any) -> None:
        try:
            response = future.result()
            if not response.success:
                raise RuntimeError(f'sim/reset failed: {response.message}')
        except BaseException as err:  # noqa: BLE001 - reported by the driver, which stops the recording
            self.error = err
        self.reset_future = None

    def _on_frame(self, msg: Any) -> None:
        try:
            if self.active and not self.finished:
                self._act()
        except BaseException as err:  # noqa: BLE001 - reported by the driver
            self.error = err
        self.frames += 1  # counted once handled: the driver waits for the command it causes

    def _act(self) -> None:
        k = self.frame_in_episode
        self.frame_in_episode += 1
        episode = self.log[-1]
        if k == 0:
            self.in_sim(self.policy.reset)
        if k >= self.steps:  # the episode's last frame: no command follows it
            self.command, self.ending = None, True
            return
        if k > 0 and self.in_sim(self.sim.env.is_success):  # chain goals, as `lewm collect` does
            self.in_sim(self.sim.env.resample_goal, self.rng)
            self.in_sim(self.policy.reset)
            episode.goals_reached += 1
        action = np.asarray(self.in_sim(self.policy.act), np.float64)
        self.command = action
        episode.commands.append(action.tolist())
        self._publish_command()

    def _publish_command(self) -> None:
        assert self.command is not None
        self.action_pub.publish(self._float_array(data=self.command.tolist()))
        self.commands_sent += 1

    def _on_timer(self) -> None:
        try:
            if self.active and not self.finished:
                self._keep_alive()
        except BaseException as err:  # noqa: BLE001 - reported by the driver
            self.error = err
        self.timer_calls += 1

    def _keep_alive(self) -> None:
        if self.ending:
            self.ending = False
            self.boundary_pub.publish(self._empty())
            self.boundaries_sent += 1
            if len(self.log) < self.episodes:
                self._next_episode()
            else:
                self.finished = True
        elif self.command is not None:
            self._publish_command()

    def close(self) -> None:
        """Remove the node."""
        self.node.destroy_node()


@dataclass
class RecordResult:
    """One recorded bag: where, what is in it, and what the teleop did."""

    bag: Path
    storage: str
    typestore: str
    frames: int
    commands: int
    boundaries: int
    sim_seconds: float
    wall_seconds: float
    episodes: list[TeleopEpisode]
    env_id: str
    img_size: int
    rate_hz: float
    command_rate_hz: float
    frameskip: int
    action_low: list[float]
    action_high: list[float]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (without the per-frame commands)."""
        return {
            'bag': str(self.bag), 'storage': self.storage, 'typestore': self.typestore,
            'bag_bytes': folder_bytes(self.bag), 'episodes': len(self.episodes),
            'expert_episodes': sum(e.expert for e in self.episodes),
            'goals_reached': sum(e.goals_reached for e in self.episodes),
            'frames': self.frames, 'commands': self.commands, 'boundaries': self.boundaries,
            'sim_seconds': round(self.sim_seconds, 3), 'wall_seconds': round(self.wall_seconds, 2),
            'frames_per_wall_s': round(self.frames / max(self.wall_seconds, 1e-9), 1),
            'env_id': self.env_id, 'img_size': self.img_size, 'rate_hz': self.rate_hz,
            'command_rate_hz': self.command_rate_hz, 'frameskip': self.frameskip,
            'action_low': self.action_low, 'action_high': self.action_high, 'seed': self.seed,
            'camera_topic': CAMERA_TOPIC, 'action_topic': ACTION_TOPIC, 'boundary_topic': BOUNDARY_TOPIC,
        }


def record(bag: Path, *, env_id: str = 'lewm/TwoRoom-v0', episodes: int = 2, steps: int = 100,
           img_size: int = 64, storage: str = 'mcap', rate_hz: float = 10.0, command_rate_hz: float = 20.0,
           policy: str = 'mixed', noise: float = 0.5, expert_fraction: float = 0.25, seed: int = 0,
           typestore: str = 'auto', progress: bool = True, desc: str = 'record') -> RecordResult:
    """Drive sim_node with the teleop over ROS 2 and record camera, commands and episode ends into ``bag``.

    ``steps``: commands per episode (an episode has ``steps + 1`` frames). Everything runs in this
    process, on a private rclpy context, on the simulation clock (see the module docstring).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.logging import LoggingSeverity
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import Empty, Float64MultiArray
    from tqdm import tqdm

    from lewm_ros.nodes.sim_node import SimNode

    ratio = command_rate_hz / rate_hz
    if episodes < 1 or steps < 1 or rate_hz <= 0 or abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise SystemExit('--episodes and --episode-steps must be >= 1, and --command-rate a whole multiple '
                         f'of --rate (got {command_rate_hz:g} and {rate_hz:g} Hz)')
    bag = Path(bag)
    if bag.exists():
        raise SystemExit(f'{bag} already exists; remove it or choose another --out')
    bag.parent.mkdir(parents=True, exist_ok=True)
    store = typestore_name(typestore)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    sim = teleop = recorder = clock_node = None
    spin: threading.Thread | None = None
    start_wall = time.perf_counter()
    try:
        sim = SimNode(context=context, env_id=env_id, img_size=img_size, mode='realtime',
                      control_rate_hz=rate_hz, seed=seed, episode_steps=100000, auto_reset=False,
                      goal_mode='task', use_sim_time=True)
        sim.get_logger().set_level(LoggingSeverity.WARN)  # no line per episode under the progress bar
        recorder = BagRecorder(context, bag, storage, {CAMERA_TOPIC: Image, ACTION_TOPIC: Float64MultiArray,
                                                       BOUNDARY_TOPIC: Empty}, store)
        teleop = Teleop(context, sim, episodes=episodes, steps=steps, policy=policy, noise=noise,
                        expert_fraction=expert_fraction, seed=seed, command_rate_hz=command_rate_hz)
        clock_node = Node('lewm_sim_clock', context=context)
        clock_pub = clock_node.create_publisher(Clock, '/clock', 10)
        for node in (sim, recorder.node, teleop.node, clock_node):
            executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        # every publisher must see its subscribers before the first message, or it is lost
        wait_until(lambda: sim.camera_pub.get_subscription_count() >= 2
                   and teleop.action_pub.get_subscription_count() >= 2
                   and teleop.boundary_pub.get_subscription_count() >= 1
                   and clock_pub.get_subscription_count() >= 3
                   and teleop.reset_client.service_is_ready(), 30.0, 'the nodes to discover each other')
        clocked = (sim, teleop.node, recorder.node)

        def set_clock(ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
            clock_pub.publish(msg)

        due = {'camera': 0, 'keepalive': 0}  # timer firings so far, as the clock passed them

        def settled(now: int) -> bool:
            for part in (teleop, recorder):
                if part.error is not None:
                    raise RuntimeError(f'{part.node.get_name()}: {part.error}') from part.error
            if any(n.get_clock().now().nanoseconds != now for n in clocked):
                return False
            # Counted when handled, not when due: a timer is marked as called before its callback
            # runs. The sim publishes one frame per realtime step and one per reset.
            frames = due['camera'] + teleop.resets_requested
            counts = recorder.counts
            if not (teleop.timer_calls == due['keepalive'] and counts[CAMERA_TOPIC] == teleop.frames == frames
                    and counts[ACTION_TOPIC] == teleop.commands_sent
                    and counts[BOUNDARY_TOPIC] == teleop.boundaries_sent and teleop.reset_future is None):
                return False
            # the sim must hold the latest command before its next step (its subscription may lag)
            held = getattr(sim, '_held_action', None)
            return teleop.command is None or held is None or np.array_equal(held, teleop.command)

        def advance(now: int) -> None:
            set_clock(now)
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            republish = time.monotonic() + 0.5
            while not settled(now):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f'sim time {now / 1e9:.3f} s did not settle in {SETTLE_TIMEOUT_S:g} s: recorded '
                        f'{recorder.counts}, teleop saw {teleop.frames} frames and sent '
                        f'{teleop.commands_sent} commands, sim at episode {sim.episode} step {sim.steps}')
                if time.monotonic() > republish:  # /clock is best effort for its subscribers
                    set_clock(now)
                    republish = time.monotonic() + 0.5
                time.sleep(0.0002)

        # The first instant: half a command period. The keep-alive timer starts there, so its ticks
        # fall half a command period off the camera's (which are at multiples of the camera period).
        now = round(0.5e9 * teleop.command_period)
        set_clock(now)
        wait_until(lambda: all(n.get_clock().now().nanoseconds == now for n in clocked), 10.0,
                   'the nodes to receive /clock')
        teleop.start()
        advance(now)
        with tqdm(total=episodes, unit='ep', desc=desc, disable=not progress) as bar:
            done = 0
            while not teleop.finished:
                until = {'camera': sim.timer.time_until_next_call(),
                         'keepalive': teleop.timer.time_until_next_call()}
                step = min(until.values())
                for name, ns in until.items():
                    due[name] += ns == step
                now += int(step)
                advance(now)
                finished_episodes = teleop.boundaries_sent
                if finished_episodes > done:
                    bar.update(finished_episodes - done)
                    done = finished_episodes
                    wall = time.perf_counter() - start_wall
                    bar.set_postfix(frames=recorder.counts[CAMERA_TOPIC],
                                    fps=f'{recorder.counts[CAMERA_TOPIC] / max(wall, 1e-9):.0f}')
        result = RecordResult(
            bag=bag, storage=storage, typestore=store, frames=recorder.counts[CAMERA_TOPIC],
            commands=recorder.counts[ACTION_TOPIC], boundaries=recorder.counts[BOUNDARY_TOPIC],
            sim_seconds=((recorder.last_ns or 0) - (recorder.first_ns or 0)) / 1e9,
            wall_seconds=time.perf_counter() - start_wall, episodes=teleop.log, env_id=env_id,
            img_size=img_size, rate_hz=rate_hz, command_rate_hz=command_rate_hz,
            frameskip=int(sim.env.frameskip), action_low=sim.env.action_space.low.astype(float).tolist(),
            action_high=sim.env.action_space.high.astype(float).tolist(), seed=seed)
    finally:
        executor.shutdown(timeout_sec=5.0)
        if spin is not None:
            spin.join(timeout=5.0)
        if recorder is not None:
            recorder.close()  # an interrupted recording is still a readable bag
        for node in (teleop, clock_node):
            if node is not None:
                (node.close if hasattr(node, 'close') else node.destroy_node)()
        if sim is not None:
            sim.destroy_node()
        rclpy.shutdown(context=context)
    return result


# -- planning over ROS: the planner node driving sim_node ------------------------------------------
def plan_over_ros(checkpoint: Path, *, env_id: str, episodes: int, seed: int = 0, budget: int = 50,
                  device: str = 'cpu', rate_hz: float = 10.0, planner_overrides: dict[str, Any] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Episodes of the planner node (frame-driven) against sim_node (lock-step), over real topics.

    Each episode: ``sim/reset`` (a start on an expert trajectory and the goal ``goal_ahead_steps``
    later, the evaluation protocol), then the planner acts until ``sim/success`` is true or
    ``budget`` steps have passed. Returns the success rate with its 95 % interval.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger
    from tqdm import tqdm

    from lewm_ros.checkpoint import inspect_checkpoint
    from lewm_ros.nodes.planner_node import PlannerNode
    from lewm_ros.nodes.sim_node import SimNode

    meta, _ = inspect_checkpoint(checkpoint)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes: list[Any] = []
    successes: list[bool] = []
    steps_taken: list[int] = []
    state = {'success': False}
    try:
        sim = SimNode(context=context, env_id=env_id, img_size=int(meta['image_size']), mode='lockstep',
                      seed=seed, episode_steps=100000, auto_reset=False, control_rate_hz=rate_hz)
        planner = PlannerNode(context=context, checkpoint=str(checkpoint), device=device,
                              control_rate_hz=rate_hz, frame_driven=True, stale_timeout=60.0,
                              **(planner_overrides or {}))
        print(f'planner node: {planner.settings.describe()}', flush=True)
        observer = Node('lewm_sim_as_robot_observer', context=context)

        def on_success(msg: Any) -> None:
            if msg.data and 0 < sim.steps <= budget:
                state['success'] = True

        observer.create_subscription(Bool, 'sim/success', on_success, 50)
        reset = observer.create_client(Trigger, 'sim/reset')
        nodes = [sim, planner, observer]
        for node in nodes:
            executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        wait_until(reset.service_is_ready, 30.0, 'the sim/reset service')
        with tqdm(total=episodes, unit='ep', desc='planner node over ROS', disable=not progress) as bar:
            for _ in range(episodes):
                future = reset.call_async(Trigger.Request())
                wait_until(future.done, 30.0, 'sim/reset')
                state['success'] = False
                last, last_change = -1, time.monotonic()
                while sim.steps < budget and not state['success']:
                    if sim.steps != last:
                        last, last_change = sim.steps, time.monotonic()
                    elif time.monotonic() - last_change > 120.0:
                        raise RuntimeError(f'the planner made no step for 120 s (sim at step {sim.steps})')
                    time.sleep(0.002)
                successes.append(bool(state['success']))
                steps_taken.append(int(sim.steps))
                bar.update(1)
                bar.set_postfix(success=f'{sum(successes)}/{len(successes)}')
        plan_ms = list(getattr(planner, 'plan_times_ms', []))
    finally:
        executor.shutdown(timeout_sec=5.0)
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)
    k, n = sum(successes), len(successes)
    lo, hi = wilson_interval(k, n)
    return {'episodes': n, 'successes': k, 'success_rate': k / max(n, 1), 'success_ci95': [lo, hi],
            'steps': steps_taken, 'budget': budget, 'seed': seed,
            'plan_ms_median': float(np.median(plan_ms)) if plan_ms else None}


# -- the stages ------------------------------------------------------------------------------------
def paths(out: Path, storage: str) -> dict[str, Path]:
    """Where each stage reads and writes, under the work folder ``out``."""
    return {
        'drive_bag': out / 'bags' / f'drive_{storage}', 'calib_bag': out / 'bags' / f'calib_{storage}',
        'record': out / 'record.json', 'drive_h5': out / 'data' / 'drive.h5',
        'calib_h5': out / 'data' / 'calib.h5', 'import': out / 'import.json', 'run': out / 'run',
        'checkpoint': out / 'run' / 'final', 'train': out / 'train.json', 'calibrate': out / 'calibrate.json',
        'eval': out / 'eval.json', 'ros_eval': out / 'ros_eval.json', 'summary': out / 'summary.json',
    }


def stage_record(args: argparse.Namespace) -> dict[str, Any]:
    """Record the drive bag and the held-out calibration bag."""
    p = paths(args.out, args.storage)
    common = dict(env_id=args.env, steps=args.episode_steps, img_size=args.img_size, storage=args.storage,
                  rate_hz=args.rate, command_rate_hz=args.command_rate, policy=args.policy, noise=args.noise,
                  expert_fraction=args.expert_fraction, typestore=args.typestore)
    results = {}
    for name, episodes, seed in (('drive', args.episodes, args.seed),
                                 ('calib', args.calib_episodes, args.seed + 10_000_000)):
        if episodes <= 0:
            continue
        result = record(p[f'{name}_bag'], episodes=episodes, seed=seed, desc=f'record {name}', **common)
        results[name] = result.to_dict()
        r = results[name]
        print(f'{name}: {r["episodes"]} episodes ({r["expert_episodes"]} goal-directed), '
              f'{r["frames"]} frames, {r["commands"]} commands, {r["boundaries"]} episode ends, '
              f'{r["sim_seconds"]:.0f} s of sim time in {r["wall_seconds"]:.0f} s '
              f'({r["frames_per_wall_s"]:.0f} frames/s), {r["bag_bytes"] / 1e6:.0f} MB {args.storage} bag '
              f'{r["bag"]}', flush=True)
    write_json(p['record'], results)
    return results


def import_options(rec: dict[str, Any]) -> list[Any]:
    """The ``lewm import-bag`` options that match a recording."""
    return ['--camera-topic', rec['camera_topic'], '--action-topic', rec['action_topic'],
            '--boundary-topic', rec['boundary_topic'], '--rate', f'{rec["rate_hz"]:g}',
            '--img-size', rec['img_size'], '--frameskip', rec['frameskip'], '--env-id', rec['env_id'],
            '--action-low=' + ','.join(f'{v:g}' for v in rec['action_low']),
            '--action-high=' + ','.join(f'{v:g}' for v in rec['action_high'])]


def stage_import(args: argparse.Namespace) -> dict[str, Any]:
    """``lewm import-bag`` of both bags."""
    p = paths(args.out, args.storage)
    records = read_json(p['record'], 'record')
    results = {}
    for name, rec in records.items():
        out = p[f'{name}_h5']
        out.parent.mkdir(parents=True, exist_ok=True)
        label = f'teleop-{args.policy}'
        stdout, seconds = run_lewm(['import-bag', rec['bag'], *import_options(rec), '--label', label,
                                    '--out', out, '--overwrite'])
        results[name] = {**last_json(stdout), 'wall_seconds': round(seconds, 2)}
    write_json(p['import'], results)
    return results


def stage_train(args: argparse.Namespace) -> dict[str, Any]:
    """``lewm train`` on the imported drive data."""
    p = paths(args.out, args.storage)
    require(p['drive_h5'], 'import')
    extra = [a for kv in args.set for a in ('--set', kv)]
    _, seconds = run_lewm(['train', '--config', args.config, '--data', p['drive_h5'], '--out', p['run'],
                           '--set', f'optim.max_steps={args.steps}', '--device', args.device, *extra])
    result = {'config': args.config, 'steps': args.steps, 'wall_seconds': round(seconds, 1),
              'checkpoint': str(p['checkpoint'])}
    write_json(p['train'], result)
    return result


def stage_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """``lewm calibrate`` on the held-out calibration data (the drive data without one)."""
    p = paths(args.out, args.storage)
    data = p['calib_h5'] if p['calib_h5'].exists() else p['drive_h5']
    require(p['checkpoint'], 'train')
    stdout, seconds = run_lewm(['calibrate', '--checkpoint', p['checkpoint'], '--data', data,
                                '--closed-loop', args.calib_closed_loop, '--device', args.device, '--json'])
    result = {'data': str(data), 'closed_loop': args.calib_closed_loop, 'wall_seconds': round(seconds, 1),
              **last_json(stdout)}
    write_json(p['calibrate'], result)
    return result


def stage_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """``lewm eval`` in MuJoCo, then the planner node over ROS."""
    p = paths(args.out, args.storage)
    require(p['checkpoint'], 'train')
    result: dict[str, Any] = {}
    if args.eval_episodes > 0:
        _, seconds = run_lewm(['eval', '--checkpoint', p['checkpoint'], '--env', args.env, '--episodes',
                               args.eval_episodes, '--seed', args.eval_seed, '--device', args.device,
                               '--json', p['eval']])
        summary = json.loads(p['eval'].read_text())
        result['eval'] = {k: summary.get(k) for k in ('episodes', 'successes', 'success_rate', 'success_ci95',
                                                      'plan_ms_median')}
        result['eval']['wall_seconds'] = round(seconds, 1)
    if args.ros_episodes > 0:
        print(f'\nplanner node + sim node over ROS: {args.ros_episodes} episodes', flush=True)
        start = time.perf_counter()
        ros = plan_over_ros(p['checkpoint'], env_id=args.env, episodes=args.ros_episodes,
                            seed=args.eval_seed, device=args.device)
        ros['wall_seconds'] = round(time.perf_counter() - start, 1)
        write_json(p['ros_eval'], ros)
        result['ros'] = ros
    return result


def _percent(r: dict[str, Any]) -> str:
    lo, hi = r['success_ci95']
    return (f'{100 * r["success_rate"]:.0f} % ({r["successes"]}/{r["episodes"]}, 95 % CI '
            f'{100 * lo:.0f}-{100 * hi:.0f} %)')


def summarise(args: argparse.Namespace) -> dict[str, Any]:
    """Collect what the stages wrote into one summary (printed, and as one JSON line)."""
    p = paths(args.out, args.storage)
    load = lambda key: json.loads(p[key].read_text()) if p[key].exists() else {}  # noqa: E731
    rec, imp, train, cal, ev, ros = (load(k) for k in ('record', 'import', 'train', 'calibrate', 'eval',
                                                       'ros_eval'))
    drive_rec, drive_imp = rec.get('drive', {}), imp.get('drive', {})
    summary = {
        'env_id': args.env, 'storage': drive_rec.get('storage', args.storage),
        'recorded_episodes': drive_rec.get('episodes'), 'recorded_frames': drive_rec.get('frames'),
        'recorded_commands': drive_rec.get('commands'), 'record_wall_seconds': drive_rec.get('wall_seconds'),
        'bag_bytes': drive_rec.get('bag_bytes'), 'imported_frames': drive_imp.get('frames'),
        'imported_episodes': drive_imp.get('episodes'), 'dropped_frames': drive_imp.get('dropped_frames'),
        'resampled_away': drive_imp.get('resampled_away'),
        'import_frames_per_s': drive_imp.get('frames_per_s'),
        'calib_episodes': imp.get('calib', {}).get('episodes'),
        'train_config': train.get('config'), 'train_steps': train.get('steps'),
        'train_wall_seconds': train.get('wall_seconds'), 'checkpoint': train.get('checkpoint'),
        'surprise_threshold': cal.get('threshold'),
        'eval': {k: ev.get(k) for k in RATE_KEYS} if ev else None,
        'ros': {k: ros.get(k) for k in RATE_KEYS} if ros else None,
    }
    print('\n== sim as the robot: summary ==')
    if drive_rec:
        print(f'recorded   {drive_rec["episodes"]} episodes, {drive_rec["frames"]} frames and '
              f'{drive_rec["commands"]} commands over ROS into a {drive_rec["bag_bytes"] / 1e6:.0f} MB '
              f'{drive_rec["storage"]} bag in {drive_rec["wall_seconds"] / 60:.1f} min')
    if drive_imp:
        dropped = sum((drive_imp.get('dropped_frames') or {}).values())
        print(f'imported   {drive_imp["frames"]} frames in {drive_imp["episodes"]} episodes; dropped '
              f'{dropped} ({drive_imp.get("dropped_frames")}), {drive_imp.get("resampled_away")} skipped by '
              'resampling')
    if train:
        print(f'trained    {train["config"]}, {train["steps"]} steps in {train["wall_seconds"] / 60:.1f} min '
              f'-> {train["checkpoint"]}')
    if ev:
        print(f'planning   lewm eval in MuJoCo: {_percent(ev)}')
    if ros:
        print(f'planning   planner node over ROS: {_percent(ros)}')
    print(json.dumps(summary))
    write_json(p['summary'], summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parts = __doc__.split('\n\n')
    examples = parts.index('Examples::')
    parser = argparse.ArgumentParser(
        prog='sim_as_robot.py', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='\n\n'.join(parts[:4]),
        epilog='examples:\n' + parts[examples + 1] + '\n\nHow the recording works, and why: the docstring '
        'at the top of scripts/sim_as_robot.py. Measured figures: docs/robot.md.')
    parser.add_argument('stage', choices=STAGES,
                        help='which step of the path to run (all: every one, in order)')
    parser.add_argument('--out', type=Path, default=Path('runs/sim_as_robot'),
                        help='work folder: bags/, data/, run/ and one JSON per stage '
                        '(default: runs/sim_as_robot)')
    parser.add_argument('--env', default='lewm/TwoRoom-v0', help='task (default: lewm/TwoRoom-v0)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='rosbag2 storage format (default: mcap)')
    parser.add_argument('--device', default='cpu',
                        help='torch device for train, calibrate and eval (default: cpu)')
    g = parser.add_argument_group('record')
    g.add_argument('--episodes', type=int, default=400, help='episodes in the drive bag (default: 400)')
    g.add_argument('--calib-episodes', type=int, default=40,
                   help='episodes in the held-out calibration bag, 0 for none (default: 40)')
    g.add_argument('--episode-steps', type=int, default=100,
                   help='commands per episode; an episode has one frame more (default: 100)')
    g.add_argument('--img-size', type=int, default=64, help='camera image size in pixels (default: 64)')
    g.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz of sim time (default: 10)')
    g.add_argument('--command-rate', type=float, default=20.0,
                   help='teleop keep-alive rate in Hz of sim time, a whole multiple of --rate (default: 20)')
    g.add_argument('--policy', choices=('mixed', 'random', 'expert'), default='mixed',
                   help='teleop policy (default: mixed, see --expert-fraction)')
    g.add_argument('--expert-fraction', type=float, default=0.25,
                   help='mixed: share of goal-directed episodes (default: 0.25)')
    g.add_argument('--noise', type=float, default=0.5,
                   help='std of the expert\'s action noise (default: 0.5)')
    g.add_argument('--seed', type=int, default=0, help='seed of the recording (default: 0)')
    g.add_argument('--typestore', default='auto',
                   help='message definitions stored in the bag: auto (the running ROS distribution), '
                   'humble, jazzy, kilted, ...')
    g = parser.add_argument_group('train and calibrate')
    g.add_argument('--config', default='tiny', help='lewm train preset (default: tiny)')
    g.add_argument('--steps', type=int, default=2500, help='training steps (default: 2500)')
    g.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='extra lewm train --set override; repeatable')
    g.add_argument('--calib-closed-loop', type=int, default=0,
                   help='lewm calibrate --closed-loop N: planner-driven episodes to score too (default: 0)')
    g = parser.add_argument_group('evaluate')
    g.add_argument('--eval-episodes', type=int, default=50, help='lewm eval episodes in MuJoCo (default: 50)')
    g.add_argument('--ros-episodes', type=int, default=10,
                   help='episodes of the planner node driving sim_node over ROS (default: 10)')
    g.add_argument('--eval-seed', type=int, default=0, help='seed of the evaluation episodes (default: 0)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the chosen stage(s) and print the summary."""
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stages = {'record': stage_record, 'import': stage_import, 'train': stage_train,
              'calibrate': stage_calibrate, 'evaluate': stage_evaluate}
    chosen = list(stages) if args.stage == 'all' else [args.stage]
    started = time.perf_counter()
    for name in chosen:
        print(f'\n== {name} ==', flush=True)
        stages[name](args)
    summary = summarise(args)
    if args.stage == 'all':
        print(f'all stages in {(time.perf_counter() - started) / 60:.1f} min')
    return 0 if summary is not None else 1


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
