"""Push-T: a round pusher pushes a T-shaped block over a table to a target pose.

Geometry (metres): table interior [-0.3, 0.3]^2 with walls; the T is a 0.16 x 0.04 bar on a
0.04 x 0.12 stem, its pose is that of its centre of mass; the pusher is a disk of radius 0.02.
Action: 2-D pusher target displacement in [-1, 1], scaled to 2.5 cm per 10 Hz step; the pusher is
position-servoed and reaches its target within the step unless the block resists.
State (qpos, qvel): pusher (x, y), block (x, y, z, yaw), then their velocities (12 values).
Success (as in the reference Push-T): the joint position error of pusher and block,
``norm([pusher_xy - goal_pusher_xy, block_xy - goal_block_xy])``, below 3 cm and the block yaw within
pi/9 of the goal's. Including the pusher keeps a goal taken from a trajectory on which the block has
not moved yet from being reached trivially.
Start: block anywhere within +-0.14 m at any yaw, pusher somewhere free. Goal: the T at the centre
turned by pi/4, the pusher parked at (-0.2, -0.2); later goals (``resample_goal``) are random poses.
"""

from __future__ import annotations

import numpy as np

from lewm_ros.sim.base import MujocoTaskEnv, wrap_angle

HALF_EXTENT = 0.3
PUSHER_RADIUS = 0.02
STEP_SIZE = 0.025
POSITION_TOLERANCE = 0.03
ANGLE_TOLERANCE = np.pi / 9
BLOCK_HALF_HEIGHT = 0.015
# The T as two boxes in the block frame: (centre x, centre y, half width, half height).
T_BOXES = np.array([[0.0, 0.034286, 0.08, 0.02], [0.0, -0.045714, 0.02, 0.06]])
# Goal of the default task: T at the centre turned by pi/4, pusher parked in a corner.
GOAL_BLOCK_POSE = np.array([0.0, 0.0, np.pi / 4])
GOAL_PUSHER_XY = np.array([-0.2, -0.2])

# qpos layout
PUSHER = slice(0, 2)
BLOCK_XY = slice(2, 4)
BLOCK_Z = 4
BLOCK_YAW = 5


def rotation(theta: float) -> np.ndarray:
    """2-D rotation matrix."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def distance_to_t(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Signed-ish distance from world points (N, 2) to the T at ``pose`` (x, y, yaw); <= 0 inside."""
    local = (np.atleast_2d(points) - pose[:2]) @ rotation(pose[2])  # world -> block frame
    dists = []
    for cx, cy, hx, hy in T_BOXES:
        d = np.abs(local - [cx, cy]) - [hx, hy]
        outside = np.linalg.norm(np.maximum(d, 0.0), axis=1)
        inside = np.minimum(np.max(d, axis=1), 0.0)
        dists.append(outside + inside)
    return np.min(dists, axis=0)


