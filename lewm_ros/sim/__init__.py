"""MuJoCo versions of the four LeWM tasks, as gymnasium environments rendered headless.

Importing this package registers ``lewm/PushT-v0``, ``lewm/TwoRoom-v0``, ``lewm/Reacher-v0`` and
``lewm/Cube-v0`` with gymnasium. ``make_env`` builds one with the task methods (``get_state``,
``set_goal_state``, ``perturb``, ...) directly reachable, which ``gymnasium.make``'s wrappers hide.
This is the only package of ``lewm_ros`` that imports mujoco and gymnasium.
"""

from __future__ import annotations

import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # headless rendering; must precede any mujoco import

import gymnasium as gym  # noqa: E402

# id -> (entry point, max_episode_steps)
TASKS: dict[str, tuple[str, int]] = {
    'lewm/PushT-v0': ('lewm_ros.sim.push_t:PushTEnv', 200),
    'lewm/TwoRoom-v0': ('lewm_ros.sim.two_room:TwoRoomEnv', 100),
    'lewm/Reacher-v0': ('lewm_ros.sim.reacher:ReacherEnv', 100),
    'lewm/Cube-v0': ('lewm_ros.sim.cube:CubeEnv', 150),
}
ENV_IDS = tuple(TASKS)


def register_all() -> None:
    """Register the tasks with gymnasium (idempotent)."""
    for env_id, (entry_point, max_steps) in TASKS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


def make_env(env_id: str, img_size: int = 224, **kwargs):
    """Build task ``env_id`` rendering ``img_size`` x ``img_size`` RGB observations.

    Returns the task environment itself (a ``MujocoTaskEnv``), which truncates its episodes at
    ``max_episode_steps`` on its own (default: the registered value). Other ``kwargs`` go to the
    task's constructor (e.g. ``terminate_on_success=True``).
    """
    if env_id not in TASKS:
        raise ValueError(f'unknown task {env_id!r}; choose one of {", ".join(ENV_IDS)}')
    max_steps = kwargs.pop('max_episode_steps', None) or TASKS[env_id][1]
    env = gym.make(env_id, img_size=img_size, disable_env_checker=True, **kwargs).unwrapped
    env.max_episode_steps = int(max_steps)
    return env


register_all()

__all__ = ['ENV_IDS', 'TASKS', 'make_env', 'register_all']
