"""``lewm eval``: closed-loop goal-reaching success of the latent planner on a MuJoCo task.

Protocol (the paper's): each episode starts from a state of an expert episode; the goal is the
state the expert reached 25 env steps later, shown to the planner as an image; the planner has a
budget of 50 env steps and the episode counts as a success if the task's success test holds at
any step. Starts come from the task's scripted expert (seeded: episode i always gets the same
start and goal) or from the ``state`` column of an episode file (``--data``).

``--envs`` environments run in lockstep and are planned in one batched call per re-plan.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.reports import save_figure, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm eval``."""
    parser.add_argument('--checkpoint', required=True, help='checkpoint directory')
    parser.add_argument('--env', default=None, help="task id (default: the checkpoint's env_id)")
    parser.add_argument('--episodes', type=int, default=50, help='evaluation episodes (default: 50)')
    parser.add_argument('--envs', type=int, default=10, help='environments planned together (default: 10)')
    parser.add_argument('--budget', type=int, default=50, help='env steps per episode (default: 50)')
    parser.add_argument(
        '--goal-ahead', type=int, default=25, help='goal = expert state N steps later (default: 25)'
    )
    parser.add_argument('--data', default=None, help="episode file with a 'state' column to take starts from")
    add_planner_arguments(parser)
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--seed', type=int, default=0, help='seed of starts, goals and planner (default: 0)')
    parser.add_argument('--json', dest='json_out', default=None, help='write the results to this JSON file')
    parser.add_argument('--plot', default=None, help='write a PNG (success + plan-time histogram)')
    parser.add_argument(
        '--compare', nargs='+', default=None, metavar='NAME',
        help='play the same episodes with each of these planner candidates (names of `lewm tune`, e.g. '
        'recommended controller hybrid; each with its own settings, the planner flags are not applied) '
        'and print them side by side, plan time as a ratio to the first',
    )  # fmt: skip
    parser.epilog = (
        "Planner settings: the checkpoint's (written by `lewm tune`), else our recommended ones; "
        '--planner-preset and single flags override them. `lewm info CKPT` shows which are stored.'
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96); good at 0 % and 100 % too."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clipped to contain p: at 0 % or 100 % rounding would otherwise leave p a hair outside
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def add_planner_arguments(parser: argparse.ArgumentParser) -> None:
    """The planner flags shared by the commands that plan; unset flags leave the checkpoint's settings."""
    from lewm_ros.planning.settings import PRESETS

    parser.add_argument(
        '--planner-preset', choices=sorted(PRESETS), default=None,
        help="named planner settings instead of the checkpoint's: paper = the reference CEM "
        '(300 x 30, final goal cost, euclidean), recommended = our defaults',
    )  # fmt: skip
    parser.add_argument(
        '--planner-config', default=None, help="YAML with planner settings (a 'planner:' section)"
    )
    parser.add_argument('--solver', choices=('cem', 'icem', 'mppi', 'controller'), default=None,
                        help="override the solver (controller: the checkpoint's, no search)")
    parser.add_argument('--proposal', choices=('none', 'controller'), default=None,
                        help="controller: the solver starts from the checkpoint's controller (the hybrid)")
    parser.add_argument('--controller-ahead', type=int, default=None,
                        help='blocks to the goal the controller is told (default: 1)')
    parser.add_argument('--samples', type=int, default=None, help='override candidates per iteration')
    parser.add_argument('--iters', type=int, default=None, help='override solver iterations')
    parser.add_argument('--elites', type=int, default=None, help='override CEM elites')
    parser.add_argument('--horizon', type=int, default=None, help='override the horizon (blocks)')
    parser.add_argument(
        '--replan-every', type=int, default=None,
        help='re-plan after this many action blocks (receding horizon)',
    )  # fmt: skip
    parser.add_argument(
        '--goal-cost', choices=('final', 'mean'), default=None,
        help="distance to the goal of the final prediction (the paper's) or its mean over the blocks",
    )  # fmt: skip
    parser.add_argument(
        '--goal-metric', choices=('euclidean', 'whitened'), default=None,
        help="plain distance to the goal (the paper's), or whitened with what `lewm calibrate` stored",
    )  # fmt: skip
    parser.add_argument(
        '--icem-white-fraction', type=float, default=None,
        help="iCEM: share of samples with white instead of coloured noise (0 = the paper's iCEM)",
    )  # fmt: skip
    parser.add_argument(
        '--dtype',
        choices=('auto', 'float32', 'bfloat16'),
        default=None,
        help='rollout precision (default: auto)',
    )
    parser.add_argument(
        '--threads', type=int, default=None, help='CPU threads (default: the planner chooses by model size)'
    )


