"""The sim-in-the-loop run behind ``lewm demo``: sim node + planner node + an observer, in one process.

Everything crosses real ROS 2 topics and services on a private DDS graph; only episode control
(reset, teleport, recolour) is scripted here, through the sim node's services.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.evaluate import wilson_interval
from training.reports import save_figure, write_json

STEP_BUDGET = 50  # the paper's protocol
STALL_TIMEOUT_S = 60.0  # an episode whose step count does not move for this long is an error


@dataclass
class EpisodeTrace:
    """What the observer saw during one episode."""

    index: int
    surprise_episode: bool = False
    success: bool = False
    steps: int = 0
    scores: list[tuple[int, float, bool]] = field(default_factory=list)  # (sim step, score, flagged)
    events: dict[str, int] = field(default_factory=dict)  # perturbation kind -> sim step


def run_demo(args: argparse.Namespace, checkpoint: Path) -> int:
    """Play the episodes and report; returns the process exit code."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from lewm_ros.checkpoint import inspect_checkpoint
    from lewm_ros.nodes.planner_node import PlannerNode
    from lewm_ros.nodes.sim_node import SimNode

    meta, _ = inspect_checkpoint(checkpoint)  # before ROS starts: a bad checkpoint is one error line
    env_id = args.env or meta.get('env_id') or 'lewm/TwoRoom-v0'
    print(f'checkpoint {checkpoint} ({meta.get("num_parameters", 0) / 1e6:.1f} M parameters, '
          f'{meta["image_size"]} px), task {env_id}, {args.episodes} episodes + 1 surprise episode')
    context = rclpy.context.Context()
    rclpy.init(context=context)
    # Single-threaded, like the nodes' own main(): every callback is short (the planner plans in
    # its own thread), and rclpy's multi-threaded executor spins a core on busy callback groups.
    executor = SingleThreadedExecutor(context=context)
    nodes: list[Any] = []
    try:
        sim = SimNode(context=context, env_id=env_id, img_size=int(meta['image_size']), mode='lockstep',
                      seed=args.seed, episode_steps=100000, auto_reset=False, control_rate_hz=args.rate_hz)
        # the node's defaults (the checkpoint's planner settings and threshold) unless told otherwise
        chosen = {'samples': args.samples, 'iterations': args.iterations}
        planner = PlannerNode(context=context, checkpoint=str(checkpoint), device=args.device,
                              control_rate_hz=args.rate_hz, frame_driven=True, stale_timeout=60.0,
                              **{k: v for k, v in chosen.items() if v is not None})
        print(f'planner: {planner.settings.describe()}', flush=True)
        observer = Observer(context, sim)
        nodes = [sim, planner, observer.node]
        for node in nodes:
            executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        traces = [observer.play_episode(i, perturb={}) for i in range(args.episodes)]
        traces.append(observer.play_episode(args.episodes, perturb={'teleport': args.teleport_step,
                                                                   'recolour': args.recolour_step}))
        threshold = planner.mpc.surprise_threshold
        plan_ms = list(planner.plan_times_ms)
        print(f'planner: {planner.actions_sent} actions, frames used {planner.frames_used}, repeated '
              f'{planner.frames_repeated}; history restarts {planner.history_restarts}', flush=True)
        settings = planner.settings
    finally:
        executor.shutdown(timeout_sec=5.0)
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)
    return _report(args, checkpoint, env_id, traces, threshold, plan_ms, settings, int(meta['frameskip']))


class Observer:
    """Subscribes to the planner's surprise and the sim's success; drives episodes via services."""

    def __init__(self, context: Any, sim: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        self.sim = sim
        self.node = Node('lewm_demo_observer', context=context)
        self._trace: EpisodeTrace | None = None
        self._lock = threading.Lock()
        self.node.create_subscription(DiagnosticArray, 'lewm/surprise', self._on_surprise, 50)
        self.node.create_subscription(Bool, 'sim/success', self._on_success, 50)
        self._clients = {name: self.node.create_client(Trigger, f'sim/{name}')
                         for name in ('reset', 'teleport', 'recolour')}
        self._trigger = Trigger.Request

    def _call(self, name: str) -> str:
        """Call ``sim/<name>``; returns the response's message."""
        client = self._clients[name]
        if not client.wait_for_service(timeout_sec=10.0):
            raise RuntimeError(f'sim/{name} service not available')
        future = client.call_async(self._trigger())
        deadline = time.monotonic() + 30.0
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'sim/{name} did not answer within 30 s')
            time.sleep(0.005)
        return future.result().message

    def _on_surprise(self, msg: Any) -> None:
        values = {kv.key: kv.value for kv in msg.status[0].values}
        score = float(values['score'])
        with self._lock:
            if self._trace is not None and not math.isnan(score):
                self._trace.scores.append((self.sim.steps, score, values['flagged'] == 'true'))

    def _on_success(self, msg: Any) -> None:
        with self._lock:
            trace = self._trace
            if trace is not None and msg.data and self.sim.steps <= STEP_BUDGET and self.sim.steps > 0:
                trace.success = True

    def play_episode(self, index: int, perturb: dict[str, int]) -> EpisodeTrace:
        """Reset the sim, let the planner act for the step budget, apply perturbations on schedule."""
        trace = EpisodeTrace(index, surprise_episode=bool(perturb))
        self._call('reset')
        with self._lock:
            self._trace = trace
        pending = sorted(perturb.items(), key=lambda kv: kv[1])
        last_step, last_progress = -1, time.monotonic()
        while self.sim.steps < STEP_BUDGET:
            if pending and self.sim.steps >= pending[0][1]:
                kind, _ = pending.pop(0)
                # the sim answers '<kind> at step N': the frame of step N + 1 is the first to show it
                trace.events[kind] = int(self._call(kind).rsplit(' ', 1)[-1])
            if self.sim.steps != last_step:
                last_step, last_progress = self.sim.steps, time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise RuntimeError(f'episode {index} stalled at step {last_step} for {STALL_TIMEOUT_S:.0f} s '
                                   '(see the node logs above)')
            if not trace.surprise_episode and trace.success:
                break
            time.sleep(0.002)
        with self._lock:
            trace.steps, self._trace = self.sim.steps, None
        label = 'surprise episode' if trace.surprise_episode else f'episode {index + 1}'
        outcome = 'success' if trace.success else 'no success'
        print(f'{label}: {outcome} after {trace.steps} steps', flush=True)
        return trace


