"""Every knob of the latent planner in one dataclass; the defaults are the paper's CEM settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SOLVERS = ('cem', 'icem', 'mppi', 'controller')
PROPOSALS = ('none', 'controller')
GOAL_COSTS = ('final', 'mean')
GOAL_METRICS = ('euclidean', 'whitened')
ROLLOUTS = ('cached', 'naive')
DTYPES = ('auto', 'float32', 'bfloat16', 'float64')


@dataclass
class PlannerConfig:
    """Planner settings.

    Units: ``horizon`` and ``receding_horizon`` count *action blocks*; one block is the model's
    ``frameskip`` env steps (the model sees frames ``frameskip`` env steps apart and one
    concatenated action block between two of them). ``init_std`` and every solver noise are in
    normalised (z-scored) action units, where the dataset's action distribution has std 1.

    Defaults reproduce the reference planner's CEM (300 samples, 30 iterations, 30 elites,
    horizon 5 blocks, std 1, the whole plan executed before re-planning), with our fixes always
    on: candidates clamped to the action bounds, full trained history, warm start, batched envs.
    """

    # 'controller': no search, the checkpoint's goal-conditioned controller in one forward pass
    solver: str = 'cem'
    # 'controller': a sampling solver starts from the controller's sequence instead of the warm
    # start, and the controller's sequence wins if the search finds nothing cheaper (the hybrid)
    proposal: str = 'none'
    # the controller's remaining-steps input (blocks to the goal). Its training goals lie 1 ..
    # max_steps_ahead blocks on; told the goal is near, it acts decisively (docs/planning.md)
    controller_ahead: int = 1
    samples: int = 300
    iterations: int = 30
    elites: int = 30
    horizon: int = 5
    receding_horizon: int = 5
    init_std: float = 1.0
    min_std: float = 0.0
    warm_start: bool = True
    history: int | None = None
    # 'final': squared distance of the last predicted embedding to the goal's (the reference);
    # 'mean': that distance averaged over every predicted block, so plans that get there early and
    # stay are preferred and the short, accurate predictions count too (docs/planning.md)
    goal_cost: str = 'final'
    # 'euclidean': plain squared distance (the reference); 'whitened': in units of typical model
    # steps, with the step covariance `lewm calibrate` stored in the checkpoint (goal_metric.py)
    goal_metric: str = 'euclidean'
    # MPPI: weights softmax(-(cost - min) / (temperature * (max - min))): temperature is relative
    # to the spread of the costs in each iteration, so one value works for any embedding scale.
    mppi_temperature: float = 0.1
    mppi_adapt_std: bool = True
    # iCEM (Pinneri et al. 2020): coloured noise exponent over time, population decay per
    # iteration, share of elites kept for the next iteration, momentum of the mean/std refit, and
    # (our addition) the share of each iteration's samples drawn with white instead of coloured noise.
    icem_noise_beta: float = 2.0
    icem_population_decay: float = 1.25
    icem_keep_elites: float = 0.3
    icem_momentum: float = 0.1
    icem_white_fraction: float = 0.0
    # execution: 'naive' recomputes every window for every candidate like the reference (for
    # benchmarks and ablations); 'cached' gives the same numbers faster
    rollout: str = 'cached'
    device: str = 'auto'
    # rollout precision; 'auto' = bfloat16 where the device has native bf16 math (CUDA with bf16,
    # CPUs with AVX512_BF16 or AMX), float32 elsewhere. On the project CPU bf16 is 2x faster and
    # its plans differ from float32 ones no more than two float32 seeds differ (docs/planning.md).
    dtype: str = 'auto'
    compile: bool = False
    cuda_graphs: bool = False
    # CPU threads for planning (a process-wide torch setting); 0 = auto: one thread for small
    # predictors, whose matrix products are too small to share between threads, all cores otherwise
    threads: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.solver not in SOLVERS:
            problems.append(f'solver must be one of {SOLVERS}, got {self.solver!r}')
        for name in ('samples', 'iterations', 'elites', 'horizon', 'receding_horizon', 'controller_ahead'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f'{name} must be a positive integer, got {value!r}')
        if not problems:
            if self.elites > self.samples:
                problems.append(f'elites ({self.elites}) cannot exceed samples ({self.samples})')
            if self.elites < 2 and self.solver in ('cem', 'icem'):
                problems.append('elites must be at least 2 to refit a standard deviation')
            if self.receding_horizon > self.horizon:
                problems.append(
                    f'receding_horizon ({self.receding_horizon}) cannot exceed horizon ({self.horizon})'
                )
        if self.proposal not in PROPOSALS:
            problems.append(f'proposal must be one of {PROPOSALS}, got {self.proposal!r}')
        if self.goal_cost not in GOAL_COSTS:
            problems.append(f'goal_cost must be one of {GOAL_COSTS}, got {self.goal_cost!r}')
        if self.goal_metric not in GOAL_METRICS:
            problems.append(f'goal_metric must be one of {GOAL_METRICS}, got {self.goal_metric!r}')
        if self.history is not None and (not isinstance(self.history, int) or self.history < 1):
            problems.append(f'history must be null or a positive integer, got {self.history!r}')
        if not self.init_std > 0:
            problems.append(f'init_std must be positive, got {self.init_std!r}')
        if self.min_std < 0:
            problems.append(f'min_std must be >= 0, got {self.min_std!r}')
        if not self.mppi_temperature > 0:
            problems.append(f'mppi_temperature must be positive, got {self.mppi_temperature!r}')
        if self.icem_population_decay < 1:
            problems.append(f'icem_population_decay must be >= 1, got {self.icem_population_decay!r}')
        if not 0 <= self.icem_keep_elites <= 1:
            problems.append(f'icem_keep_elites must be in [0, 1], got {self.icem_keep_elites!r}')
        if not 0 <= self.icem_white_fraction <= 1:
            problems.append(f'icem_white_fraction must be in [0, 1], got {self.icem_white_fraction!r}')
        if not 0 <= self.icem_momentum < 1:
            problems.append(f'icem_momentum must be in [0, 1), got {self.icem_momentum!r}')
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            problems.append(f'threads must be 0 (auto) or a positive integer, got {self.threads!r}')
        if self.rollout not in ROLLOUTS:
            problems.append(f'rollout must be one of {ROLLOUTS}, got {self.rollout!r}')
        if self.dtype not in DTYPES:
            problems.append(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
        if problems:
            raise ValueError('invalid planner config: ' + '; '.join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON reports and ROS parameters)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> PlannerConfig:
        """Build from a dict (e.g. a YAML ``planner:`` section); unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown planner config key(s) {unknown}; known keys: {sorted(known)}')
        return cls(**values)

    def replace(self, **changes: Any) -> PlannerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
