"""``lewm diagnose``: why closed-loop episodes fail, the search or the world model.

For each evaluation episode (the starts and goals of ``lewm eval --seed S``) it scores under the
model two action sequences from the start: the expert's own (the 25 steps that led to the goal) and
the plan the planner makes at the first decision. Each is scored twice: by the planner's objective,
and by where the model says it ends (the last predicted embedding's distance to the goal's). A
failed episode is then
- a model failure when the model says the planner's plan ends at least as near the goal as the
  expert's sequence, which truly reaches it: only a better model (data, resolution, training) helps;
- a search failure when the model ranks the expert's sequence better by both scores: the search
  missed it, and more samples or iterations can help;
- an objective failure otherwise: the expert's sequence ends nearer, but the planner's objective
  (e.g. the mean distance over the horizon) preferred the plan it found.
It also replays the expert's sequence open loop from the start: it must reach the goal, which shows
the protocol's goals are reachable within the step budget.

    lewm eval --checkpoint C --seed 0 --episodes 50 --json eval.json
    lewm diagnose --checkpoint C --seed 0 --episodes 50 --eval-json eval.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from training.evaluation.evaluate import add_planner_arguments, planner_settings_from_args
from training.reports import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm diagnose``."""
    parser.add_argument('--checkpoint', required=True, help='checkpoint directory')
    parser.add_argument('--episodes', type=int, default=50, help='episodes (default: 50)')
    parser.add_argument('--seed', type=int, default=0, help="seed of the episodes, as `lewm eval --seed`'s")
    parser.add_argument('--envs', type=int, default=10, help='episodes planned together (default: 10)')
    parser.add_argument('--eval-json', nargs='+', default=[], metavar='FILE',
                        help='`lewm eval --json` results of the same seed: split their failures into search '
                        'and model failures')
    add_planner_arguments(parser)
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--json', dest='json_out', default=None, help='write the figures to this JSON file')


def expert_episode(env: Any, seed: int, index: int) -> tuple[Any, Any, Any]:
    """(start, goal, the expert's actions from start to goal) of evaluation episode ``index``."""
    import numpy as np

    from lewm_ros.sim.eval_protocol import expert_start_and_goal

    actions: list[Any] = []
    start, goal = expert_start_and_goal(env, np.random.default_rng([seed, index]), actions=actions)
    return start, goal, np.stack(actions)


def replay_reaches(env: Any, start: Any, goal: Any, actions: Any) -> tuple[bool, Any, Any]:
    """Whether the actions, played open loop from ``start``, reach ``goal``; the start's and goal's frames."""
    first, _ = env.reset(options={'state': start, 'goal_state': goal})
    goal_image = env.goal_image()
    for action in actions:
        _, _, _, _, info = env.step(action)
        if info['is_success']:
            return True, first, goal_image
    return False, first, goal_image


def as_plan(actions: Any, horizon: int, frameskip: int) -> Any:
    """Env actions (T, A) cut or padded with zeros (no motion) to a plan (horizon, frameskip, A)."""
    import numpy as np

    steps = horizon * frameskip
    out = np.zeros((steps, actions.shape[1]), np.float32)
    out[: min(steps, len(actions))] = actions[:steps]
    return out.reshape(horizon, frameskip, -1)


def diagnose(
    planner: Any, ends: Any, env: Any, episodes: int, seed: int, n_envs: int
) -> list[dict[str, Any]]:
    """One row per episode: replay reached; expert's and planner's costs by the objective and by ``ends``.

    ``ends`` is a planner on the same model that scores a plan by its last embedding alone.
    """
    import numpy as np
    from tqdm import tqdm

    cfg = planner.config
    rows: list[dict[str, Any]] = []
    for first in tqdm(range(0, episodes, n_envs), desc='diagnose', unit='batch'):
        batch = range(first, min(first + n_envs, episodes))
        frames, goals, plans, reached, states = [], [], [], [], []
        for index in batch:
            start, goal, actions = expert_episode(env, seed, index)
            ok, obs, goal_image = replay_reaches(env, start, goal, actions)
            frames.append(obs[None])
            goals.append(goal_image)
            plans.append(as_plan(actions, cfg.horizon, planner.frameskip))
            reached.append(ok)
            states.append(np.asarray(start).tolist())
        frames, goals = np.stack(frames), np.stack(goals)
        planner.reset()
        result = planner.plan(frames, None, goals)
        candidates = np.stack([np.stack(plans), result.sequence.float().cpu().numpy()], axis=1)
        costs = planner.score(frames, None, goals, candidates).float().cpu().numpy()
        final = ends.score(frames, None, goals, candidates).float().cpu().numpy()
        for row, index in enumerate(batch):
            rows.append({'episode': index, 'start': states[row], 'replay_reaches_goal': reached[row],
                         'expert_cost': float(costs[row, 0]), 'planner_cost': float(costs[row, 1]),
                         'expert_end': float(final[row, 0]), 'planner_end': float(final[row, 1])})
    return rows


