"""Reacher: a 2-link planar arm driven by joint torques to a goal configuration.

Geometry (metres): two 0.12 m links, shoulder at the centre (unlimited), wrist limited to +-2.8 rad.
Action: 2-D torque in [-1, 1] (0.3 and 0.06 N m at full scale); the joints are damped so the arm
turns at most about 3 rad/s. Control at 20 Hz. State: (q_shoulder, q_wrist, dq_shoulder, dq_wrist),
the shoulder angle unwrapped. Success: both joint angles within 0.05 rad of the goal's (shoulder
compared modulo 2 pi).
"""

from __future__ import annotations

import numpy as np

from lewm_ros.sim.base import MujocoTaskEnv, wrap_angle

WRIST_LIMIT = 2.8
START_WRIST_LIMIT = 2.5
ANGLE_TOLERANCE = 0.05


def joint_error(state: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Goal minus current joint angles: the shoulder the short way round, the wrist directly."""
    return np.array([wrap_angle(goal[0] - state[0]), goal[1] - state[1]])


class ReacherEnv(MujocoTaskEnv):
    """Two-link arm reaching a joint configuration (``lewm/Reacher-v0``)."""

    xml_file = 'reacher.xml'
    control_rate_hz = 20.0
    frameskip = 5
    action_dim = 2
    default_max_episode_steps = 100
    recolour_geoms = ('lower_arm', 'finger')

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action

    def _random_configuration(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-START_WRIST_LIMIT, START_WRIST_LIMIT)])

    def _sample_start_state(self, rng: np.random.Generator) -> np.ndarray:
        return np.concatenate([self._random_configuration(rng), np.zeros(2)])

    def _sample_goal_state(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        for _ in range(100):  # a goal that needs real motion, not one already (almost) reached
            goal = self._random_configuration(rng)
            if np.abs(joint_error(start, goal)).max() > 0.5:
                break
        return np.concatenate([goal, np.zeros(2)])

    def _success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return bool(np.all(np.abs(joint_error(state, goal)) < ANGLE_TOLERANCE))

    def _teleport(self, rng: np.random.Generator) -> None:
        here = self.data.qpos.copy()
        for _ in range(100):
            there = self._random_configuration(rng)
            if np.abs(joint_error(here, there)).max() > 1.0:
                break
        self.data.qpos[:] = there
        self.data.qvel[:] = 0.0

    def proprio(self) -> np.ndarray:
        """Joint angles and velocities (what the arm's encoders report)."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)
