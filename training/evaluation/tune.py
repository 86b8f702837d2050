"""``lewm tune``: find the planner settings that plan best for a checkpoint, and store them in it.

Each candidate of a small grid plays the same held-out episodes (``lewm eval``'s protocol, with a
seed apart from the evaluation seeds); the one with the highest success wins, the cheaper one
(sequences scored per plan) on a tie. Checkpoints with a controller also try it, alone and as
the hybrid's proposal. The winner goes into ``meta['planner']`` with the success it
measured and the whole grid, and from then on the planner node, ``lewm eval``, ``lewm demo`` and
``lewm bench plan --checkpoint`` use it unless told otherwise.

``--store KEY=VALUE`` stores settings without measuring: for a robot's checkpoint, which has no
simulator to try candidates in.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

# name -> settings over the recommended ones (lewm_ros/planning/settings.py)
GRID: dict[str, dict[str, Any]] = {
    'paper': {'preset': 'paper'},
    'recommended': {},
    'recommended-600': {'samples': 600},
    'recommended-cem': {'solver': 'cem', 'icem_white_fraction': 0.0},
    # the last predicted embedding alone: where the way to the goal leaves it first (a cube lifted
    # off the table), the mean over the horizon prefers plans that stay near and never get there
    'recommended-final': {'goal_cost': 'final'},
    # with the checkpoint's controller (`lewm train-controller`); tried only where there is one
    'controller': {'preset': 'controller'},
    'controller-ahead3': {'preset': 'controller', 'controller_ahead': 3},
    'hybrid': {'preset': 'hybrid'},
    'hybrid-wide': {'preset': 'hybrid', 'samples': 300, 'iterations': 6, 'elites': 30, 'init_std': 1.0},
}
CONTROLLER_CANDIDATES = ('controller', 'controller-ahead3', 'hybrid', 'hybrid-wide')


def candidate_config(name: str, meta: dict[str, Any], machine: dict[str, Any]) -> Any:
    """The PlannerConfig of grid candidate ``name``, over our defaults (not over settings stored earlier)."""
    from lewm_ros.planning import settings

    changes = dict(GRID[name])
    preset = changes.pop('preset', None)
    return settings.resolve({**meta, 'planner': None}, preset, {**changes, **machine}).config


def candidate_planners(checkpoint: str, names: list[str], device: Any,
                       seed: int) -> list[tuple[str, Any, Any]]:
    """(name, PlannerConfig, LatentPlanner) of each candidate on the checkpoint's model, loaded once.

    The controller is loaded (once) only if a candidate plans with it.
    """
    from lewm_ros.checkpoint import load_checkpoint, load_controller
    from lewm_ros.planning import LatentPlanner
    from lewm_ros.planning.goal_metric import goal_metric_from_meta
    from lewm_ros.planning.planner import needs_controller

    model, meta = load_checkpoint(checkpoint, device)
    metric = goal_metric_from_meta(meta, model.config.embed_dim)
    configs = {name: candidate_config(name, meta, {'device': str(device), 'seed': seed}) for name in names}
    needed = any(needs_controller(config) for config in configs.values())
    controller = load_controller(checkpoint, meta, device) if needed else None
    bounds = (meta.get('action_low'), meta.get('action_high'))
    return [(name, config, LatentPlanner(model, config, *bounds, metric, controller))
            for name, config in configs.items()]


def default_candidates(meta: dict[str, Any]) -> list[str]:
    """The grid tried without ``--candidates``: the controller ones only where there is a controller."""
    return [name for name in GRID if name not in CONTROLLER_CANDIDATES or meta.get('controller')]


def plan_work(config: Any) -> int:
    """Candidate sequences scored per plan: what a tie is broken on."""
    if config.solver == 'controller':
        return 1
    return config.samples * config.iterations + (1 if config.proposal == 'controller' else 0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm tune``."""
    parser.add_argument('--checkpoint', required=True, help='checkpoint directory (updated in place)')
    parser.add_argument('--episodes', type=int, default=30, help='episodes per candidate (default: 30)')
    parser.add_argument('--envs', type=int, default=10, help='environments planned together (default: 10)')
    parser.add_argument('--seed', type=int, default=1000,
                        help='seed of the tuning episodes (default: 1000, apart from the eval seeds 0-2)')
    parser.add_argument('--candidates', nargs='+', default=None, choices=list(GRID), metavar='NAME',
                        help=f'candidates to try (default: all of {list(GRID)}; the controller ones only '
                        'when the checkpoint has a controller)')
    parser.add_argument('--store', nargs='+', default=None, metavar='KEY=VALUE',
                        help='store these settings without measuring (e.g. samples=200 goal_cost=mean)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--dry-run', action='store_true', help='print the result, do not write it')
    parser.add_argument('--json', dest='json_out', default=None,
                        help='write the grid and the winner to this file')


