"""Scripted experts (with tunable action noise), a random policy and their mix, for the four tasks.

The experts read the simulator state directly (privileged information): they exist to produce
training data that covers the task and the start/goal pairs of the evaluation protocol, not to be
learnt from pixels. Each decides from the current state and goal alone (plus a little memory for
Push-T's choice of contact), so it recovers after noise or a perturbation.
"""

from __future__ import annotations

import heapq

import numpy as np

from lewm_ros.sim import cube as cube_task
from lewm_ros.sim import push_t, two_room
from lewm_ros.sim import reacher as reacher_task
from lewm_ros.sim.base import MujocoTaskEnv, wrap_angle

Rng = np.random.Generator | None


def _towards(delta: np.ndarray, step: float) -> np.ndarray:
    """Action moving by ``delta`` when one unit of action moves ``step``; direction kept when clipped."""
    action = np.asarray(delta, dtype=float) / step
    biggest = np.max(np.abs(action))
    return action / biggest if biggest > 1.0 else action


class RandomPolicy:
    """Uniform random actions in the action space (the paper's Reacher data comes from one)."""

    def __init__(self, env: MujocoTaskEnv, rng: np.random.Generator | None = None) -> None:
        self.low = env.action_space.low.astype(np.float64)
        self.high = env.action_space.high.astype(np.float64)
        self.rng = rng if rng is not None else np.random.default_rng()

    def reset(self) -> None:
        """Nothing to forget between episodes."""

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """A uniform sample from the action box."""
        return self.rng.uniform(self.low, self.high)


class ScriptedExpert:
    """Base of the experts: ``act`` = clean action from the state, plus Gaussian noise, clipped."""

    def __init__(self, env: MujocoTaskEnv, noise: float = 0.0, rng: Rng = None) -> None:
        if noise < 0:
            raise ValueError(f'expert noise must be >= 0, got {noise}')
        self.env = env
        self.noise = float(noise)
        self.rng = rng if rng is not None else np.random.default_rng()

    def reset(self) -> None:
        """Forget per-episode memory (call after ``env.reset``)."""

    def clean_action(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """The noise-free action for ``state`` and ``goal`` (task-specific)."""
        raise NotImplementedError

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """The expert's action for the env's current state and goal (``obs`` is not needed)."""
        action = self.clean_action(self.env.get_state(), self.env.goal_state)
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0)