# flag (argparse dest) -> PlannerConfig field
PLANNER_FLAGS = (
    ('solver', 'solver'), ('proposal', 'proposal'), ('controller_ahead', 'controller_ahead'),
    ('samples', 'samples'), ('iters', 'iterations'), ('elites', 'elites'),
    ('horizon', 'horizon'), ('replan_every', 'receding_horizon'), ('dtype', 'dtype'),
    ('threads', 'threads'), ('icem_white_fraction', 'icem_white_fraction'), ('goal_cost', 'goal_cost'),
    ('goal_metric', 'goal_metric'),
)


def planner_settings_from_args(args: argparse.Namespace, meta: dict[str, Any], device: str) -> Any:
    """ResolvedSettings: defaults < the checkpoint's < ``--planner-preset`` < ``--planner-config`` < flags.

    Raises ``PlannerSettingsError`` (a ValueError) naming the setting that is wrong.
    """
    import yaml

    from lewm_ros.planning import settings

    values: dict[str, Any] = {}
    if getattr(args, 'planner_config', None):
        loaded = yaml.safe_load(Path(args.planner_config).read_text(encoding='utf-8')) or {}
        values.update(loaded.get('planner', loaded) if isinstance(loaded, dict) else {})
    for flag, key in PLANNER_FLAGS:
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    values['device'] = device
    values.setdefault('seed', getattr(args, 'seed', 0))
    return settings.resolve(meta, getattr(args, 'planner_preset', None), values, explicit_source='flag')


class StartSource:
    """Start and goal states: from the task's expert (default) or from an episode file's states."""

    def __init__(self, env: Any, seed: int, goal_ahead: int, data: str | None) -> None:
        self.env, self.seed, self.goal_ahead = env, seed, goal_ahead
        self.states: list[Any] = []
        if data:
            from training.data.episodes import EpisodeFile

            with EpisodeFile(data) as f:
                if not f.has('state'):
                    raise SystemExit(f"{data} has no 'state' column; collect it without --no-state")
                for i in range(f.num_episodes):
                    episode = f.episode(i)['state']
                    if len(episode) > goal_ahead:
                        self.states.append(episode)
            if not self.states:
                raise SystemExit(f'{data} has no episode longer than --goal-ahead {goal_ahead} steps')

    def __call__(self, index: int) -> tuple[Any, Any]:
        """(start, goal) of evaluation episode ``index``; the same for a given seed and index."""
        import numpy as np

        from lewm_ros.sim.eval_protocol import expert_start_and_goal

        rng = np.random.default_rng([self.seed, index])
        if not self.states:
            return expert_start_and_goal(self.env, rng, goal_ahead=self.goal_ahead)
        episode = self.states[index % len(self.states)]
        t0 = int(rng.integers(0, len(episode) - self.goal_ahead))
        return episode[t0], episode[t0 + self.goal_ahead]