def parse_store(items: list[str]) -> dict[str, Any]:
    """``['samples=200', 'goal_cost=mean']`` -> ``{'samples': 200, 'goal_cost': 'mean'}`` (values as YAML)."""
    import yaml

    values = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise SystemExit(f'--store takes KEY=VALUE, got {item!r}')
        values[key.strip()] = yaml.safe_load(value)
    return values


def run(args: argparse.Namespace) -> int:
    """Measure the grid (or take ``--store``), pick the winner, write it to the checkpoint."""
    from lewm_ros.checkpoint import read_metadata, update_metadata
    from lewm_ros.planning import settings
    from lewm_ros.planning.planner import needs_controller
    from training.reports import write_json

    meta = read_metadata(args.checkpoint)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    if args.store is not None:
        values = parse_store(args.store)
        unknown = sorted(set(values) - set(settings.STORED_KEYS))
        if unknown:
            raise SystemExit(f'--store: unknown setting(s) {unknown}; known: {list(settings.STORED_KEYS)}')
        config = settings.resolve(meta, explicit=values, explicit_source='--store').config
        if needs_controller(config) and not meta.get('controller'):
            raise SystemExit(f'--store: solver {config.solver} / proposal {config.proposal} need a '
                             'controller, and this checkpoint has none: run `lewm train-controller` first')
        block = settings.settings_block(config, 'lewm tune --store (not measured)', written=stamp)
        result = {'winner': block}
    else:
        result = tune(args, meta)
        block = settings.settings_block(result['config'], 'lewm tune', result['measured'],
                                        candidates=result['candidates'], written=stamp)
        result = {'winner': block, 'candidates': result['candidates']}
    settings.stored_settings({'planner': block})  # what we write must read back
    if not args.dry_run:
        update_metadata(args.checkpoint, 'planner', block)
    where = 'not written (dry run)' if args.dry_run else f'written to {args.checkpoint}'
    print(f"planner settings {block['settings']}; {where}")
    if args.json_out:
        write_json(args.json_out, result)
    return 0


def tune(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """Play ``args.episodes`` episodes with every candidate; returns the winner and the grid."""
    from lewm_ros.device import resolve_device
    from lewm_ros.planning import settings
    from training.evaluation.evaluate import run_episodes

    env_id = meta.get('env_id')
    if not str(env_id).startswith('lewm/'):
        raise SystemExit(f'the checkpoint was trained on {env_id!r}, not one of our MuJoCo tasks: there is '
                         'nothing to try candidates in; store settings with --store KEY=VALUE')
    names = args.candidates or default_candidates(meta)
    candidates, best = [], None
    for name, config, planner in candidate_planners(args.checkpoint, names, resolve_device(args.device),
                                                    args.seed):
        figures = run_episodes(planner, env_id, args.episodes, args.envs, args.seed,
                               desc=f'tune: {name}').summary()
        row = {'name': name, 'settings': {k: getattr(config, k) for k in settings.STORED_KEYS},
               **{k: figures[k] for k in ('episodes', 'successes', 'success_rate', 'success_ci95',
                                           'plan_ms_per_env_median')}}
        candidates.append(row)
        print(f'{name}: {figures["successes"]}/{figures["episodes"]} '
              f'({100 * figures["success_rate"]:.0f} %), {figures["plan_ms_per_env_median"]:.0f} ms per env '
              'and plan', flush=True)
        cost = plan_work(config)
        if best is None or (row['successes'], -cost) > (best[0]['successes'], -best[2]):
            best = (row, config, cost)
    row, config, _ = best
    measured = {k: row[k] for k in ('episodes', 'successes', 'success_rate', 'success_ci95')}
    measured.update(env_id=env_id, seed=args.seed, budget_steps=50, goal_ahead_steps=25,
                    candidate=row['name'])
    return {'config': config, 'measured': measured, 'candidates': candidates}
