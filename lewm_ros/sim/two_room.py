"""TwoRoom: a point agent crosses a door between two rooms to reach a goal position.

Geometry (metres): the interior is the square [-0.5, 0.5]^2, split by a wall at x = 0 with a door
at |y| < 0.12; the agent is a disk of radius 0.05 moving in the plane. Action: 2-D velocity command
in [-1, 1] scaled to 0.4 m/s (at most 4 cm per 10 Hz step). State: (x, y, vx, vy).
Success: agent centre within 5 cm of the goal's.
"""

from __future__ import annotations

import numpy as np

from lewm_ros.sim.base import MujocoTaskEnv

HALF_EXTENT = 0.5
AGENT_RADIUS = 0.05
WALL_HALF_THICKNESS = 0.02
DOOR_HALF_WIDTH = 0.12
MAX_SPEED = 0.4
SUCCESS_RADIUS = 0.05


def room_of(x: float) -> int:
    """-1 for the left room, +1 for the right one."""
    return 1 if x >= 0.0 else -1


def is_free(xy: np.ndarray, margin: float = 0.005) -> bool:
    """Whether the agent centred at ``xy`` overlaps no wall."""
    x, y = float(xy[0]), float(xy[1])
    limit = HALF_EXTENT - AGENT_RADIUS - margin
    if abs(x) > limit or abs(y) > limit:
        return False
    in_wall_band = abs(x) < WALL_HALF_THICKNESS + AGENT_RADIUS + margin
    in_door = abs(y) < DOOR_HALF_WIDTH - AGENT_RADIUS - margin
    return not in_wall_band or in_door


def sample_in_room(rng: np.random.Generator, room: int) -> np.ndarray:
    """Uniform free position in room ``room`` (-1 left, +1 right), clear of the walls."""
    lo = WALL_HALF_THICKNESS + AGENT_RADIUS + 0.01
    hi = HALF_EXTENT - AGENT_RADIUS - 0.01
    return np.array([room * rng.uniform(lo, hi), rng.uniform(-hi, hi)])


class TwoRoomEnv(MujocoTaskEnv):
    """Point-agent navigation through a door (``lewm/TwoRoom-v0``)."""

    xml_file = 'two_room.xml'
    control_rate_hz = 10.0
    frameskip = 5
    action_dim = 2
    default_max_episode_steps = 100
    recolour_geoms = ('agent',)

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action * MAX_SPEED

    def _sample_start_state(self, rng: np.random.Generator) -> np.ndarray:
        room = 1 if rng.uniform() < 0.5 else -1
        return np.concatenate([sample_in_room(rng, room), np.zeros(2)])

    def _sample_goal_state(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        return np.concatenate([sample_in_room(rng, -room_of(start[0])), np.zeros(2)])

    def _success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        return bool(np.linalg.norm(state[:2] - goal[:2]) < SUCCESS_RADIUS)

    def _teleport(self, rng: np.random.Generator) -> None:
        here = self.data.qpos[:2].copy()
        for _ in range(1000):
            there = rng.uniform(-HALF_EXTENT, HALF_EXTENT, size=2)
            if is_free(there, margin=0.01) and np.linalg.norm(there - here) > 0.3:
                break
        self.data.qpos[:2] = there
        self.data.qvel[:] = 0.0

    def proprio(self) -> np.ndarray:
        """Agent position (x, y)."""
        return self.data.qpos[:2].astype(np.float64)