def t_outline(spacing: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Points along the outer boundary of the T and their outward normals, in the block frame."""
    (bx, by, bhx, bhy), (sx, sy, shx, shy) = T_BOXES
    top, bar_bottom, bottom = by + bhy, by - bhy, sy - shy
    segments = [  # (start, end, outward normal), counter-clockwise
        ((bx + bhx, top), (bx - bhx, top), (0, 1)),
        ((bx - bhx, top), (bx - bhx, bar_bottom), (-1, 0)),
        ((bx - bhx, bar_bottom), (sx - shx, bar_bottom), (0, -1)),
        ((sx - shx, bar_bottom), (sx - shx, bottom), (-1, 0)),
        ((sx - shx, bottom), (sx + shx, bottom), (0, -1)),
        ((sx + shx, bottom), (sx + shx, bar_bottom), (1, 0)),
        ((sx + shx, bar_bottom), (bx + bhx, bar_bottom), (0, -1)),
        ((bx + bhx, bar_bottom), (bx + bhx, top), (1, 0)),
    ]
    points, normals = [], []
    for start, end, normal in segments:
        start, end = np.array(start), np.array(end)
        n = max(int(np.linalg.norm(end - start) / spacing), 1)
        for t in (np.arange(n) + 0.5) / n:
            points.append(start + t * (end - start))
            normals.append(normal)
    return np.array(points), np.array(normals, dtype=float)


class PushTEnv(MujocoTaskEnv):
    """Planar pushing of a T-shaped block (``lewm/PushT-v0``)."""

    xml_file = 'push_t.xml'
    control_rate_hz = 10.0
    frameskip = 5
    action_dim = 2
    default_max_episode_steps = 200
    recolour_geoms = ('block_bar', 'block_stem')

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        layout = [self._joint_qpos_adr(n) for n in ('pusher_x', 'pusher_y', 'block_x', 'block_y', 'block_z',
                                                     'block_yaw')]
        assert layout == list(range(6)), f'push_t.xml joint order changed: {layout}'

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = self.data.qpos[PUSHER] + action * STEP_SIZE

    def _hold_controls(self) -> None:
        self.data.ctrl[:] = self.data.qpos[PUSHER]

    @staticmethod
    def block_pose(state: np.ndarray) -> np.ndarray:
        """(x, y, yaw) of the block in a state vector."""
        return np.array([state[BLOCK_XY][0], state[BLOCK_XY][1], state[BLOCK_YAW]])

    def _make_state(self, pusher_xy: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
        qpos = np.zeros(self.model.nq)
        qpos[PUSHER] = pusher_xy
        qpos[BLOCK_XY] = block_pose[:2]
        qpos[BLOCK_Z] = 0.0  # body frame starts at rest height
        qpos[BLOCK_YAW] = block_pose[2]
        return np.concatenate([qpos, np.zeros(self.model.nv)])

    def _free_pusher_position(self, rng: np.random.Generator, block_pose: np.ndarray) -> np.ndarray:
        limit = HALF_EXTENT - PUSHER_RADIUS - 0.01
        for _ in range(1000):
            xy = rng.uniform(-limit, limit, size=2)
            if distance_to_t(xy, block_pose)[0] > PUSHER_RADIUS + 0.03:
                return xy
        raise RuntimeError('no free pusher position found')  # cannot happen with this geometry

    def _sample_start_state(self, rng: np.random.Generator) -> np.ndarray:
        block = np.array([*rng.uniform(-0.14, 0.14, size=2), rng.uniform(-np.pi, np.pi)])
        return self._make_state(self._free_pusher_position(rng, block), block)

    def _sample_goal_state(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        return self._make_state(GOAL_PUSHER_XY, GOAL_BLOCK_POSE)

    def _sample_next_goal_state(self, rng: np.random.Generator, current: np.ndarray) -> np.ndarray:
        here = self.block_pose(current)
        for _ in range(1000):  # a random pose that differs visibly from where the block is
            block = np.array([*rng.uniform(-0.12, 0.12, size=2), rng.uniform(-np.pi, np.pi)])
            if np.linalg.norm(block[:2] - here[:2]) > 0.06 or abs(wrap_angle(block[2] - here[2])) > 0.6:
                break
        return self._make_state(self._free_pusher_position(rng, block), block)

    def _success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        position_error = np.linalg.norm(np.concatenate(
            [state[PUSHER] - goal[PUSHER], state[BLOCK_XY] - goal[BLOCK_XY]]))
        angle_error = abs(wrap_angle(state[BLOCK_YAW] - goal[BLOCK_YAW]))
        return bool(position_error < POSITION_TOLERANCE and angle_error < ANGLE_TOLERANCE)

    def _teleport(self, rng: np.random.Generator) -> None:
        here = self.block_pose(self.get_state())
        pusher = self.data.qpos[PUSHER].copy()
        for _ in range(1000):
            there = np.array([*rng.uniform(-0.16, 0.16, size=2), rng.uniform(-np.pi, np.pi)])
            moved = np.linalg.norm(there[:2] - here[:2]) > 0.1 or abs(wrap_angle(there[2] - here[2])) > 1.0
            if moved and distance_to_t(pusher, there)[0] > PUSHER_RADIUS + 0.01:
                break
        self.data.qpos[BLOCK_XY] = there[:2]
        self.data.qpos[BLOCK_YAW] = there[2]
        self.data.qvel[:] = 0.0

    def proprio(self) -> np.ndarray:
        """Pusher position (x, y)."""
        return self.data.qpos[PUSHER].astype(np.float64)
