"""``sim_node``: one of the lewm MuJoCo tasks behind ROS 2 topics, for sim-in-the-loop testing.

Publishes the camera image, the goal image of the current episode (transient local, so a planner
started later still gets it) and success; applies actions from the action topic, holding the last
one when none arrives. ``lockstep`` mode steps the physics once per received action, which makes
runs reproducible whatever the machine's speed; ``realtime`` mode steps on a timer.
Services: ``sim/reset``, ``sim/teleport``, ``sim/recolour`` (std_srvs/Trigger).
"""

from __future__ import annotations

if __name__ == '__main__':  # run as a script: a Ctrl-C during the slow imports below exits cleanly too
    from lewm_ros.nodes.node_runner import catch_signals

    catch_signals()

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from lewm_ros.image_conversion import rgb_to_image_fields
from lewm_ros.nodes.action_messages import ACTION_TYPES, action_message_class, message_to_action
from lewm_ros.nodes.node_runner import run_node
from lewm_ros.nodes.parameter_specs import ParamSpec, declare
from lewm_ros.sim import make_env
from lewm_ros.sim.eval_protocol import expert_start_and_goal

SUMMARY = ('Run a lewm MuJoCo task (TwoRoom, Reacher, PushT, Cube) and expose it on ROS 2 topics: '
           'camera/image_raw, lewm/goal_image, sim/success out; lewm/action in.')

PARAMS = (
    ParamSpec('env_id', 'lewm/TwoRoom-v0', 'gymnasium id of the task (lewm/TwoRoom-v0, lewm/Reacher-v0, '
              'lewm/PushT-v0, lewm/Cube-v0)'),
    ParamSpec('img_size', 64, 'camera image size in pixels (square)', low=16, high=1024),
    ParamSpec('mode', 'lockstep', 'lockstep: one env step per received action; realtime: step on a timer '
              'at control_rate_hz holding the last action', choices=('lockstep', 'realtime')),
    ParamSpec('control_rate_hz', 0.0, 'env steps per second in realtime mode, and the idle republish rate '
              'in lockstep mode before the first action; 0 = the task\'s own rate', low=0.0, high=1000.0),
    ParamSpec('seed', 0, 'seed of the first episode; episode i uses seed + i', low=0, high=2**31 - 1),
    ParamSpec('episode_steps', 50, 'env steps per episode before the episode ends (the paper\'s budget)',
              low=1, high=100000),
    ParamSpec('auto_reset', True, 'start a new episode when one ends (success or step budget)'),
    ParamSpec('goal_mode', 'expert_ahead', "expert_ahead: start on an expert trajectory, goal = the state "
              "goal_ahead_steps later (the paper's protocol); task: the task's own random start and goal",
              choices=('expert_ahead', 'task')),
    ParamSpec('goal_ahead_steps', 25, 'env steps between start and goal in expert_ahead mode', low=1,
              high=1000),
    ParamSpec('camera_topic', 'camera/image_raw', 'camera image out (sensor_msgs/Image, rgb8)'),
    ParamSpec('goal_topic', 'lewm/goal_image', 'goal image out (reliable, transient local)'),
    ParamSpec('action_topic', 'lewm/action', 'action in (env units)'),
    ParamSpec('action_type', 'float64_multi_array', 'message type of the action topic', choices=ACTION_TYPES),
    ParamSpec('success_topic', 'sim/success', 'std_msgs/Bool: whether the current state reaches the goal'),
    ParamSpec('frame_id', 'sim_camera', 'frame_id of the published images'),
)


class SimStartError(RuntimeError):
    """The simulator cannot start: MuJoCo or its offscreen renderer (EGL, OSMesa) does not work here."""