def run_batch(
    planner: Any, envs: list[Any], starts: list[tuple[Any, Any]], budget: int, record: bool = False,
    stop_at_success: bool = True,
) -> tuple[list, list, list, list]:
    """One lockstep batch of episodes; returns (success, plan-call timings, end state per env, recordings).

    An env stops at its first success, so its end state is where it succeeded (unless
    ``stop_at_success`` is false: then the planner keeps acting, as a node does). With ``record``,
    recordings holds (frames (T + 1, H, W, 3), actions (T, A)) per env, else it is empty.
    """
    import numpy as np

    from lewm_ros.planning import BlockHistory

    cfg, fs, A = planner.config, planner.frameskip, planner.action_dim
    histories, goals = [], []
    frames_seen: dict[int, list[Any]] = {}
    actions_done: dict[int, list[Any]] = {i: [] for i in range(len(envs))}
    for env, (start, goal) in zip(envs, starts, strict=True):
        obs, _ = env.reset(options={'state': start, 'goal_state': goal})
        history = BlockHistory(planner.history, fs, A)
        history.reset(obs)
        histories.append(history)
        if record:
            frames_seen[len(histories) - 1] = [obs]
        goals.append(env.goal_image())
    goal_z = planner.encode_goal(np.stack(goals))
    planner.reset()
    success = [False] * len(envs)
    queue: dict[int, list[Any]] = {}
    timings = []
    steps = 0
    while steps < budget:
        active = [i for i in range(len(envs)) if not (success[i] and stop_at_success)]
        if not active:
            break
        if any(not queue.get(i) for i in active):
            # all active envs are at a block boundary together: one batched plan
            frames = np.stack([histories[i].frames() for i in active])
            actions = np.stack([histories[i].actions() for i in active]) if frames.shape[1] > 1 else None
            result = planner.plan(frames, actions, goal_z[active], env_ids=active)
            timings.append({**result.timing, 'envs': len(active)})
            blocks = result.sequence[:, : cfg.receding_horizon].float().cpu().numpy()
            for row, i in enumerate(active):
                queue[i] = list(blocks[row])
        for i in active:
            block = queue[i].pop(0)
            for action in block[: budget - steps]:
                obs, _, _, _, info = envs[i].step(action)
                histories[i].step(action, obs)
                if record:
                    frames_seen[i].append(obs)
                    actions_done[i].append(np.asarray(action, np.float32))
                if info['is_success'] and not success[i]:
                    success[i] = True
                    if stop_at_success:  # the end state recorded is where it succeeded
                        break
        steps += min(fs, budget - steps)
    recordings = [(np.stack(frames_seen[i]), np.stack(actions_done[i]) if actions_done[i] else
                   np.zeros((0, A), np.float32)) for i in range(len(envs))] if record else []
    return success, timings, [env.get_state() for env in envs], recordings


