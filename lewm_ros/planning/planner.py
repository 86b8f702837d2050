"""LatentPlanner: the API the ROS node and the evaluation use to turn images into actions.

One plan, for B environments at once::

    frames            (B, T, H, W, 3) uint8   T <= history frames at block boundaries, current last
                      (or their embeddings (B, T, D), e.g. kept from earlier ticks: no re-encoding)
    executed_actions  (B, T - 1, fs, A)       env units; block i was executed between frames i, i + 1
    goal              (B, H, W, 3) uint8 image, or (B, D) embedding from encode_goal()
    -> PlanResult     action_block (B, fs, A) env units: the next block to execute
                      sequence (B, horizon, fs, A) env units: the whole plan

A *block* is ``frameskip`` env steps: the model sees frames ``frameskip`` env steps apart, so
the history must hold frames at block boundaries (``BlockHistory`` keeps them), and a plan is
``horizon`` blocks of ``frameskip`` env actions. All envs and all candidates of an iteration go
through the world model in one batched call. The planner is stateful only for the warm start:
it keeps each environment's last plan (by ``env_ids``) and, at the next call, starts from it
shifted by the blocks executed in between.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lewm_ros.checkpoint import load_controller
from lewm_ros.device import resolve_device, usable_cores
from lewm_ros.model import LeWM, ModelConfig, resize_pixels
from lewm_ros.planning.config import PlannerConfig
from lewm_ros.planning.controller import GoalController
from lewm_ros.planning.goal_metric import NOT_CALIBRATED, goal_metric_from_meta
from lewm_ros.planning.rollout import CachedRollout, NaiveRollout
from lewm_ros.planning.solver import make_solver


def needs_controller(config: PlannerConfig) -> bool:
    """Whether ``config`` plans with the checkpoint's goal-conditioned controller."""
    return config.solver == 'controller' or config.proposal == 'controller'


_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float64': torch.float64}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512_BF16 or AMX); Linux only."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            flags = next((line for line in f if line.startswith('flags')), '').split()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The rollout dtype for config value ``name`` on ``device`` (``auto``: bf16 where it is native)."""
    if name != 'auto':
        return _DTYPES[name]
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == 'cpu' and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


# Below this much work per predictor layer (candidates x width^2) one CPU thread plans faster
# than several: the matrix products are too small to pay for splitting them. Measured on 2 cores:
# the tiny preset (width 128) crosses over between 300 and 1000 candidates, `small` (width 256)
# between 64 and 300 (docs/planning.md, "CPU threads").
ONE_THREAD_MAX_WORK = 10_000_000


def resolve_threads(requested: int, candidates: int, model_config: ModelConfig) -> int:
    """CPU threads for planning ``candidates`` sequences in one forward: ``requested`` if > 0, else auto."""
    if requested > 0:
        return requested
    width = model_config.predictor_heads * model_config.predictor_head_dim
    return 1 if candidates * width * width < ONE_THREAD_MAX_WORK else usable_cores()


@dataclass
class PlanResult:
    """One plan per environment, in env units.

    ``cost`` is the plan's goal cost under the world model (the squared embedding distance to the
    goal the solver minimised); NaN for ``solver: controller``, which never consults the world model.
    """

    action_block: torch.Tensor
    sequence: torch.Tensor
    cost: torch.Tensor
    timing: dict[str, float] = field(default_factory=dict)
    receding_horizon: int = 1
    evaluations: int = 0  # candidate sequences scored per environment (fewer when a deadline cut it short)

    @property
    def to_execute(self) -> torch.Tensor:
        """The env actions to run before re-planning: (B, receding_horizon * fs, A)."""
        B, _, fs, A = self.sequence.shape
        return self.sequence[:, : self.receding_horizon].reshape(B, self.receding_horizon * fs, A)


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.to(device=device, dtype=dtype) if dtype is not None else x.to(device)


def shift_plan(plan: torch.Tensor, blocks: int) -> torch.Tensor:
    """Warm start: drop the first ``blocks`` of ``plan`` (B, H, ...) and append zeros (the data mean)."""
    if blocks <= 0:
        return plan.clone()
    shifted = torch.zeros_like(plan)
    if blocks < plan.shape[1]:
        shifted[:, : plan.shape[1] - blocks] = plan[:, blocks:]
    return shifted