def open_env(env_id: str, img_size: int) -> Any:
    """Make task ``env_id`` and render one frame, which creates the GL context; call it in one thread.

    An unknown task or size is a ``ValueError`` from ``make_env``. Anything else that fails here
    (mujoco's import, no libEGL, no libOSMesa, a GL context that cannot be made) raises
    ``SimStartError`` naming the cause and the renderer in use, so the node stops with one line.
    """
    env = None
    try:
        env = make_env(env_id, img_size=img_size)
        env.render()
        return env
    except ValueError:
        raise
    except Exception as err:
        if env is not None:
            try:
                env.close()
            except Exception:  # the renderer is broken already: report the first error
                pass
        gl = os.environ.get('MUJOCO_GL', '')
        raise SimStartError(
            f'cannot simulate {env_id} with MUJOCO_GL={gl!r}: {type(err).__name__}: {err} (headless '
            'rendering needs EGL, libEGL with MUJOCO_GL=egl, or OSMesa, libOSMesa with MUJOCO_GL=osmesa)'
        ) from err


class SimNode(Node):
    """The MuJoCo task as a ROS 2 node; see the module docstring."""

    def __init__(self, context: Any = None, **overrides: Any) -> None:
        """Create the node; keyword ``overrides`` set parameters as ``-p name:=value`` would."""
        super().__init__('lewm_sim', context=context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        p = declare(self, PARAMS)
        self.params = p
        # An EGL context belongs to the thread that made it current, and executor callbacks run on
        # any of its threads: every MuJoCo call goes through this one thread.
        self._mujoco_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='mujoco')
        self.env = self._in_mujoco_thread(open_env, p['env_id'], p['img_size'])
        self.action_dim = int(self.env.action_space.shape[0])
        rate = p['control_rate_hz'] or float(self.env.control_rate_hz)
        self._rng = np.random.default_rng(p['seed'])
        self._held_action = np.zeros(self.action_dim)
        self.episode = -1
        self.steps = 0
        self._frame_stamp: Any = None  # stamp of the current observation (kept when re-published)
        self.episode_successes: list[bool] = []

        group = MutuallyExclusiveCallbackGroup()
        self.camera_pub = self.create_publisher(Image, p['camera_topic'], 10)
        goal_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.goal_pub = self.create_publisher(Image, p['goal_topic'], goal_qos)
        self.success_pub = self.create_publisher(Bool, p['success_topic'], 10)
        self.create_subscription(action_message_class(p['action_type']), p['action_topic'],
                                 self._on_action, 10, callback_group=group)
        self.create_service(Trigger, 'sim/reset', self._srv_reset, callback_group=group)
        self.create_service(Trigger, 'sim/teleport', lambda req, res: self._srv_perturb('teleport', res),
                            callback_group=group)
        self.create_service(Trigger, 'sim/recolour', lambda req, res: self._srv_perturb('recolour', res),
                            callback_group=group)
        self.timer = self.create_timer(1.0 / rate, self._on_timer, callback_group=group)
        self.reset_episode()
        self.get_logger().info(f"simulating {p['env_id']} at {rate:g} Hz in {p['mode']} mode, "
                               f'{p["img_size"]} px images')

    def _in_mujoco_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._mujoco_thread.submit(fn, *args, **kwargs).result()

    # -- episodes -----------------------------------------------------------------------
    def reset_episode(self) -> None:
        """Start the next episode and publish its first frame and its goal image."""
        self._in_mujoco_thread(self._reset_episode)

    def _reset_episode(self) -> None:
        p = self.params
        self.episode += 1
        if p['goal_mode'] == 'expert_ahead':
            start, goal = expert_start_and_goal(self.env, self._rng, goal_ahead=p['goal_ahead_steps'])
            self.env.reset(seed=p['seed'] + self.episode, options={'state': start, 'goal_state': goal})
        else:
            self.env.reset(seed=p['seed'] + self.episode)
        self.steps = 0
        self._actions_this_episode = 0
        self._episode_ended = False
        self._held_action = np.zeros(self.action_dim)
        self._publish_image(self.goal_pub, self.env.goal_image())
        # The goal first, acknowledged by every (reliable) subscriber, then the episode's first
        # frame: a planner that saw the frame first would compare it with the last episode's.
        self.goal_pub.wait_for_all_acked(Duration(seconds=1.0))
        self._publish_frame()

    def _end_episode_if_done(self) -> None:
        success = self._in_mujoco_thread(self.env.is_success)
        if self._episode_ended or not (success or self.steps >= self.params['episode_steps']):
            return
        self._episode_ended = True
        self.episode_successes.append(bool(success))
        rate = np.mean(self.episode_successes)
        self.get_logger().info(f'episode {self.episode} {"succeeded" if success else "failed"} after '
                               f'{self.steps} steps (success so far {rate:.0%} of '
                               f'{len(self.episode_successes)})')
        if self.params['auto_reset']:
            self.reset_episode()

    # -- stepping -----------------------------------------------------------------------
    def _step(self) -> None:
        def step() -> None:
            self.env.step(self._held_action)
            self.steps += 1
            self._publish_frame()

        self._in_mujoco_thread(step)
        self._end_episode_if_done()

    def _on_action(self, msg: Any) -> None:
        try:
            action = message_to_action(msg, self.action_dim)
        except ValueError as err:
            self.get_logger().warning(f'ignoring action: {err}', throttle_duration_sec=2.0)
            return
        self._held_action = action
        self._actions_this_episode += 1
        if self.params['mode'] == 'lockstep':
            self._step()

    def _on_timer(self) -> None:
        if self.params['mode'] == 'realtime':
            self._step()
        elif self._actions_this_episode == 0:
            # Lock-step before the first action of the episode: show the unchanged world so a
            # planner that starts later (or waits for a goal) sees the camera. Once actions flow,
            # every frame answers one action. A re-published frame keeps its stamp, so a planner
            # can tell it from a new observation.
            self._in_mujoco_thread(lambda: self._publish_frame(fresh=False))

    # -- services -----------------------------------------------------------------------
    def _srv_reset(self, request: Any, response: Any) -> Any:
        self.reset_episode()
        response.success, response.message = True, f'episode {self.episode} started'
        return response

    def _srv_perturb(self, kind: str, response: Any) -> Any:
        def perturb() -> int:
            self.env.perturb(kind, self._rng)
            # Lock-step: the next action's frame shows it (every frame answers one action); an
            # extra frame now would be a step the planner never took. Before the first action of
            # an episode there is no such frame coming: show it now.
            if self.params['mode'] == 'realtime' or self._actions_this_episode == 0:
                self._publish_frame()
            return self.steps  # the frame of the next step is the first to show it

        step = self._in_mujoco_thread(perturb)
        self.get_logger().info(f'{kind} applied at step {step} of episode {self.episode}')
        response.success, response.message = True, f'{kind} at step {step}'
        return response

    # -- publishing ---------------------------------------------------------------------
    def _publish_frame(self, fresh: bool = True) -> None:
        """Publish the current view; ``fresh``: a new observation (after a step, reset or perturbation)."""
        if fresh or self._frame_stamp is None:
            self._frame_stamp = self.get_clock().now().to_msg()
        self._publish_image(self.camera_pub, self.env.render(), self._frame_stamp)
        self.success_pub.publish(Bool(data=bool(self.env.is_success())))

    def _publish_image(self, publisher: Any, rgb: np.ndarray, stamp: Any = None) -> None:
        msg = Image(**rgb_to_image_fields(rgb))
        msg.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        msg.header.frame_id = self.params['frame_id']
        publisher.publish(msg)

    def destroy_node(self) -> None:
        """Free the renderer (in its thread) along with the node."""
        if hasattr(self, 'env'):  # a node whose construction failed has none
            self._in_mujoco_thread(self.env.close)
        if hasattr(self, '_mujoco_thread'):
            self._mujoco_thread.shutdown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run lewm_ros sim_node``; exits non-zero when it cannot start."""
    return run_node(args, 'sim_node', 'lewm_sim', SUMMARY, PARAMS, SimNode,
                    (ValueError, FileNotFoundError, SimStartError),
                    'services: sim/reset, sim/teleport, sim/recolour (std_srvs/Trigger)')


if __name__ == '__main__':
    sys.exit(main())
