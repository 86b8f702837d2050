"""The suite's results table: success per task against the paper, with intervals, commands and stage times.

Built from what the suite left in its output folder (each task's ``recipe.json``, stage stamps and
``eval/seed*.json``), so a table always says what was measured, by which command, on how many episodes.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from training.reports import save_figure, write_json
from training.suite.recipe import TASKS, TaskPaths
from training.suite.runner import read_json

LABELS = {'tworoom': 'TwoRoom', 'reacher': 'Reacher', 'pusht': 'Push-T', 'cube': 'Cube'}
STAGE_COLUMNS = ('collect', 'collect-calibration', 'train', 'probe', 'calibrate-metric', 'train-controller',
                 'tune', 'calibrate-surprise', 'eval', 'diagnose')
DIAGNOSIS_COUNTS = ('failures', 'model_failures', 'search_failures', 'objective_failures')
LIMITS_NOTE = (
    '**What limits each task**: R² of a linear probe of the state from the embedding (`lewm probe`, '
    'held-out episodes); "replay": the expert\'s own sequence, replayed open loop, reaches the goal; the '
    'failed episodes split by `lewm diagnose`: model failures (the model ranks the planner\'s plan at '
    'least as near the goal as the expert\'s sequence), search failures (the expert\'s sequence was '
    'cheaper and the search missed it), objective failures (the expert\'s sequence ends nearer, but the '
    'planner\'s objective preferred its plan).'
)


def probe_r2(root: Path, recipe: dict[str, Any]) -> dict[str, float] | None:
    """R² of each probed state variable, by the recipe's names (an angle: the mean of its cos and sin)."""
    probe = read_json(root / 'probe.json')
    if probe is None:
        return None
    spec, r2 = recipe['probe'], probe['r2']
    names = spec.get('names') or [f'state[{d}]' for d in spec['dims']]
    angles = set(spec.get('angle_dims') or [])
    return {name: (r2[f'cos state[{d}]'] + r2[f'sin state[{d}]']) / 2 if d in angles else r2[f'state[{d}]']
            for name, d in zip(names, spec['dims'], strict=True)}


def diagnosis(paths: TaskPaths, seeds: list[int]) -> dict[str, Any] | None:
    """``lewm diagnose`` over all seeds: failures by cause, and how often the expert's replay reaches."""
    found = [d for d in (read_json(paths.diagnose_json(seed)) for seed in seeds) if d is not None]
    if not found:
        return None
    n = sum(d['episodes'] for d in found)
    out = {key: sum(d.get(key, 0) for d in found) for key in DIAGNOSIS_COUNTS}
    out['episodes'] = n
    out['replay_reaches_goal'] = sum(d['replay_reaches_goal'] * d['episodes'] for d in found) / n
    return out


def task_result(root: Path) -> dict[str, Any] | None:
    """One task's row: pooled success over its seeds, per-seed figures, planner, stage times and commands."""
    recipe = read_json(root / 'recipe.json')
    if recipe is None:
        return None
    paths = TaskPaths(root)
    seeds = []
    for seed in recipe['eval']['seeds']:
        result = read_json(paths.eval_json(seed))
        if result is not None:
            seeds.append({'seed': seed, 'episodes': result['episodes'], 'successes': result['successes'],
                          'success_rate': result['success_rate'], 'planner': result['planner'],
                          'plan_ms_per_env_median': result['plan_ms_per_env_median']})
    stamps = [s for s in (read_json(p) for p in sorted(paths.stamps.glob('*.json'))) if s and 'stage' in s]
    order = {name: i for i, name in enumerate(recipe.get('stage_order', []))}
    stamps.sort(key=lambda s: order.get(s['stage'], len(order)))
    k, n = sum(s['successes'] for s in seeds), sum(s['episodes'] for s in seeds)
    from training.evaluation.evaluate import wilson_interval

    lo, hi = wilson_interval(k, n) if n else (float('nan'), float('nan'))
    times: dict[str, float] = {}
    for stamp in stamps:
        column = stamp['stage'].split('-seed')[0]  # eval-seed0 and eval-seed1 together
        times[column] = times.get(column, 0.0) + stamp['wall_s']
    return {
        'task': recipe['name'], 'env_id': recipe['env_id'], 'scale': recipe['scale'],
        'smoke': bool(recipe.get('smoke')), 'model': recipe['model'], 'recipe': recipe['source'],
        'episodes': n, 'successes': k, 'success_rate': k / n if n else None, 'success_ci95': [lo, hi],
        'seeds': seeds, 'complete': len(seeds) == len(recipe['eval']['seeds']),
        'paper_success': recipe['paper_success'],
        'planner': seeds[0]['planner'] if seeds else None,
        'plan_ms_per_env_median': seeds[0]['plan_ms_per_env_median'] if seeds else None,
        'probe_r2': probe_r2(root, recipe), 'diagnosis': diagnosis(paths, recipe['eval']['seeds']),
        'stage_wall_s': times, 'commands': [s['command'] for s in stamps],
        'load_avg_1min': {s['stage']: s.get('load_avg_1min') for s in stamps},
    }


def collect_results(out: Path) -> dict[str, Any]:
    """Every task the output folder holds, in the paper's order, with the machine that ran them."""
    rows = [row for row in (task_result(out / task) for task in TASKS) if row is not None]
    return {
        'rows': rows,
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                    'python': platform.python_version()},
        'written': time.strftime('%Y-%m-%d %H:%M:%S'),
    }


