"""``lewm suite``: run each task's recipe end to end and write one results table against the paper.

    lewm suite                                  # all four tasks at CPU scale, into runs/suite-cpu
    lewm suite --tasks pusht cube --out runs/suite
    lewm suite --tasks all --shipped            # evaluate the shipped models/<task> only
    lewm suite --scale paper --smoke            # a few steps of every stage of the paper's recipe
    lewm suite --table-only --out runs/suite    # rebuild results.md/json/png from what is there

Each task runs the stages of ``config/recipes/<task>-<scale>.yaml`` (collect, collect the calibration
episodes, train, calibrate the goal metric, tune, calibrate the surprise threshold, train the
controller, evaluate on each seed). Run the same command again after an interruption: finished stages
are skipped (``training/suite/runner.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.suite.recipe import SCALES, TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm suite``."""
    parser.add_argument('--tasks', nargs='+', default=['all'], metavar='TASK',
                        help=f'tasks to run: {", ".join(TASKS)} or all (default: all)')
    parser.add_argument('--scale', choices=SCALES, default='cpu',
                        help='cpu: our CPU presets (the recipes of models/*); paper: the paper\'s model and '
                        'data size, meant for a GPU (default: cpu)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: runs/suite-<scale>, or runs/suite-<scale>-smoke)')
    parser.add_argument('--smoke', action='store_true',
                        help='a few episodes and steps of every stage (the model and image size kept): '
                        'checks that a recipe runs, measures nothing')
    parser.add_argument('--shipped', action='store_true',
                        help='evaluate the installed models/<task> instead of training them (CPU scale)')
    parser.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                        help='change a recipe value for this run, e.g. --override eval.episodes=100 '
                        '(repeatable; the results record it)')
    parser.add_argument('--until', default=None, metavar='STAGE',
                        help='stop after this stage of each task (e.g. train)')
    parser.add_argument('--table-only', action='store_true', help='only rebuild the results table')
    parser.add_argument('--dry-run', action='store_true',
                        help='say which stages would run and which are done, run nothing')


def _tasks(names: list[str]) -> list[str]:
    if 'all' in names:
        return list(TASKS)
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise SystemExit(f'lewm suite: unknown task(s) {unknown}; known: {", ".join(TASKS)} or all')
    return [t for t in TASKS if t in names]


def _model_label(shipped: Path | None) -> str:
    return f'models/{shipped.name} (shipped)' if shipped else 'trained by this suite (run/final)'


def prepare_task(task: str, args: argparse.Namespace, out: Path) -> tuple[dict, list, object]:
    """The task's recipe, its stages and paths; refuses an output folder made for another scale or model."""
    from training.demo.demo import shipped_model_dir
    from training.reports import write_json
    from training.suite.recipe import TaskPaths, load_recipe, stages
    from training.suite.runner import read_json

    recipe = load_recipe(task, args.scale, args.override, args.smoke)
    paths = TaskPaths(out / task)
    shipped = shipped_model_dir(task) if args.shipped else None
    plan = stages(recipe, paths, shipped)
    record = {**recipe, 'model': _model_label(shipped), 'stage_order': [s.name for s in plan]}
    earlier = read_json(paths.root / 'recipe.json')
    def kind(r: dict) -> tuple:
        return r.get('scale'), r.get('model'), bool(r.get('smoke'))

    if earlier is not None and kind(earlier) != kind(record):
        raise SystemExit(f'lewm suite: {paths.root} holds a {earlier.get("scale")} run of '
                         f'{earlier.get("model")}{" (smoke)" if earlier.get("smoke") else ""}; '
                         'give another --out')
    if not args.dry_run:
        write_json(paths.root / 'recipe.json', record)
    return recipe, plan, paths


def run(args: argparse.Namespace) -> int:
    """Run the chosen tasks' recipes (skipping finished stages), then write the table."""
    from training.suite.recipe import RecipeError
    from training.suite.runner import StageFailedError, run_stages
    from training.suite.table import markdown, write_table

    if args.shipped and args.scale != 'cpu':
        raise SystemExit('lewm suite: --shipped evaluates the CPU-scale models that ship; use --scale cpu')
    out = args.out or Path('runs') / f'suite-{args.scale}{"-smoke" if args.smoke else ""}'
    tasks = _tasks(args.tasks)
    failed = []
    if not args.table_only:
        for task in tasks:
            try:
                recipe, plan, paths = prepare_task(task, args, out)
            except RecipeError as err:
                raise SystemExit(f'lewm suite: {err}') from err
            if args.until and args.until not in {s.name for s in plan}:
                raise SystemExit(f'lewm suite: --until {args.until}: {task} has the stages '
                                 f'{", ".join(s.name for s in plan)}')
            try:
                run_stages(task, plan, paths, until=args.until, dry_run=args.dry_run)
            except StageFailedError as err:
                print(f'lewm suite: {err}; run the same command again to resume from this stage')
                failed.append(task)
    if args.dry_run:
        return 0
    results = write_table(out)
    print(markdown(results))
    print(f'wrote {out / "results.md"}, {out / "results.json"} and {out / "results.png"}')
    return 1 if failed else 0
