"""Cube: a two-finger gripper picks a cube off the table and places it at a target position.

The gripper rides a Cartesian gantry (x, y, z, yaw), each axis position-servoed and gravity-compensated;
its two fingers are servoed slide joints that close symmetrically. The cube (5 cm, 125 g) is held by
finger friction alone. Action (5-D, [-1, 1]): hand target displacement (x, y, z) of up to 2.5 cm per
10 Hz step, yaw displacement of up to 0.25 rad, and the grip (-1 open ... +1 closed, absolute).
State (qpos, qvel): hand (x, y, z, yaw), fingers (2), cube position and quaternion, then velocities
(25 values). The hand position is that of the fingertips' midpoint. Success: cube centre within 4 cm
of the goal's (3-D distance).
Start: cube and hand anywhere within +-0.13 m, the hand 8-14 cm up with open fingers. Goal: the cube
resting elsewhere on the table (at least 12 cm away), the open hand 12 cm above it.
"""

from __future__ import annotations

import numpy as np

from lewm_ros.sim.base import MujocoTaskEnv

CUBE_HALF = 0.025
STEP_SIZE = 0.025
YAW_STEP = 0.25
SUCCESS_DISTANCE = 0.04
FINGER_OPEN = 0.025  # finger joint position, fully open (fingertips 13 cm apart)
FINGER_CLOSED = -0.03  # beyond contact with the cube: the servo squeezes
TABLE_LIMIT = 0.13  # cube, goal and hand start within +-13 cm of the centre
GOAL_HAND_HEIGHT = 0.12

# qpos layout
HAND = slice(0, 4)
FINGER_L, FINGER_R = 4, 5
CUBE_POS = slice(6, 9)
CUBE_QUAT = slice(9, 13)


def grip_to_finger(grip: float) -> float:
    """Finger joint target for a grip command in [-1, 1] (-1 open, +1 closed)."""
    return FINGER_OPEN - (grip + 1.0) / 2.0 * (FINGER_OPEN - FINGER_CLOSED)


def yaw_quat(yaw: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``yaw`` about the vertical."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_yaw(quat: np.ndarray) -> float:
    """Heading of a quaternion (w, x, y, z) about the vertical."""
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class CubeEnv(MujocoTaskEnv):
    """Pick-and-place of a cube with a two-finger gripper (``lewm/Cube-v0``)."""

    xml_file = 'cube.xml'
    camera = 'front'
    control_rate_hz = 10.0
    frameskip = 5
    action_dim = 5
    default_max_episode_steps = 150
    recolour_geoms = ('cube',)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        layout = [self._joint_qpos_adr(n) for n in ('hand_x', 'hand_y', 'hand_z', 'hand_yaw', 'finger_l',
                                                     'finger_r', 'cube')]
        assert layout == [0, 1, 2, 3, 4, 5, 6], f'cube.xml joint order changed: {layout}'

    def _apply_action(self, action: np.ndarray) -> None:
        hand = self.data.qpos[HAND]
        self.data.ctrl[:3] = hand[:3] + action[:3] * STEP_SIZE
        self.data.ctrl[3] = hand[3] + action[3] * YAW_STEP
        self.data.ctrl[4] = grip_to_finger(action[4])

    def _hold_controls(self) -> None:
        self.data.ctrl[:4] = self.data.qpos[HAND]
        self.data.ctrl[4] = self.data.qpos[FINGER_L]

    def _make_state(
        self, hand: np.ndarray, finger: float, cube_xy: np.ndarray, cube_yaw: float
    ) -> np.ndarray:
        qpos = np.zeros(self.model.nq)
        qpos[HAND] = hand
        qpos[FINGER_L] = qpos[FINGER_R] = finger
        qpos[CUBE_POS] = [cube_xy[0], cube_xy[1], CUBE_HALF]
        qpos[CUBE_QUAT] = yaw_quat(cube_yaw)
        return np.concatenate([qpos, np.zeros(self.model.nv)])

    def _sample_start_state(self, rng: np.random.Generator) -> np.ndarray:
        hand = np.array([*rng.uniform(-TABLE_LIMIT, TABLE_LIMIT, 2), rng.uniform(0.08, 0.14),
                         rng.uniform(-np.pi / 2, np.pi / 2)])
        cube_xy = rng.uniform(-TABLE_LIMIT, TABLE_LIMIT, 2)
        return self._make_state(hand, FINGER_OPEN, cube_xy, rng.uniform(-np.pi / 4, np.pi / 4))

    def _sample_goal_state(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        for _ in range(1000):
            xy = rng.uniform(-TABLE_LIMIT, TABLE_LIMIT, 2)
            if np.linalg.norm(xy - start[CUBE_POS][:2]) > 0.12:
                break
        hand = np.array([xy[0], xy[1], GOAL_HAND_HEIGHT, 0.0])
        return self._make_state(hand, FINGER_OPEN, xy, rng.uniform(-np.pi / 4, np.pi / 4))

    def _success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return bool(np.linalg.norm(state[CUBE_POS] - goal[CUBE_POS]) < SUCCESS_DISTANCE)

    def _teleport(self, rng: np.random.Generator) -> None:
        here = self.data.qpos[CUBE_POS].copy()
        hand = self.data.qpos[HAND].copy()
        for _ in range(1000):
            xy = rng.uniform(-TABLE_LIMIT, TABLE_LIMIT, 2)
            far_from_cube = np.linalg.norm(xy - here[:2]) > 0.1
            clear_of_hand = hand[2] > 2 * CUBE_HALF + 0.01 or np.linalg.norm(xy - hand[:2]) > 0.1
            if far_from_cube and clear_of_hand:
                break
        self.data.qpos[CUBE_POS] = [xy[0], xy[1], CUBE_HALF]
        self.data.qpos[CUBE_QUAT] = yaw_quat(rng.uniform(-np.pi / 4, np.pi / 4))
        self.data.qvel[:] = 0.0

    def proprio(self) -> np.ndarray:
        """Hand (x, y, z, yaw) and finger opening."""
        return np.append(self.data.qpos[HAND], self.data.qpos[FINGER_L]).astype(np.float64)

    def cube_yaw(self) -> float:
        """Heading of the cube."""
        return quat_yaw(self.data.qpos[CUBE_QUAT])