def _planner(config: dict[str, Any] | None) -> str:
    if not config:
        return '-'
    solver = config['solver']
    if solver == 'controller':
        return 'controller'
    text = f'{solver.upper() if solver != "icem" else "iCEM"} {config["samples"]} × {config["iterations"]}'
    return text + (' from the controller' if config.get('proposal') == 'controller' else '')


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f} %'


def markdown(results: dict[str, Any]) -> str:
    """The table as Markdown: success, stage wall times, then the commands that made each row."""
    lines = ['| task | success here | 95 % CI | episodes (seeds) | paper (LeWM) | planner '
             '| ms per env and plan | model |', '|---|---|---|---|---|---|---|---|']
    for row in results['rows']:
        seeds = ', '.join(str(s['seed']) for s in row['seeds'])
        lo, hi = row['success_ci95']
        ci = '-' if not row['episodes'] else f'{100 * lo:.1f}–{100 * hi:.1f} %'
        note = '' if row['complete'] else ' (incomplete)'
        ms = row['plan_ms_per_env_median']
        label = LABELS[row['task']] + (' (smoke)' if row['smoke'] else '')
        lines.append(
            f'| {label} | {_pct(row["success_rate"])}{note} | {ci} | {row["episodes"]} ({seeds}) '
            f'| {_pct(row["paper_success"])} | {_planner(row["planner"])} '
            f'| {"-" if ms is None else f"{ms:.0f}"} | {row["model"]} |')
    lines += ['', 'Per seed: ' + '; '.join(
        f'{LABELS[row["task"]]} ' + ', '.join(f'seed {s["seed"]} {s["successes"]}/{s["episodes"]}'
                                            for s in row['seeds'])
        for row in results['rows']) + '.', '']
    lines += [LIMITS_NOTE, '', '| task | probe R² | replay | failures | model | search | objective |',
              '|---|---|---|---|---|---|---|']
    for row in results['rows']:
        probe = ', '.join(f'{k} {v:.2f}' for k, v in (row['probe_r2'] or {}).items()) or '-'
        d = row['diagnosis']
        cells = ['-'] * 4 if d is None else [str(d[k]) for k in DIAGNOSIS_COUNTS]
        replay = '-' if d is None else f'{100 * d["replay_reaches_goal"]:.0f} %'
        lines.append(f'| {LABELS[row["task"]]} | {probe} | {replay} | ' + ' | '.join(cells) + ' |')
    lines += ['', '**Wall time of each stage** (s, this machine; `eval` and `diagnose`: all seeds; load: '
              'the 1-minute load average as each evaluation ended, the highest; above the number of cores, '
              'other jobs shared the machine and times per plan are upper bounds)', '',
              '| task | ' + ' | '.join(STAGE_COLUMNS) + ' | total | load during eval |',
              '|---' * (len(STAGE_COLUMNS) + 3) + '|']
    for row in results['rows']:
        times = row['stage_wall_s']
        cells = [f'{times[c]:.0f}' if c in times else '-' for c in STAGE_COLUMNS]
        loads = [v for k, v in row['load_avg_1min'].items() if k.startswith('eval') and v is not None]
        load = f'{max(loads):.1f}' if loads else '-'
        total = sum(times.values())
        lines.append(f'| {LABELS[row["task"]]} | ' + ' | '.join(cells) + f' | {total:.0f} | {load} |')
    machine = results['machine']
    lines += ['', f'Machine: {machine["cpus"]} CPUs, {machine["platform"]}, Python {machine["python"]}; '
              f'written {results["written"]}.', '', '**Commands** (in the order they ran; recipes in '
              '`config/recipes/`)', '']
    for row in results['rows']:
        recipe = Path(row['recipe']).name
        lines += [f'{LABELS[row["task"]]} (`{recipe}`):', '', '```', *row['commands'], '```', '']
    return '\n'.join(lines)


def bar_chart(results: dict[str, Any], path: Path) -> None:
    """Success here (with its 95 % interval) next to the paper's LeWM figure, per task."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [row for row in results['rows'] if row['episodes']]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * max(len(rows), 1), 3.6), dpi=120)
    x = np.arange(len(rows))
    ours = np.array([100 * row['success_rate'] for row in rows])
    lows = np.array([100 * row['success_ci95'][0] for row in rows])
    highs = np.array([100 * row['success_ci95'][1] for row in rows])
    ax.bar(x - 0.2, ours, 0.4, yerr=[ours - lows, highs - ours], capsize=3, label='here (95 % CI)',
           color='tab:blue')
    ax.bar(x + 0.2, [100 * row['paper_success'] for row in rows], 0.4, label='paper (LeWM)', color='tab:gray')
    for xi, value, high in zip(x, ours, highs, strict=True):
        ax.text(xi - 0.2, high + 1.5, f'{value:.0f}', ha='center', fontsize=8)
    ax.set_xticks(x, [LABELS[row['task']] + (f'\n({row["scale"]})') for row in rows])
    ax.set_ylim(0, 112)
    ax.set_ylabel('closed-loop success (%)')
    ax.set_title('50-step budget, goal 25 expert steps ahead', fontsize=9)
    ax.legend(fontsize=8, loc='upper center', ncol=2, frameon=False)
    save_figure(fig, path)


def write_table(out: Path) -> dict[str, Any]:
    """Write ``results.md``, ``results.json`` and ``results.png`` into ``out``; returns the results."""
    results = collect_results(out)
    write_json(out / 'results.json', results)
    (out / 'results.md').write_text(markdown(results) + '\n', encoding='utf-8')
    if results['rows']:
        bar_chart(results, out / 'results.png')
    return results