def _report(args: argparse.Namespace, checkpoint: Path, env_id: str, traces: list[EpisodeTrace],
            threshold: float | None, plan_ms: list[float], settings: Any, frameskip: int) -> int:
    normal = [t for t in traces if not t.surprise_episode]
    special = next(t for t in traces if t.surprise_episode)
    wins = sum(t.success for t in normal)
    low, high = wilson_interval(wins, len(normal))
    normal_scores = np.array([s for t in normal for _, s, _ in t.scores])
    false_flags = sum(f for t in normal for _, _, f in t.scores)

    def score_at(kind: str) -> float | None:
        # the highest score within one block after the event: a score is filed under the sim's step
        # count when it arrives, which may already be a step or two past the frame it scores
        step = special.events.get(kind)
        after = [s for st, s, _ in special.scores if step is not None and step < st <= step + frameskip]
        return max(after) if after else None

    teleport, recolour = score_at('teleport'), score_at('recolour')
    summary = {
        'checkpoint': str(checkpoint), 'env_id': env_id, 'episodes': len(normal),
        'planner': settings.config.to_dict(), 'planner_sources': settings.sources,
        'success_rate': wins / max(1, len(normal)), 'success_ci95': [low, high],
        'surprise': {
            'threshold': threshold,
            'normal_median': float(np.median(normal_scores)) if normal_scores.size else None,
            'normal_p99': float(np.quantile(normal_scores, 0.99)) if normal_scores.size else None,
            'normal_frames': int(normal_scores.size), 'false_flags': int(false_flags),
            'false_flag_rate': false_flags / max(1, normal_scores.size),
            'teleport_score': teleport, 'recolour_score': recolour,
            'teleport_flagged': teleport is not None and threshold is not None and teleport > threshold,
            'teleport_over_recolour': teleport / recolour if teleport and recolour else None,
            'events': special.events,
        },
        'plan_ms_median': float(np.median(plan_ms)) if plan_ms else None,
    }
    write_json(args.out / 'demo.json', summary)
    png = args.out / 'surprise_trace.png'
    _plot(special, normal, threshold, png)
    s = summary['surprise']

    def fmt(x: float | None) -> str:
        return 'n/a' if x is None else f'{x:.4g}'

    print('\n=== lewm demo summary ===')
    print(f'success: {wins}/{len(normal)} episodes ({summary["success_rate"]:.0%}, '
          f'95 % CI {low:.0%}-{high:.0%})')
    print(f'planning: median {fmt(summary["plan_ms_median"])} ms per plan')
    print(f'surprise: threshold {fmt(threshold)}; normal frames median {fmt(s["normal_median"])}, '
          f'p99 {fmt(s["normal_p99"])}, false flags {s["false_flags"]}/{s["normal_frames"]} '
          f'({s["false_flag_rate"]:.1%})')
    print(f'          teleport at step {s["events"].get("teleport")}: score {fmt(s["teleport_score"])} '
          f'({"flagged" if s["teleport_flagged"] else "NOT flagged"}); recolour at step '
          f'{s["events"].get("recolour")}: score {fmt(s["recolour_score"])}; teleport / recolour '
          f'{fmt(s["teleport_over_recolour"])}')
    print(f'wrote {png} and {args.out / "demo.json"}')
    return 0


def _plot(special: EpisodeTrace, normal: list[EpisodeTrace], threshold: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    for t in normal:
        if t.scores:
            steps, scores, _ = zip(*t.scores, strict=True)
            ax.plot(steps, scores, color='0.75', lw=1)
    if special.scores:
        steps, scores, flags = zip(*special.scores, strict=True)
        ax.plot(steps, scores, color='tab:blue', lw=1.8, label='surprise episode')
        flagged = [(st, sc) for st, sc, f in special.scores if f]
        if flagged:
            ax.scatter(*zip(*flagged, strict=True), color='tab:red', zorder=3, s=18, label='flagged')
    colours = {'teleport': 'tab:red', 'recolour': 'tab:orange'}
    for kind, step in special.events.items():
        ax.axvline(step, color=colours.get(kind, 'k'), ls='--', lw=1.2, label=f'{kind} (step {step})')
    if threshold is not None:
        ax.axhline(threshold, color='k', ls=':', lw=1, label='calibrated threshold')
    ax.set_yscale('log')
    ax.set_xlabel('env step')
    ax.set_ylabel('surprise  ||ẑ − z||² / D')
    ax.set_title('LeWM surprise over a sim-in-the-loop episode (grey: normal episodes)')
    ax.legend(fontsize=8, loc='upper left')
    save_figure(fig, path)
