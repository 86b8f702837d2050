"""Latent planning with a LeWM world model: sampling solvers, a cached rollout and the planner API."""

from lewm_ros.planning.config import PlannerConfig
from lewm_ros.planning.history import BlockHistory
from lewm_ros.planning.planner import LatentPlanner, PlanResult, shift_plan
from lewm_ros.planning.rollout import CachedRollout, NaiveRollout, naive_rollout
from lewm_ros.planning.solver import Solver, SolveResult, make_solver

__all__ = [
    'BlockHistory',
    'CachedRollout',
    'LatentPlanner',
    'NaiveRollout',
    'PlanResult',
    'PlannerConfig',
    'SolveResult',
    'Solver',
    'make_solver',
    'naive_rollout',
    'shift_plan',
]
