"""The planner node's control logic, free of ROS: frames and goals in, one action per tick out.

Per tick the node calls ``observe(frame)`` when a new camera frame is there (the frame's surprise
comes back), then ``act()`` for the action to send, then ``executed(action)`` with what it really
sent (the planned action, or a safe action). Plans are made at block boundaries and executed for
``replan_every`` blocks (receding horizon), warm-started from the previous plan.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from lewm_ros.model import LeWM, resize_pixels
from lewm_ros.planning.planner import LatentPlanner, PlanResult
from lewm_ros.surprise import RunningStats, SurpriseReading
from lewm_ros.tick_history import TickHistory


class LatentMPC:
    """Receding-horizon control in LeWM's latent space for one robot."""

    def __init__(
        self, planner: LatentPlanner, surprise_threshold: float | None, replan_every: int = 1
    ) -> None:
        self.planner = planner
        self.model: LeWM = planner.model
        cfg = self.model.config
        self.frameskip, self.action_dim = cfg.frameskip, cfg.action_dim
        self.history = TickHistory(planner.history, cfg.frameskip, cfg.action_dim)
        self.surprise_threshold = surprise_threshold
        self.replan_every = replan_every
        self.stats = RunningStats()
        self._goal: torch.Tensor | None = None
        self._queue: deque[np.ndarray] = deque()
        self.last_plan: PlanResult | None = None

    def replace_planner(self, planner: LatentPlanner, replan_every: int) -> None:
        """Swap in a planner with new settings (same model); the next tick plans afresh."""
        self.planner, self.replan_every = planner, replan_every
        self._queue.clear()

    # -- goal -------------------------------------------------------------------------------------
    @property
    def has_goal(self) -> bool:
        """Whether a goal is set (no goal, no actions)."""
        return self._goal is not None

    def set_goal(self, image: np.ndarray) -> None:
        """Take ``image`` (H, W, 3) uint8, any size, as the goal.

        A new goal starts a new episode: the plan, its warm start and the frame history start
        afresh (after a reset the previous frames belong to another world, and would be scored
        as a surprise).
        """
        self._goal = self.planner.encode_goal(image[None])
        self.restart_history()

    def clear_goal(self) -> None:
        """Stop pursuing the goal; ``act`` returns None until a new one is set."""
        self._goal = None
        self.restart_plan()

    def restart_history(self) -> None:
        """The world was reset (or we lost sight of it): the next frame starts a new history, unscored.

        Without this the first frame after a reset would be compared with the prediction from
        frames of another episode, and flagged as a surprise; the plan restarts too.
        """
        self.history.clear()
        self.restart_plan()

    def restart_plan(self) -> None:
        """Drop the queued actions and the warm start: the next tick plans from scratch."""
        self._queue.clear()
        self.planner.reset()

    # -- ticks ------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, frame: np.ndarray | None) -> SurpriseReading | None:
        """Record this tick's view: a new frame (H, W, 3) uint8, or None to repeat the last one.

        Returns the new frame's surprise, or None for a repeat (it was scored when it arrived).
        Every tick needs a view because the model's frames are ``frameskip`` ticks apart.
        """
        if frame is None:
            if len(self.history):
                self.history.repeat()
            return None
        pixels = resize_pixels(torch.from_numpy(frame).to(self.planner.device), self.model.config.image_size)
        z = self.model.encode(pixels[None, None])[0, 0].float()
        self.history.observe(z)
        context = self.history.surprise_context()
        score = None
        if context is not None:
            z_window, blocks, z_now = context
            blocks_norm = self.model.normalize_actions(
                torch.from_numpy(blocks).to(z_window.device).reshape(1, len(blocks), -1))
            predicted = self.model.predict(z_window[None], self.model.embed_actions(blocks_norm))[0, -1]
            score = float((predicted - z_now).square().mean())  # s_t = ||ẑ_t - z_t||² / D
            self.stats.update(score)
        threshold = self.surprise_threshold
        flag = score is not None and threshold is not None and score > threshold
        return SurpriseReading(score, flag, threshold, self.stats.mean, self.stats.std, self.stats.count)

    @property
    def frames_until_surprise(self) -> int:
        """Frames still needed before the first surprise score (one block of history)."""
        return self.history.ticks_until_surprise()

    def act(self, deadline: float | None = None) -> tuple[np.ndarray | None, PlanResult | None]:
        """This tick's action (env units) and the plan if one was made; (None, None) without a goal.

        ``deadline`` (a ``time.monotonic()`` instant) bounds a plan made in this tick: the solver
        starts no iteration after it.
        """
        if self._goal is None or len(self.history) == 0:
            return None, None
        plan = None
        if not self._queue:
            embeddings, blocks = self.history.planning_context()
            plan = self.planner.plan(embeddings[None], blocks[None] if len(blocks) else None, self._goal,
                                     executed_blocks=self.replan_every, deadline=deadline)
            self.last_plan = plan
            steps = plan.sequence[0, : self.replan_every].reshape(-1, self.action_dim).cpu().numpy()
            self._queue.extend(steps.astype(np.float64))
        return self._queue.popleft(), plan

    def executed(self, action: np.ndarray | None) -> None:
        """Record what was really sent this tick (None = nothing, read as a zero command)."""
        if len(self.history) == 0:
            return
        self.history.executed(np.zeros(self.action_dim) if action is None else action)