class LatentPlanner:
    """Goal-reaching MPC in the embedding space of a LeWM model.

    Args:
        model: a trained ``LeWM`` (eval mode is set here); the planner runs on its device.
        config: solver and horizon settings; defaults are the paper's CEM.
        action_low, action_high: bounds (A,) in env units. Candidates are sampled in normalised
            space and clamped to the normalised box, so every action returned is within them.
            ``None`` leaves that side unbounded.
        goal_metric: whitening matrix (D, D) for ``config.goal_metric = 'whitened'`` (from
            ``lewm calibrate``; ``from_checkpoint`` reads it from the checkpoint).
        controller: the checkpoint's ``GoalController``, needed by ``solver: controller`` and
            ``proposal: controller`` (``from_checkpoint`` loads it when the config asks for it).

    """

    def __init__(
        self,
        model: LeWM,
        config: PlannerConfig | None = None,
        action_low: Sequence[float] | torch.Tensor | None = None,
        action_high: Sequence[float] | torch.Tensor | None = None,
        goal_metric: torch.Tensor | None = None,
        controller: GoalController | None = None,
    ) -> None:
        self.config = config or PlannerConfig()
        self.model = model.eval()
        mc = model.config
        self.device = next(model.parameters()).device
        self.frameskip, self.action_dim, self.embed_dim = mc.frameskip, mc.action_dim, mc.embed_dim
        # the solver works in float64 only when asked to (for exactness tests); float32 otherwise
        self.dtype = torch.float64 if self.config.dtype == 'float64' else torch.float32
        self.history = self.config.history or mc.history
        if self.history > mc.history:
            raise ValueError(
                f"planner history {self.history} exceeds the model's trained history {mc.history}"
            )
        A = self.action_dim
        low = (
            torch.full((A,), -torch.inf)
            if action_low is None
            else _as_tensor(action_low, 'cpu', torch.float32)
        )
        high = (
            torch.full((A,), torch.inf)
            if action_high is None
            else _as_tensor(action_high, 'cpu', torch.float32)
        )
        if low.shape != (A,) or high.shape != (A,):
            raise ValueError(
                f'action bounds must have {A} values each, got {tuple(low.shape)} and {tuple(high.shape)}'
            )
        if bool((low >= high).any()):
            raise ValueError(f'action_low {low.tolist()} must be below action_high {high.tolist()}')
        self.action_low = low.to(self.device, self.dtype)
        self.action_high = high.to(self.device, self.dtype)
        with torch.no_grad():
            self.low_norm = model.normalize_actions(self.action_low).to(self.dtype)
            self.high_norm = model.normalize_actions(self.action_high).to(self.dtype)
        self.metric: torch.Tensor | None = None
        if self.config.goal_metric == 'whitened':
            if goal_metric is None:
                raise ValueError(NOT_CALIBRATED)
            if tuple(goal_metric.shape) != (self.embed_dim, self.embed_dim):
                raise ValueError(
                    f'goal_metric must be ({self.embed_dim}, {self.embed_dim}), '
                    f'got {tuple(goal_metric.shape)}'
                )
            self.metric = torch.as_tensor(goal_metric).to(self.device, self.dtype)
        self._action_dtype = next(model.action_encoder.parameters()).dtype
        self._encoder_dtype = next(model.encoder.parameters()).dtype
        self.controller = self._checked_controller(controller)
        self.solver = None if self.config.solver == 'controller' else make_solver(self.config)
        rollout_cls = CachedRollout if self.config.rollout == 'cached' else NaiveRollout
        self.rollout_dtype = resolve_dtype(self.config.dtype, self.device)
        self.rollout = rollout_cls(model.predictor, self.rollout_dtype)
        self._rollout_fn = self._maybe_compile(self.rollout.__call__)
        self._plans: dict[int, torch.Tensor] = {}
        self._generators: dict[int, torch.Generator] = {}

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: PlannerConfig | None = None) -> LatentPlanner:
        """Load a checkpoint on ``config.device`` and plan within its recorded action bounds."""
        from lewm_ros.checkpoint import load_checkpoint

        config = config or PlannerConfig()
        device = resolve_device(config.device)
        model, meta = load_checkpoint(path, device)
        metric = goal_metric_from_meta(meta, model.config.embed_dim)
        controller = load_controller(path, meta, device) if needs_controller(config) else None
        return cls(model, config, meta.get('action_low'), meta.get('action_high'), metric, controller)

    def _checked_controller(self, controller: GoalController | None) -> GoalController | None:
        """The controller the config plans with, checked against the model; None if it plans without."""
        if not needs_controller(self.config):
            return None
        if controller is None:
            raise ValueError(f'solver {self.config.solver!r} with proposal {self.config.proposal!r} needs '
                             "the checkpoint's controller; train one with `lewm train-controller`")
        c, mc = controller.config, self.model.config
        if (c.embed_dim, c.action_dim, c.frameskip) != (mc.embed_dim, mc.action_dim, mc.frameskip):
            raise ValueError(f'the controller reads {c.embed_dim}-d embeddings and writes {c.frameskip} x '
                             f'{c.action_dim} blocks; the model has {mc.embed_dim}, '
                             f'{mc.frameskip} x {mc.action_dim}')
        if c.history > self.history:
            raise ValueError(f'the controller reads {c.history} frames; this planner keeps {self.history} '
                             '(the missing ones would always look like the start of an episode)')
        return controller.to(self.device).eval()

    def _maybe_compile(self, fn):
        cfg = self.config
        if not (cfg.compile or cfg.cuda_graphs):
            return fn
        if cfg.cuda_graphs and self.device.type != 'cuda':
            raise ValueError('cuda_graphs needs a CUDA device; the planner runs on ' + str(self.device))
        # default mode: no GEMM autotuning (minutes on a small CPU); CUDA graphs remove the
        # per-kernel launch cost that dominates a small model on a GPU
        return torch.compile(fn, mode='reduce-overhead' if cfg.cuda_graphs else None, dynamic=False)

    # -- state -----------------------------------------------------------------------------------
    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the warm-start plan (and restart the random stream) of ``env_ids`` (all if None)."""
        ids = list(self._plans) + list(self._generators) if env_ids is None else list(env_ids)
        for i in ids:
            self._plans.pop(int(i), None)
            self._generators.pop(int(i), None)

    def _generator(self, env_id: int) -> torch.Generator:
        if env_id not in self._generators:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.config.seed * 1_000_003 + env_id)
            self._generators[env_id] = gen
        return self._generators[env_id]

    # -- encoding --------------------------------------------------------------------------------
    def _pixels(self, frames: Any, what: str) -> torch.Tensor:
        x = _as_tensor(frames, self.device)
        if x.dtype != torch.uint8:
            raise TypeError(f'{what} must be uint8 RGB images, got {x.dtype}')
        if x.shape[-1] != 3:
            raise ValueError(f'{what} must be channels-last RGB (..., H, W, 3), got shape {tuple(x.shape)}')
        return resize_pixels(x, self.model.config.image_size)

    @torch.no_grad()
    def encode_goal(self, image: Any) -> torch.Tensor:
        """Goal images (B, H, W, 3) uint8 -> goal embeddings (B, D) to pass as ``goal``."""
        pixels = self._pixels(image, 'goal image')
        if pixels.dim() != 4:
            raise ValueError(f'goal images must be (B, H, W, 3), got {tuple(pixels.shape)}')
        return self.model.encode(pixels.unsqueeze(1))[:, 0].to(self.dtype)

    def _goal_embedding(self, goal: Any, batch: int) -> torch.Tensor:
        B = batch
        g = _as_tensor(goal, self.device)
        if g.dtype == torch.uint8:
            g = self.encode_goal(g)
        g = g.to(self.dtype)
        if g.shape != (B, self.embed_dim):
            raise ValueError(
                f'goal must be (B={B}, H, W, 3) uint8 images or (B={B}, D={self.embed_dim}) embeddings, '
                f'got {tuple(g.shape)}'
            )
        return g

    # -- planning --------------------------------------------------------------------------------
    @torch.no_grad()
    def plan(
        self,
        frames: Any,
        executed_actions: Any | None,
        goal: Any,
        env_ids: Sequence[int] | None = None,
        executed_blocks: int | None = None,
        deadline: float | None = None,
    ) -> PlanResult:
        """Plan ``config.horizon`` blocks for each of B environments (see the module docstring).

        Args:
            frames: (B, T, H, W, 3) uint8, boundary frames oldest first; frames beyond the planner's
                history are dropped from the front. Resized to the model's size if needed. Or their
                embeddings (B, T, D) from ``model.encode``: a controller that encoded each frame on
                arrival (for its surprise score) need not encode it again.
            executed_actions: (B, T - 1, fs, A) or (B, T - 1, fs * A) env units; None when T = 1.
            goal: (B, H, W, 3) uint8 goal images or (B, D) goal embeddings.
            env_ids: warm-start slot of each row (default 0..B-1).
            executed_blocks: blocks of the previous plan executed since it was made (default
                ``config.receding_horizon``); the warm start shifts by this much.
            deadline: ``time.monotonic()`` instant after which the solver starts no new iteration
                (a control loop's time budget); the plan is the best found by then.

        """
        t_start = time.perf_counter()
        cfg = self.config
        self._set_threads(len(frames) * (1 if self.solver is None else cfg.samples))
        B, goal_z = self._prepare(frames, executed_actions, goal, rollout=self.solver is not None)
        ids = list(range(B)) if env_ids is None else [int(i) for i in env_ids]
        if len(ids) != B or len(set(ids)) != B:
            raise ValueError(f'env_ids must name {B} distinct slots, got {ids}')
        self._sync()
        t_encoded = time.perf_counter()

        rollout_time = [0.0]

        def cost_fn(candidates: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            cost = self._costs(candidates, goal_z)
            self._sync()
            rollout_time[0] += time.perf_counter() - t0
            return cost

        proposal = self._proposal(goal_z) if self.controller is not None else None
        if self.solver is None:  # solver: controller, one forward pass and no world-model rollout
            actions, evaluations = proposal, 0
            cost = torch.full((B,), float('nan'), device=self.device, dtype=self.dtype)
        else:
            if proposal is not None:
                mean = proposal.clone()
            else:
                shift = cfg.receding_horizon if executed_blocks is None else executed_blocks
                mean = self._initial_mean(ids, shift)
            std = torch.full_like(mean, cfg.init_std)
            result = self.solver.solve(
                cost_fn, mean, std, self.low_norm, self.high_norm, [self._generator(i) for i in ids], deadline
            )
            actions, cost, evaluations = result.actions, result.cost.to(self.dtype), result.evaluations
            if proposal is not None:  # the hybrid never returns a plan worse than its proposal
                proposal_cost = cost_fn(proposal.unsqueeze(1))[:, 0].to(self.dtype)
                keep = proposal_cost < cost
                actions = torch.where(keep[:, None, None, None], proposal, actions)
                cost, evaluations = torch.minimum(cost, proposal_cost), evaluations + 1
        if cfg.warm_start:
            for row, i in enumerate(ids):
                self._plans[i] = actions[row].clone()
        sequence = self.model.denormalize_actions(actions)
        sequence = torch.clamp(sequence, min=self.action_low, max=self.action_high)
        self._sync()
        t_end = time.perf_counter()
        timing = {
            'encode_ms': (t_encoded - t_start) * 1e3,
            'rollout_ms': rollout_time[0] * 1e3,
            'solver_ms': (t_end - t_encoded - rollout_time[0]) * 1e3,
            'total_ms': (t_end - t_start) * 1e3,
        }
        return PlanResult(
            action_block=sequence[:, 0],
            sequence=sequence,
            cost=cost,
            timing=timing,
            receding_horizon=cfg.receding_horizon,
            evaluations=evaluations,
        )

    @torch.no_grad()
    def score(self, frames: Any, executed_actions: Any | None, goal: Any, sequences: Any) -> torch.Tensor:
        """Cost (B, K) of given plans ``sequences`` (B, K, horizon, fs, A) in env units.

        The same cost the solver minimises (clamping included), e.g. to compare two plans or to
        check how good the current plan still is after new frames arrived.
        """
        B, goal_z = self._prepare(frames, executed_actions, goal)
        seq = _as_tensor(sequences, self.device, self.dtype)
        expected = (B, self.config.horizon, self.frameskip, self.action_dim)
        if seq.dim() != 5 or (seq.shape[0],) + tuple(seq.shape[2:]) != expected:
            raise ValueError(
                f'sequences must be (B={B}, K, {expected[1]}, {expected[2]}, {expected[3]}), got '
                f'{tuple(seq.shape)}'
            )
        norm = self.model.normalize_actions(torch.clamp(seq, min=self.action_low, max=self.action_high))
        return self._costs(norm, goal_z)

    def _prepare(self, frames: Any, executed_actions: Any | None, goal: Any,
                 rollout: bool = True) -> tuple[int, torch.Tensor]:
        """Encode frames and goal, cache the rollout context (if ``rollout``); returns (B, goal embedding)."""
        fs, A = self.frameskip, self.action_dim
        x = _as_tensor(frames, self.device)
        embedded = x.is_floating_point() and x.dim() == 3
        if embedded and x.shape[-1] != self.embed_dim:
            raise ValueError(f'frame embeddings must be (B, T, D={self.embed_dim}), got {tuple(x.shape)}')
        if not embedded:
            x = self._pixels(x, 'frames')
            if x.dim() != 5:
                raise ValueError(
                    f'frames must be (B, T, H, W, 3) or embeddings (B, T, D), got {tuple(x.shape)}'
                )
        B, T = x.shape[:2]
        acts = self._executed(executed_actions, B, T)
        if T > self.history:
            x, acts, T = x[:, -self.history :], acts[:, T - self.history :], self.history
        z_obs = x.to(self._encoder_dtype) if embedded else self.model.encode(x)
        goal_z = self._goal_embedding(goal, B)
        blocks_norm = self.model.normalize_actions(acts.reshape(B, T - 1, fs * A))
        if rollout:
            self.rollout.prepare(z_obs, self._embed_actions(blocks_norm), self.config.horizon)
        self._context = (z_obs, blocks_norm)
        return B, goal_z

    def _proposal(self, goal_z: torch.Tensor) -> torch.Tensor:
        """The controller's plan (B, horizon, fs, A) for the prepared frames: normalised, inside the box."""
        z_obs, blocks_norm = self._context
        controller, horizon = self.controller, self.config.horizon
        steps = min(self.config.controller_ahead, controller.config.max_steps_ahead)
        out = controller(z_obs.float(), blocks_norm.float(), goal_z.float(), steps).to(self.dtype)
        if out.shape[1] < horizon:  # a controller trained for shorter plans: the data mean after them
            out = torch.cat([out, out.new_zeros(out.shape[0], horizon - out.shape[1], *out.shape[2:])], dim=1)
        return torch.clamp(out[:, :horizon], min=self.low_norm, max=self.high_norm)

    def _costs(self, candidates: torch.Tensor, goal_z: torch.Tensor) -> torch.Tensor:
        """Normalised candidates (B, N, horizon, fs, A) -> squared distance to the goal (B, N).

        The distance of the final prediction (``goal_cost='final'``) or its mean over the blocks;
        plain or whitened (``goal_metric``).
        """
        B, N = candidates.shape[:2]
        emb = self._embed_actions(
            candidates.reshape(B, N, self.config.horizon, self.frameskip * self.action_dim)
        )
        if self.config.goal_cost == 'final':
            diff = self._rollout_fn(emb).to(self.dtype) - goal_z.unsqueeze(1)  # (B, N, D)
        else:
            diff = self._rollout_fn(emb, return_all=True).to(self.dtype) - goal_z[:, None, None]
        if self.metric is not None:
            diff = diff @ self.metric
        distance = diff.square().sum(-1)
        return distance if self.config.goal_cost == 'final' else distance.mean(-1)

    def _executed(self, executed_actions: Any | None, batch: int, frames: int) -> torch.Tensor:
        B, T = batch, frames
        fs, A = self.frameskip, self.action_dim
        if executed_actions is None:
            if T > 1:
                raise ValueError(
                    f'{T} frames given but no executed_actions; pass the {T - 1} blocks between them'
                )
            return torch.zeros(B, 0, fs, A, device=self.device, dtype=self.dtype)
        acts = _as_tensor(executed_actions, self.device, self.dtype)
        if acts.dim() == 3 and acts.shape[-1] == fs * A:
            acts = acts.reshape(acts.shape[0], acts.shape[1], fs, A)
        if acts.shape != (B, T - 1, fs, A):
            raise ValueError(
                f'executed_actions must be (B={B}, T-1={T - 1}, frameskip={fs}, A={A}) '
                f'or (B, T-1, {fs * A}), '
                f'got {tuple(acts.shape)}'
            )
        return acts

    def _initial_mean(self, ids: list[int], executed_blocks: int) -> torch.Tensor:
        cfg = self.config
        shape = (cfg.horizon, self.frameskip, self.action_dim)
        rows = []
        for i in ids:
            prev = self._plans.get(i) if cfg.warm_start else None
            rows.append(
                torch.zeros(shape, device=self.device, dtype=self.dtype)
                if prev is None
                else shift_plan(prev[None], executed_blocks)[0]
            )
        return torch.stack(rows)

    def _embed_actions(self, actions_norm: torch.Tensor) -> torch.Tensor:
        return self.model.embed_actions(actions_norm.to(self._action_dtype))

    def _set_threads(self, candidates: int) -> None:
        """Apply the CPU thread count for a plan of ``candidates`` sequences (a process-wide setting)."""
        if self.device.type == 'cpu':
            threads = resolve_threads(self.config.threads, candidates, self.model.config)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        elif self.device.type == 'mps':
            torch.mps.synchronize()