# -- TwoRoom --------------------------------------------------------------------------------------
class TwoRoomExpert(ScriptedExpert):
    """Walk to the door, through it, then straight to the goal."""

    def clean_action(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Velocity towards the current way-point."""
        pos, target_pos = state[:2], goal[:2]
        goal_side = two_room.room_of(target_pos[0])
        in_doorway = abs(pos[0]) < 0.08 and abs(pos[1]) < two_room.DOOR_HALF_WIDTH
        if pos[0] * goal_side > 0:  # in the goal's room
            target = np.array([goal_side * 0.12, pos[1]]) if in_doorway else target_pos
        elif abs(pos[1]) < 0.035 and abs(pos[0]) < 0.16:  # lined up with the door: go through
            target = np.array([goal_side * 0.14, 0.0])
        else:  # line up in front of the door
            target = np.array([-goal_side * 0.12, 0.0])
        step = two_room.MAX_SPEED / self.env.control_rate_hz
        return _towards(target - pos, step)


# -- Reacher --------------------------------------------------------------------------------------
class ReacherExpert(ScriptedExpert):
    """Joint-space PD control with saturated torques."""

    KP = np.array([5.0, 5.0])
    KD = np.array([0.1, 0.1])  # the joints' own damping does most of the braking

    def clean_action(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Torques of the PD law."""
        error = reacher_task.joint_error(state, goal)
        return np.clip(self.KP * error - self.KD * state[2:4], -1.0, 1.0)


# -- Push-T ---------------------------------------------------------------------------------------
class PushTExpert(ScriptedExpert):
    """Push the T at the boundary point whose push best moves it towards its goal pose, then park.

    Model: quasi-static pushing with an ellipsoidal limit surface, so a push along the inward normal
    ``d`` at boundary point ``c`` (block frame) moves the block along ``d`` and turns it at a rate
    proportional to ``cross(c, d) / rho^2`` (``rho``: mean distance of the T's area from its centre).
    The pusher reaches a contact's pre-push point around the block along a ring of way-points.
    """

    RHO = 0.0534  # mean distance of the T's area from its centre of mass (m)
    GAP = 0.015  # pre-push clearance between pusher and block
    RING_RADIUS = 0.145  # way-points for going round the block (T radius 0.108 + pusher + margin)
    RING_POINTS = 24
    DONE_POSITION = 0.014
    DONE_ANGLE = 0.12

    def __init__(self, env: MujocoTaskEnv, noise: float = 0.0, rng: Rng = None) -> None:
        super().__init__(env, noise, rng)
        points, normals = push_t.t_outline(0.01)
        pre = points + normals * (push_t.PUSHER_RADIUS + self.GAP)
        # keep contacts whose pre-push point is clear of the T (not inside its inner corners)
        reachable = push_t.distance_to_t(pre, np.zeros(3)) > push_t.PUSHER_RADIUS + 0.5 * self.GAP
        self.points, self.normals = points[reachable], normals[reachable]
        push = -self.normals
        self.turn = (self.points[:, 0] * push[:, 1] - self.points[:, 1] * push[:, 0]) / self.RHO
        self.contact: int | None = None
        self.pushing = False

    def reset(self) -> None:
        """Forget the contact being worked on."""
        self.contact = None
        self.pushing = False

    # geometry helpers
    @staticmethod
    def _clear(starts: np.ndarray, ends: np.ndarray, pose: np.ndarray, clearance: float) -> np.ndarray:
        """Whether the pusher can travel each segment ``starts[i] -> ends[i]`` without touching the T."""
        longest = float(np.max(np.linalg.norm(ends - starts, axis=1)))
        t = np.linspace(0.0, 1.0, max(int(np.ceil(longest / 0.005)) + 1, 2))
        samples = starts[:, None, :] + t[None, :, None] * (ends - starts)[:, None, :]
        distance = push_t.distance_to_t(samples.reshape(-1, 2), pose).reshape(len(starts), len(t))
        return np.all(distance > clearance, axis=1)

    def _route(self, start: np.ndarray, goal: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Next way-point from ``start`` to ``goal`` avoiding the T (Dijkstra over a ring round it)."""
        clearance = push_t.PUSHER_RADIUS + 0.004
        if self._clear(start[None], goal[None], pose, clearance)[0]:
            return goal
        angles = np.linspace(0.0, 2 * np.pi, self.RING_POINTS, endpoint=False)
        ring = pose[:2] + self.RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        limit = push_t.HALF_EXTENT - push_t.PUSHER_RADIUS - 0.005
        ring = np.clip(ring, -limit, limit)  # near a wall the ring is squeezed against it
        nodes = np.array([start, *ring, goal])
        start_id, goal_id = 0, len(nodes) - 1
        ring_ids = np.arange(1, self.RING_POINTS + 1)
        pairs = np.concatenate([
            np.stack([ring_ids, np.roll(ring_ids, -1)], axis=1),  # round the ring
            np.stack([np.full_like(ring_ids, start_id), ring_ids], axis=1),  # onto the ring
            np.stack([ring_ids, np.full_like(ring_ids, goal_id)], axis=1),  # off the ring
        ])
        usable = pairs[self._clear(nodes[pairs[:, 0]], nodes[pairs[:, 1]], pose, clearance)]
        edges: dict[int, list[tuple[int, float]]] = {i: [] for i in range(len(nodes))}
        for i, j in usable:
            d = float(np.linalg.norm(nodes[i] - nodes[j]))
            edges[int(i)].append((int(j), d))
            edges[int(j)].append((int(i), d))
        dist = {start_id: 0.0}
        previous: dict[int, int] = {}
        queue = [(0.0, start_id)]
        while queue:
            d, i = heapq.heappop(queue)
            if i == goal_id:
                break
            if d > dist.get(i, np.inf):
                continue
            for j, w in edges[i]:
                if d + w < dist.get(j, np.inf):
                    dist[j] = d + w
                    previous[j] = i
                    heapq.heappush(queue, (d + w, j))
        if goal_id not in previous:  # boxed in: back away from the block
            return start + (start - pose[:2]) / max(np.linalg.norm(start - pose[:2]), 1e-6) * 0.05
        node = goal_id
        while previous[node] != start_id:
            node = previous[node]
        return nodes[node]

    def _scores(self, pose: np.ndarray, error: np.ndarray, pusher: np.ndarray) -> np.ndarray:
        """How well pushing at each contact moves the block towards its goal, minus the detour."""
        rot = push_t.rotation(pose[2])
        push_world = -self.normals @ rot.T
        twist = np.concatenate([push_world, self.turn[:, None]], axis=1)
        twist /= np.linalg.norm(twist, axis=1, keepdims=True)
        desired = error / np.linalg.norm(error)
        alignment = twist @ desired
        pre = pose[:2] + (self.points + self.normals * (push_t.PUSHER_RADIUS + self.GAP)) @ rot.T
        limit = push_t.HALF_EXTENT - push_t.PUSHER_RADIUS - 0.003
        inside = np.all(np.abs(pre) < limit, axis=1)
        # rough detour: straight distance plus the way round the block
        here = np.arctan2(*(pusher - pose[:2])[::-1])
        there = np.arctan2(pre[:, 1] - pose[1], pre[:, 0] - pose[0])
        detour = np.linalg.norm(pre - pusher, axis=1) + 0.1 * np.abs(wrap_angle(there - here))
        return np.where(inside, alignment - 0.5 * detour, -np.inf)

    def clean_action(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Pusher displacement: go round to the chosen contact, push, or park when the block is in place."""
        pose, goal_pose = push_t.PushTEnv.block_pose(state), push_t.PushTEnv.block_pose(goal)
        pusher = state[push_t.PUSHER]
        position_error = goal_pose[:2] - pose[:2]
        angle_error = float(wrap_angle(goal_pose[2] - pose[2]))
        if np.linalg.norm(position_error) < self.DONE_POSITION and abs(angle_error) < self.DONE_ANGLE:
            self.reset()  # block in place: park the pusher at its goal position
            target = self._route(pusher, goal[push_t.PUSHER], pose)
            return _towards(target - pusher, push_t.STEP_SIZE)

        error = np.array([*position_error, angle_error * self.RHO])
        scores = self._scores(pose, error, pusher)
        best = int(np.argmax(scores))
        if self.contact is None or scores[self.contact] < scores[best] - 0.25 or scores[self.contact] < 0.2:
            if best != self.contact:
                self.contact, self.pushing = best, False

        rot = push_t.rotation(pose[2])
        contact = pose[:2] + rot @ self.points[self.contact]
        push_dir = rot @ -self.normals[self.contact]
        touch = contact - push_dir * push_t.PUSHER_RADIUS  # pusher centre when touching
        offset = pusher - touch
        lateral = abs(offset[0] * push_dir[1] - offset[1] * push_dir[0])
        behind = -float(offset @ push_dir)  # how far behind the touching point the pusher is
        if self.pushing and (lateral > 0.012 or behind > 0.03):
            self.pushing = False  # lost the contact
        if not self.pushing:
            pre = touch - push_dir * self.GAP
            if np.linalg.norm(pre - pusher) < 0.006:
                self.pushing = True
            else:
                target = self._route(pusher, pre, pose)
                return _towards(target - pusher, push_t.STEP_SIZE)
        # push: advance just as far as the model says is needed (so the block does not overshoot near
        # the goal), and stay on the line of the push. A push of s moves the contact point by s along
        # d, hence the block by s * (d, turn) / (1 + turn^2); the least-squares s is error . (d, turn).
        twist = np.array([*push_dir, self.turn[self.contact]])
        advance = float(np.clip(error @ twist, 0.004, push_t.STEP_SIZE))
        target = touch + push_dir * advance
        return _towards(target - pusher, push_t.STEP_SIZE)


# -- Cube -----------------------------------------------------------------------------------------
class CubeExpert(ScriptedExpert):
    """Hover over the cube, align the fingers, descend, grasp, carry above the target, lower, release.

    The gates between phases are loose and the grasp, once begun, is finished, so that action noise
    (up to about 0.3) delays the expert without making it dither.
    """

    HOVER = 0.1  # hand height for travelling without a cube
    CARRY = 0.13  # hand height for travelling with the cube
    GRASP_HEIGHT = 0.008  # fingertip height above the cube's bottom when grasping
    PLACED_XY = 0.02  # the cube counts as placed within this distance of the target (success: 0.04)

    def __init__(self, env: MujocoTaskEnv, noise: float = 0.0, rng: Rng = None) -> None:
        super().__init__(env, noise, rng)
        self._closing_steps = 0

    def reset(self) -> None:
        """Forget how long the fingers have been closing."""
        self._closing_steps = 0

    def _move(self, hand: np.ndarray, target_xyz: np.ndarray, target_yaw: float, grip: float) -> np.ndarray:
        xyz = _towards(target_xyz - hand[:3], cube_task.STEP_SIZE)
        yaw = float(np.clip(wrap_angle(target_yaw - hand[3]) / cube_task.YAW_STEP, -1.0, 1.0))
        return np.array([*xyz, yaw, grip])

    def clean_action(self, state: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Hand displacement, yaw and grip for the phase the state is in."""
        hand = state[cube_task.HAND]
        finger = state[cube_task.FINGER_L]
        cube = state[cube_task.CUBE_POS]
        target = goal[cube_task.CUBE_POS]
        cube_yaw = cube_task.quat_yaw(state[cube_task.CUBE_QUAT])
        # fingers close along the hand's x axis: face the cube, taking the nearest of its 4 symmetric yaws
        grasp_yaw = float(np.clip(hand[3] + wrap_angle(4 * (cube_yaw - hand[3])) / 4, -3.0, 3.0))
        rel = cube - hand[:3]
        between_fingers = np.linalg.norm(rel[:2]) < 0.025 and -0.01 < rel[2] < 0.05
        held = between_fingers and finger < -0.004 and self._closing_steps >= 3  # stopped by the cube
        xy_error = target[:2] - cube[:2]
        placed = np.linalg.norm(xy_error) < self.PLACED_XY and abs(cube[2] - target[2]) < 0.01

        if placed and not held:  # done: open and lift clear
            self._closing_steps = 0
            return self._move(hand, np.array([*hand[:2], self.HOVER]), hand[3], -1.0)

        if held:
            self._closing_steps += 1
            if np.linalg.norm(xy_error) > 0.015:  # carry: up first, then across at carrying height
                if hand[2] < self.CARRY - 0.03 and np.linalg.norm(xy_error) > 0.04:
                    return self._move(hand, np.array([*hand[:2], self.CARRY]), hand[3], 1.0)
                return self._move(hand, np.array([*(hand[:2] + xy_error), max(hand[2], self.CARRY)]),
                                  hand[3], 1.0)
            if cube[2] - target[2] > 0.005:  # lower, still correcting sideways
                return self._move(hand, np.array([*(hand[:2] + xy_error), hand[2] + target[2] - cube[2]]),
                                  hand[3], 1.0)
            self._closing_steps = 0  # on the table at the target: release
            return self._move(hand, hand[:3], hand[3], -1.0)

        grasp_z = cube[2] - cube_task.CUBE_HALF + self.GRASP_HEIGHT
        if self._closing_steps > 0 and between_fingers:  # a grasp once begun is finished
            self._closing_steps += 1
            return self._move(hand, np.array([*cube[:2], grasp_z]), grasp_yaw, 1.0)
        aligned = abs(wrap_angle(grasp_yaw - hand[3])) < 0.15
        over_cube = np.linalg.norm(rel[:2]) < 0.015
        if over_cube and aligned and abs(hand[2] - grasp_z) < 0.012:
            self._closing_steps = 1  # in place: start closing
            return self._move(hand, np.array([*cube[:2], grasp_z]), grasp_yaw, 1.0)
        self._closing_steps = 0
        if over_cube and aligned and finger > 0.015:  # open and above the cube: descend
            return self._move(hand, np.array([*cube[:2], grasp_z]), grasp_yaw, -1.0)
        if hand[2] < cube[2] + 0.05 and np.linalg.norm(rel[:2]) > 0.02:  # low and off to the side: rise
            return self._move(hand, np.array([*hand[:2], self.HOVER]), grasp_yaw, -1.0)
        return self._move(hand, np.array([*cube[:2], max(self.HOVER, hand[2] if over_cube else 0)]),
                          grasp_yaw, -1.0)


EXPERTS = {
    'TwoRoomEnv': TwoRoomExpert,
    'ReacherEnv': ReacherExpert,
    'PushTEnv': PushTExpert,
    'CubeEnv': CubeExpert,
}


def make_expert(env: MujocoTaskEnv, noise: float = 0.0, rng: Rng = None) -> ScriptedExpert:
    """The scripted expert of ``env``'s task, adding Gaussian noise of std ``noise`` to its actions."""
    task = getattr(env, 'unwrapped', env)
    name = type(task).__name__
    if name not in EXPERTS:
        raise ValueError(f'no scripted expert for {name}; known tasks: {", ".join(EXPERTS)}')
    return EXPERTS[name](task, noise=noise, rng=rng)


class MixedPolicy:
    """Per episode, the noisy expert (with probability ``expert_fraction``) or uniform random actions.

    Expert-only data shows long directed moves but a narrow spread of situations: a small model
    trained on it can leave out a coordinate the expert rarely varies (TwoRoom's vertical position).
    Random-only data has the spread but seldom travels far or crosses TwoRoom's door. A file of
    mostly random episodes with some expert ones has both. The choice is made once, here: one
    instance drives one episode (goal changes within it do not re-draw).
    """

    DEFAULT_EXPERT_FRACTION = 0.25

    def __init__(self, expert: ScriptedExpert, random: RandomPolicy, rng: np.random.Generator,
                 expert_fraction: float = DEFAULT_EXPERT_FRACTION) -> None:
        if not 0.0 <= expert_fraction <= 1.0:
            raise ValueError(f'expert_fraction must be in [0, 1], got {expert_fraction}')
        self.expert, self.random = expert, random
        self.uses_expert = bool(rng.random() < expert_fraction)

    def reset(self) -> None:
        """A new goal: the expert forgets its per-goal memory; the episode keeps its policy."""
        self.expert.reset()

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """This episode's policy's action."""
        return self.expert.act(obs) if self.uses_expert else self.random.act(obs)


POLICIES = ('expert', 'random', 'mixed')


def make_policy(
    env: MujocoTaskEnv, policy: str, noise: float = 0.0, rng: Rng = None, expert_fraction: float | None = None
) -> ScriptedExpert | RandomPolicy | MixedPolicy:
    """A data-collection policy by name, one of ``POLICIES`` (``noise`` is the expert's).

    ``expert_fraction`` is for ``'mixed'``; None takes ``MixedPolicy.DEFAULT_EXPERT_FRACTION``.
    """
    if policy == 'expert':
        return make_expert(env, noise=noise, rng=rng)
    if policy == 'random':
        return RandomPolicy(getattr(env, 'unwrapped', env), rng=rng)
    if policy == 'mixed':
        rng = rng if rng is not None else np.random.default_rng()
        share = MixedPolicy.DEFAULT_EXPERT_FRACTION if expert_fraction is None else expert_fraction
        return MixedPolicy(make_expert(env, noise=noise, rng=rng),
                           RandomPolicy(getattr(env, 'unwrapped', env), rng=rng), rng, share)
    raise ValueError(f'policy must be one of {", ".join(POLICIES)}; got {policy!r}')