def plot_results(path: str, summary: dict[str, Any], plan_ms: list[float]) -> None:
    """Success rate with its 95 % interval, and the distribution of plan times."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={'width_ratios': [1, 2]})
    rate, (lo, hi) = summary['success_rate'], summary['success_ci95']
    ax1.bar([0], [100 * rate], color='tab:green', yerr=[[100 * (rate - lo)], [100 * (hi - rate)]], capsize=8)
    ax1.set_xticks([0], [summary['env_id'].split('/')[-1]])
    ax1.set_ylim(0, 100)
    ax1.set_ylabel('success (%)')
    ax1.set_title(f'{100 * rate:.0f} % of {summary["episodes"]} (95 % CI)')
    ax2.hist(plan_ms, bins=30, color='tab:blue')
    ax2.axvline(summary['plan_ms_median'], color='k', linestyle='--', label='median')
    ax2.set_xlabel('ms per plan call (all envs of a batch)')
    ax2.set_ylabel('plan calls')
    ax2.legend()
    save_figure(fig, path)


@dataclass
class EpisodeResults:
    """What a run of closed-loop episodes gave: success per episode, plan timings, where each ended."""

    successes: list[bool]
    timings: list[dict[str, float]]
    episode_states: list[dict[str, list[float]]]
    recordings: list[tuple[Any, Any]] = field(default_factory=list)  # (frames, actions) per episode

    def summary(self) -> dict[str, Any]:
        """Success with its 95 % interval and plan-time figures, as the JSON reports hold them."""
        import numpy as np

        plan_ms = [t['total_ms'] for t in self.timings]
        per_env_ms = [t['total_ms'] / t['envs'] for t in self.timings]
        k, n = int(sum(self.successes)), len(self.successes)
        lo, hi = wilson_interval(k, n)
        return {
            'episodes': n, 'successes': k, 'success_rate': k / max(1, n), 'success_ci95': [lo, hi],
            'plan_calls': len(plan_ms),
            'plan_ms_median': float(np.median(plan_ms)) if plan_ms else None,
            'plan_ms_p90': float(np.percentile(plan_ms, 90)) if plan_ms else None,
            'plan_ms_per_env_median': float(np.median(per_env_ms)) if plan_ms else None,
        }


def run_episodes(
    planner: Any, env_id: str, episodes: int, n_envs: int, seed: int, budget: int = 50, goal_ahead: int = 25,
    data: str | None = None, record: bool = False, desc: str | None = None, stop_at_success: bool = True,
) -> EpisodeResults:
    """Play ``episodes`` evaluation episodes with ``planner``, ``n_envs`` at a time (the module's protocol).

    ``record`` keeps every episode's frames (T + 1, H, W, 3) and executed actions (T, A), e.g. to
    calibrate the surprise threshold on the frames the planner produces; ``stop_at_success``
    false plays the whole budget (the planner holding at its goal, as on a robot).
    """
    import numpy as np
    from tqdm import tqdm

    from lewm_ros.sim import make_env

    n_envs = min(n_envs, episodes)
    envs = [make_env(env_id, img_size=planner.model.config.image_size) for _ in range(n_envs)]
    if envs[0].frameskip != planner.frameskip:
        print(f'note: {env_id} records with frameskip {envs[0].frameskip}; '
              f'the model plans blocks of {planner.frameskip} steps')
    starts = StartSource(envs[0], seed, goal_ahead, data)
    results = EpisodeResults([], [], [])
    try:
        with tqdm(total=episodes, desc=desc or f'eval {env_id}', unit='episode') as bar:
            for first in range(0, episodes, n_envs):
                batch = list(range(first, min(first + n_envs, episodes)))
                batch_starts = [starts(i) for i in batch]
                ok, t, ends, recorded = run_batch(planner, envs[: len(batch)], batch_starts, budget, record,
                                                  stop_at_success)
                results.successes.extend(ok)
                results.timings.extend(t)
                results.recordings.extend(recorded)
                results.episode_states.extend(
                    {'start': np.asarray(start).tolist(), 'goal': np.asarray(goal).tolist(),
                     'end': end.tolist()}
                    for (start, goal), end in zip(batch_starts, ends, strict=True)
                )
                bar.update(len(batch))
                bar.set_postfix(success=f'{np.mean(results.successes):.0%}')
    finally:
        for env in envs:
            env.close()
    return results


def run(args: argparse.Namespace) -> int:
    """Evaluate and print/write the results."""
    import numpy as np

    from lewm_ros.checkpoint import read_metadata
    from lewm_ros.device import resolve_device
    from lewm_ros.planning import LatentPlanner
    from lewm_ros.sim import ENV_IDS

    if args.episodes < 1 or args.envs < 1 or args.budget < 1:
        raise SystemExit('--episodes, --envs and --budget must be at least 1')
    meta = read_metadata(args.checkpoint)
    env_id = args.env or meta.get('env_id')
    if env_id not in ENV_IDS:
        raise SystemExit(
            f'--env must be one of {", ".join(ENV_IDS)} (the checkpoint says {meta.get("env_id")!r})'
        )
    device = resolve_device(args.device)
    if args.compare:
        return compare(args, env_id, str(device))
    try:
        resolved = planner_settings_from_args(args, meta, str(device))
        config = resolved.config
        planner = LatentPlanner.from_checkpoint(args.checkpoint, config)
    except ValueError as err:  # a bad planner setting, or one this checkpoint cannot serve
        raise SystemExit(f'lewm eval: {err}') from err
    print(f'planner: {resolved.describe()}')
    results = run_episodes(planner, env_id, args.episodes, args.envs, args.seed, args.budget, args.goal_ahead,
                           args.data)
    timings = results.timings
    plan_ms = [t['total_ms'] for t in timings]
    figures = results.summary()
    k, n, (lo, hi) = figures['successes'], figures['episodes'], figures['success_ci95']
    summary = {
        'env_id': env_id,
        'checkpoint': str(args.checkpoint),
        **figures,
        'success_per_episode': [bool(s) for s in results.successes],
        'episode_states': results.episode_states,
        'plan_breakdown_ms_median': {
            key: float(np.median([t[key] for t in timings]))
            for key in ('encode_ms', 'rollout_ms', 'solver_ms')
        }
        if timings
        else None,
        'envs_per_batch': min(args.envs, args.episodes),
        'budget_steps': args.budget,
        'goal_ahead_steps': args.goal_ahead,
        'starts': 'data' if args.data else 'expert',
        'seed': args.seed,
        'device': str(device),
        'planner': config.to_dict(),
        'planner_sources': resolved.sources,
        'rollout_dtype': str(planner.rollout_dtype).replace('torch.', ''),
    }
    print(
        f'{env_id}: success {100 * k / n:.1f} % ({k}/{n}, 95 % CI {100 * lo:.1f}-{100 * hi:.1f} %); '
        f'plan {summary["plan_ms_median"]:.0f} ms median, {summary["plan_ms_p90"]:.0f} ms p90 per call '
        f'of up to {summary["envs_per_batch"]} envs ({summary["plan_ms_per_env_median"]:.0f} ms per env)'
    )
    if args.json_out:
        write_json(args.json_out, summary)
    if args.plot:
        plot_results(args.plot, summary, plan_ms)
    return 0


def compare(args: argparse.Namespace, env_id: str, device: str) -> int:
    """``--compare``: every candidate on the same episodes and seeds, one table, ratios from this one run."""
    import numpy as np

    from training.evaluation.tune import GRID, candidate_planners

    unknown = [name for name in args.compare if name not in GRID]
    if unknown:
        raise SystemExit(f'--compare: unknown candidate(s) {unknown}; known: {list(GRID)}')
    rows = []
    for name, config, planner in candidate_planners(args.checkpoint, args.compare, device, args.seed):
        results = run_episodes(planner, env_id, args.episodes, args.envs, args.seed, args.budget,
                               args.goal_ahead, args.data, desc=name)
        search = [(t['total_ms'] - t['encode_ms']) / t['envs'] for t in results.timings]
        rows.append({'name': name, 'planner': config.to_dict(), **results.summary(),
                     'search_ms_per_env_median': float(np.median(search)),
                     'success_per_episode': [bool(s) for s in results.successes]})
    base, base_search = rows[0]['plan_ms_per_env_median'], rows[0]['search_ms_per_env_median']
    print(f'{env_id}, {args.episodes} episodes, seed {args.seed}, {args.envs} envs per batch, on {device}; '
          'ms per env and plan (median), all of it and without encoding the frames, and as a ratio to the '
          'first candidate:')
    print(f"  {'candidate':<18} {'success':>22} {'plan ms':>9} {'ratio':>8} {'search ms':>10} {'ratio':>8}")
    for row in rows:
        lo, hi = row['success_ci95']
        ms, search = row['plan_ms_per_env_median'], row['search_ms_per_env_median']
        print(f"  {row['name']:<18} {100 * row['success_rate']:5.1f} % ({100 * lo:4.1f}-{100 * hi:5.1f} %) "
              f'{ms:9.1f} {ms / base:8.3f} {search:10.2f} {search / base_search:8.4f}')
    if args.json_out:
        write_json(args.json_out, {'env_id': env_id, 'checkpoint': str(args.checkpoint), 'seed': args.seed,
                                   'episodes': args.episodes, 'envs_per_batch': min(args.envs, args.episodes),
                                   'budget_steps': args.budget, 'device': device, 'candidates': rows})
    if args.plot:
        plot_comparison(args.plot, env_id, rows)
    return 0


def plot_comparison(path: str, env_id: str, rows: list[dict[str, Any]]) -> None:
    """Success (95 % interval) and plan time per candidate, side by side."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [row['name'] for row in rows]
    rate = [100 * row['success_rate'] for row in rows]
    err = [[100 * row['success_rate'] - 100 * row['success_ci95'][0] for row in rows],
           [100 * row['success_ci95'][1] - 100 * row['success_rate'] for row in rows]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.bar(names, rate, yerr=err, capsize=6, color='tab:green')
    ax1.set_ylim(0, 100)
    ax1.set_ylabel('success (%)')
    ax1.set_title(f'{env_id.split("/")[-1]}: {rows[0]["episodes"]} episodes each')
    ax2.bar(names, [row['plan_ms_per_env_median'] for row in rows], color='tab:blue')
    ax2.set_yscale('log')
    ax2.set_ylabel('ms per env and plan (median)')
    for ax in (ax1, ax2):
        ax.tick_params(axis='x', rotation=20)
    save_figure(fig, path)