def summarise(rows: list[dict[str, Any]], successes: list[bool] | None) -> dict[str, Any]:
    """The fractions the docs report: replay reaches, expert cheaper, and failures split by cause."""
    import numpy as np

    n = len(rows)
    cheaper = [r['expert_cost'] < r['planner_cost'] for r in rows]
    nearer = [r['expert_end'] < r['planner_end'] for r in rows]
    out: dict[str, Any] = {
        'episodes': n,
        'replay_reaches_goal': sum(r['replay_reaches_goal'] for r in rows) / n,
        'expert_cheaper': sum(cheaper) / n,
        'expert_ends_nearer': sum(nearer) / n,
        **{f'{key}_median': float(np.median([r[key] for r in rows]))
           for key in ('expert_cost', 'planner_cost', 'expert_end', 'planner_end')},
    }
    if successes is not None:
        failed = [i for i, ok in enumerate(successes[:n]) if not ok]
        model = sum(not nearer[i] for i in failed)
        search = sum(nearer[i] and cheaper[i] for i in failed)
        out.update({'failures': len(failed), 'model_failures': model, 'search_failures': search,
                    'objective_failures': len(failed) - model - search})
    return out


def _successes(paths: list[str], rows: list[dict[str, Any]]) -> list[bool] | None:
    """Success per episode from ``lewm eval --json`` files, checked to hold the same episodes."""
    import numpy as np

    if not paths:
        return None
    successes: list[bool] = []
    starts: list[Any] = []
    for path in paths:
        with open(path, encoding='utf-8') as f:
            result = json.load(f)
        successes += result['success_per_episode']
        starts += [e['start'] for e in result['episode_states']]
    pairs = zip(rows, starts, strict=False)
    same = len(starts) >= len(rows) and all(np.allclose(r['start'], s) for r, s in pairs)
    if not same:
        raise SystemExit('lewm diagnose: --eval-json holds other episodes (give the same --seed and at least '
                         '--episodes episodes)')
    return successes


def run(args: argparse.Namespace) -> int:
    """Diagnose ``--episodes`` episodes and print the split."""
    from lewm_ros.checkpoint import read_metadata
    from lewm_ros.device import resolve_device
    from lewm_ros.planning import LatentPlanner
    from lewm_ros.sim import make_env

    meta = read_metadata(args.checkpoint)
    device = resolve_device(args.device)
    resolved = planner_settings_from_args(args, meta, str(device))
    planner = LatentPlanner.from_checkpoint(args.checkpoint, resolved.config)
    last_only = replace(resolved.config, goal_cost='final', solver='icem', proposal='none')
    ends = LatentPlanner(planner.model, last_only, planner.action_low.cpu(), planner.action_high.cpu(),
                         planner.metric)
    env = make_env(meta['env_id'], img_size=planner.model.config.image_size)
    try:
        rows = diagnose(planner, ends, env, args.episodes, args.seed, args.envs)
    finally:
        env.close()
    summary = summarise(rows, _successes(args.eval_json, rows))
    print(f"{meta['env_id']}, {summary['episodes']} episodes (seed {args.seed})")
    print("  the expert's sequence, replayed open loop, reaches the goal in "
          f"{100 * summary['replay_reaches_goal']:.0f} %")
    print(f"  by the planner's objective it costs less than the planner's first plan in "
          f"{100 * summary['expert_cheaper']:.0f} % (median {summary['expert_cost_median']:.3g} vs "
          f"{summary['planner_cost_median']:.3g})")
    print(f"  the model says it ends nearer the goal in {100 * summary['expert_ends_nearer']:.0f} % "
          f"(median {summary['expert_end_median']:.3g} vs {summary['planner_end_median']:.3g})")
    if 'failures' in summary:
        print(f"  of {summary['failures']} failed episodes: {summary['model_failures']} model failures, "
              f"{summary['search_failures']} search failures, "
              f"{summary['objective_failures']} objective failures")
    if args.json_out:
        write_json(args.json_out, {'env_id': meta['env_id'], 'checkpoint': str(args.checkpoint),
                                   'seed': args.seed, **summary, 'planner': resolved.config.to_dict(),
                                   'per_episode': rows})
    return 0
