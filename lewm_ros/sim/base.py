"""Shared machinery of the MuJoCo tasks: model loading, offscreen rendering, state, goals, perturbations.

Every task is a gymnasium environment whose observation is the RGB image of a fixed camera, because
LeWM learns from pixels. The low-dimensional simulator state still travels in ``info`` (for probing
and tests) and can be read and written (``get_state`` / ``set_state``) so that goals can be rendered
from states and evaluation starts can be replayed exactly.
"""

from __future__ import annotations

import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # headless rendering; must precede the mujoco import

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from lewm_ros.sim.perturbations import PERTURBATION_KINDS, random_distinct_colour  # noqa: E402

ASSETS = Path(__file__).resolve().parent / 'assets'


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Angle in [-pi, pi), so that differences of angles compare the short way round."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class MujocoTaskEnv(gym.Env):
    """Base class of the lewm tasks: a MuJoCo model seen by one fixed camera.

    A subclass sets the class attributes below and implements the task hooks (``_apply_action``,
    ``_sample_start_state``, ``_sample_goal_state``, ``_success``, ``_teleport``). The state vector is
    ``concat(qpos, qvel)``: actuator targets are recomputed from the action at every step, so these two
    arrays are everything needed to continue a trajectory exactly.
    """

    metadata = {'render_modes': ['rgb_array'], 'render_fps': 10}

    xml_file: str = ''
    camera: str = 'top'
    frameskip: int = 5
    control_rate_hz: float = 10.0
    action_dim: int = 2
    default_max_episode_steps: int = 200
    recolour_geoms: tuple[str, ...] = ()  # geoms whose colour a 'recolour' perturbation changes

    def __init__(
        self,
        img_size: int = 224,
        render_mode: str | None = 'rgb_array',
        max_episode_steps: int | None = None,
        terminate_on_success: bool = False,
    ) -> None:
        if render_mode not in (None, 'rgb_array'):
            raise ValueError(f"render_mode must be 'rgb_array' (or None), got {render_mode!r}")
        if not isinstance(img_size, (int, np.integer)) or not 16 <= int(img_size) <= 1024:
            raise ValueError(f'img_size must be an integer between 16 and 1024, got {img_size!r}')
        self.render_mode = render_mode
        self.img_size = int(img_size)
        self.max_episode_steps = int(max_episode_steps or self.default_max_episode_steps)
        self.terminate_on_success = bool(terminate_on_success)
        self.metadata = {**self.metadata, 'render_fps': self.control_rate_hz}

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))
        self.data = mujoco.MjData(self.model)
        steps = 1.0 / (self.control_rate_hz * self.model.opt.timestep)
        self.substeps = round(steps)
        if abs(steps - self.substeps) > 1e-6:
            raise ValueError(f'{self.xml_file}: timestep must divide the control period exactly')
        glob = self.model.vis.global_
        glob.offwidth = max(glob.offwidth, self.img_size)
        glob.offheight = max(glob.offheight, self.img_size)
        self._renderer: mujoco.Renderer | None = None
        self._camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
        if self._camera_id < 0:
            raise ValueError(f'{self.xml_file} has no camera named {self.camera!r}')
        self._original_rgba = self.model.geom_rgba.copy()
        self._recolour_ids = [self._geom_id(name) for name in self.recolour_geoms]

        self.state_dim = self.model.nq + self.model.nv
        self.observation_space = gym.spaces.Box(0, 255, (self.img_size, self.img_size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self._goal_state = np.zeros(self.state_dim)
        self._goal_image: np.ndarray | None = None
        self._elapsed = 0
        self._scheduled: tuple[str, int] | None = None

    # -- helpers for subclasses ---------------------------------------------------------------
    def _geom_id(self, name: str) -> int:
        gid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
        if gid < 0:
            raise ValueError(f'{self.xml_file} has no geom named {name!r}')
        return gid

    def _joint_qpos_adr(self, name: str) -> int:
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            raise ValueError(f'{self.xml_file} has no joint named {name!r}')
        return int(self.model.jnt_qposadr[jid])

    def _split(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) views of a state vector."""
        return state[: self.model.nq], state[self.model.nq :]

    # -- task hooks ---------------------------------------------------------------------------
    def _apply_action(self, action: np.ndarray) -> None:
        """Write actuator controls for one env step from an action in [-1, 1]."""
        raise NotImplementedError

    def _sample_start_state(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _sample_goal_state(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _success(self, state: np.ndarray, goal: np.ndarray) -> bool:
        raise NotImplementedError

    def _teleport(self, rng: np.random.Generator) -> None:
        """Move the object (or agent) to another valid pose, velocities zeroed; no mj_forward needed."""
        raise NotImplementedError

    def proprio(self) -> np.ndarray:
        """What the robot itself would sense (joint positions, gripper); for the ``proprio`` column."""
        raise NotImplementedError

    def _hold_controls(self) -> None:
        """Controls that keep actuators where they are (after a state was set from outside)."""
        self.data.ctrl[:] = 0.0

    # -- state and goal -----------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        """The simulator state ``concat(qpos, qvel)`` (float64 copy)."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Put the simulator in ``state`` (from ``get_state`` or a recorded ``state`` column)."""
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (self.state_dim,):
            raise ValueError(f'{type(self).__name__} state has {self.state_dim} values, got {state.shape[0]}')
        if not np.all(np.isfinite(state)):
            raise ValueError('state contains NaN or inf')
        qpos, qvel = self._split(state)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self.data.qacc_warmstart[:] = 0.0
        self._hold_controls()
        mujoco.mj_forward(self.model, self.data)

    @property
    def goal_state(self) -> np.ndarray:
        """The state the episode should reach (a copy)."""
        return self._goal_state.copy()

    def set_goal_state(self, state: np.ndarray) -> None:
        """Make ``state`` the goal; its image (``goal_image``) is rendered from it right away."""
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (self.state_dim,):
            raise ValueError(f'{type(self).__name__} goal state has {self.state_dim} values, '
                             f'got {state.shape[0]}')
        self._goal_state = state.copy()
        self._goal_image = self.render_state(state)

    def resample_goal(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Give the episode a fresh random goal from the current state (data collection chains goals).

        Returns the new goal state, whose image ``goal_image`` then shows.
        """
        rng = rng if rng is not None else self.np_random
        goal = self._sample_next_goal_state(rng, self.get_state())
        self.set_goal_state(goal)
        return goal.copy()

    def _sample_next_goal_state(self, rng: np.random.Generator, current: np.ndarray) -> np.ndarray:
        """A goal after the first one; by default drawn like the first."""
        return self._sample_goal_state(rng, current)

    def goal_image(self) -> np.ndarray:
        """RGB image (S, S, 3) uint8 of the goal state, as the camera would see it."""
        if self._goal_image is None:
            self._goal_image = self.render_state(self._goal_state)
        return self._goal_image.copy()

    def render_state(self, state: np.ndarray) -> np.ndarray:
        """Render ``state`` without disturbing the running simulation."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        saved = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, saved, spec)
        qpos, qvel = self._split(np.asarray(state, dtype=np.float64))
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        image = self._render_now()
        mujoco.mj_setState(self.model, self.data, saved, spec)
        mujoco.mj_forward(self.model, self.data)
        return image

    def is_success(self) -> bool:
        """Whether the current state is within the task's tolerance of the goal state."""
        return bool(self._success(self.get_state(), self._goal_state))

    def success_between(self, state: np.ndarray, goal: np.ndarray) -> bool:
        """The task's success test for any pair of states (for evaluation code and tests)."""
        return bool(self._success(np.asarray(state, np.float64), np.asarray(goal, np.float64)))

    # -- perturbations ------------------------------------------------------------------------
    def perturb(self, kind: str, rng: np.random.Generator | None = None) -> None:
        """Apply a violation-of-expectation event now.

        ``teleport`` moves the object (or agent) to another pose: the state jumps, which no action
        could cause. ``recolour`` changes the object's colour: the image changes, the state does not.
        The colour stays until the next ``reset``.
        """
        rng = rng if rng is not None else self.np_random
        if kind == 'teleport':
            self._teleport(rng)
            self.data.qacc_warmstart[:] = 0.0
            self._hold_controls()
            mujoco.mj_forward(self.model, self.data)
        elif kind == 'recolour':
            current = self.model.geom_rgba[self._recolour_ids[0], :3]
            colour = random_distinct_colour(rng, avoid=current)
            for gid in self._recolour_ids:
                self.model.geom_rgba[gid, :3] = colour
        else:
            raise ValueError(f'unknown perturbation {kind!r}; choose one of {PERTURBATION_KINDS}')

    def schedule_perturbation(self, kind: str, step: int) -> None:
        """Apply ``perturb(kind)`` right after physics step number ``step`` (1-based) of this episode.

        The observation returned by that step already shows the perturbed world, and its ``info``
        has ``perturbation = kind``. ``reset`` clears the schedule unless its options set one.
        """
        if kind not in PERTURBATION_KINDS:
            raise ValueError(f'unknown perturbation {kind!r}; choose one of {PERTURBATION_KINDS}')
        if int(step) < 1:
            raise ValueError(f'perturbation step must be >= 1, got {step}')
        self._scheduled = (kind, int(step))

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        ``options`` may hold ``state`` (start there instead of a random start), ``goal_state``
        (instead of the task's random goal) and ``perturb = (kind, step)`` (see
        ``schedule_perturbation``).
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {'state', 'goal_state', 'perturb'}
        if unknown:
            raise ValueError(f'unknown reset options {sorted(unknown)}; use state, goal_state, perturb')
        self.model.geom_rgba[:] = self._original_rgba
        mujoco.mj_resetData(self.model, self.data)
        start = options.get('state')
        if start is None:
            start = self._sample_start_state(self.np_random)
        self.set_state(start)
        goal = options.get('goal_state')
        if goal is None:
            goal = self._sample_goal_state(self.np_random, self.get_state())
        self.set_goal_state(goal)
        self._elapsed = 0
        self._scheduled = None
        if options.get('perturb') is not None:
            self.schedule_perturbation(*options['perturb'])
        return self.render(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Advance one control period (``substeps`` physics steps) with ``action`` in [-1, 1]."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f'{type(self).__name__} takes {self.action_dim}-D actions, got shape '
                             f'{np.shape(action)}')
        if not np.all(np.isfinite(action)):
            raise ValueError(f'action contains NaN or inf: {action}')
        action = np.clip(action, -1.0, 1.0)
        self._apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self._elapsed += 1
        info_extra = {}
        if self._scheduled is not None and self._scheduled[1] == self._elapsed:
            self.perturb(self._scheduled[0])
            info_extra['perturbation'] = self._scheduled[0]
        info = self._info()
        info.update(info_extra)
        success = info['is_success']
        terminated = bool(success and self.terminate_on_success)
        truncated = self._elapsed >= self.max_episode_steps
        return self.render(), float(success), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The camera image of the current state, (S, S, 3) uint8."""
        return self._render_now()

    def close(self) -> None:
        """Free the offscreen renderer (its GL context)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- internals ----------------------------------------------------------------------------
    def _render_now(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.img_size, self.img_size)
        self._renderer.update_scene(self.data, camera=self._camera_id)
        return self._renderer.render().copy()

    def _info(self) -> dict[str, Any]:
        state = self.get_state()
        return {
            'is_success': bool(self._success(state, self._goal_state)),
            'state': state,
            'proprio': self.proprio(),
            'elapsed_steps': self._elapsed,
        }
