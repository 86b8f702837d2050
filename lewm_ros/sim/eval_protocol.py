"""The evaluation protocol of the LeWM paper, shared by ``lewm eval`` and the ROS sim node.

Start from a state of an expert episode; the goal is the state the expert reached ``goal_ahead``
env steps later; the planner then has a fixed step budget (50) to reach it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GOAL_AHEAD_STEPS = 25
STEP_BUDGET = 50


def expert_start_and_goal(
    env: Any,
    rng: np.random.Generator,
    goal_ahead: int = GOAL_AHEAD_STEPS,
    max_offset: int = 25,
    expert_noise: float = 0.0,
    actions: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Roll the task's expert from a random start; return (start state, state ``goal_ahead`` steps on).

    The start is taken a random ``0..max_offset`` steps into the expert episode, so evaluation
    covers mid-trajectory states and not only the task's resets. The expert gets a fresh goal each
    time it reaches one (as in data collection): an expert idling at its goal would make start
    and goal coincide. A pair that still counts as solved before the planner acts (the expert came
    back near where it was, about 1 TwoRoom pair in 13) is drawn again, from the same generator.
    ``actions``, when given, receives the expert's ``goal_ahead`` actions from start to goal (the
    same episodes either way: the random draws do not depend on it).
    """
    for _ in range(100):
        if actions is not None:
            actions.clear()
        start, goal = _expert_pair(env, rng, goal_ahead, max_offset, expert_noise, actions)
        if not env._success(start, goal):
            return start, goal
    raise RuntimeError(f'{type(env).__name__}: 100 expert pairs in a row were solved at the start')


def _expert_pair(
    env: Any, rng: np.random.Generator, goal_ahead: int, max_offset: int, expert_noise: float,
    actions: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One draw of (start, goal) from an expert episode (``expert_start_and_goal``)."""
    from lewm_ros.sim.experts import make_expert

    obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
    expert = make_expert(env, noise=expert_noise, rng=rng)
    offset = int(rng.integers(0, max_offset + 1))
    states = [env.get_state()]
    for step in range(offset + goal_ahead):
        action = expert.act(obs)
        if actions is not None and step >= offset:
            actions.append(np.asarray(action, dtype=np.float32))
        obs, _, _, _, info = env.step(action)
        states.append(env.get_state())
        if info['is_success']:
            env.resample_goal(rng)
            expert.reset()
    return states[offset], states[offset + goal_ahead]
