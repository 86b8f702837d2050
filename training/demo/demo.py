"""``lewm demo``: the README's main job — a MuJoCo task driven by the LeWM planner over ROS 2 topics.

Runs ``sim_node`` and ``planner_node`` in this process on a real DDS graph (loopback only), plays
episodes with the paper's protocol (start on an expert trajectory, goal = 25 steps later, 50-step
budget), then one more episode with a teleport and a recolour, and reports the success rate, the
surprise summary and a PNG of the surprise trace. The planner node runs with its defaults: the
planner settings and the surprise threshold stored in the checkpoint.

The model is one of the embedded checkpoints (``models/<name>``, trained by our own
``lewm collect`` + ``lewm train`` with the recipe ``config/recipes/<name>-cpu.yaml``) unless
``--checkpoint`` says otherwise; ``--retrain`` runs that recipe again (``lewm suite``'s stages
up to the evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CACHE = Path.home() / '.cache' / 'lewm_ros'
# The checkpoints in models/<name>, each built by the recipe config/recipes/<name>-cpu.yaml.
EMBEDDED = ('tworoom', 'reacher', 'pusht', 'cube')


def embedded_env_id(name: str) -> str:
    """The task an embedded model was trained on (from its recipe)."""
    from training.suite.recipe import load_recipe

    return load_recipe(name, 'cpu')['env_id']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm demo``."""
    parser.add_argument('--env', default='tworoom',
                        help=f'embedded model to run: {", ".join(EMBEDDED)}, or a task id with --checkpoint '
                        '(default: tworoom)')
    parser.add_argument('--checkpoint', type=Path,
                        help='checkpoint to drive the task with instead of an embedded model')
    parser.add_argument('--episodes', type=int, default=20, help='normal episodes for the success rate')
    parser.add_argument('--teleport-step', type=int, default=20,
                        help='env step of the teleport in the extra surprise episode')
    parser.add_argument('--recolour-step', type=int, default=35,
                        help='env step of the recolour in the extra surprise episode')
    parser.add_argument('--samples', type=int, default=None,
                        help="planner samples per iteration (default: the checkpoint's setting)")
    parser.add_argument('--iterations', type=int, default=None,
                        help="planner iterations per plan (default: the checkpoint's setting)")
    parser.add_argument('--rate-hz', type=float, default=20.0, help='control rate of the loop')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first episode')
    parser.add_argument('--out', type=Path, default=Path('outputs/demo'), help='folder for the PNG and JSON')
    parser.add_argument('--retrain', action='store_true',
                        help=f'run the model\'s recipe (config/recipes/<name>-cpu.yaml) again into '
                        f'{CACHE}/<name> (TwoRoom about 40 min, Reacher about 60 min on 2 cores; resumable)')


def run(args: argparse.Namespace) -> int:
    """Resolve the checkpoint (training it if asked), then run the sim-in-the-loop episodes."""
    from training.demo.loop import run_demo

    if args.checkpoint is None:
        if args.env not in EMBEDDED:
            raise SystemExit(f'--env must name an embedded model ({", ".join(EMBEDDED)}) unless --checkpoint '
                             f'is given, got {args.env!r}')
        args.checkpoint = train_embedded(args.env) if args.retrain else shipped_checkpoint(args.env)
        args.env = embedded_env_id(args.env)
    elif args.env in EMBEDDED:
        args.env = embedded_env_id(args.env)
    return run_demo(args, args.checkpoint)


def shipped_model_dir(name: str) -> Path:
    """Where the installed package keeps the embedded model ``name`` (it may be absent)."""
    from lewm_ros.paths import share_dir

    return share_dir() / 'models' / name


def shipped_checkpoint(name: str) -> Path:
    """The embedded model ``name``, or a clear error when this installation lacks it."""
    path = shipped_model_dir(name)
    if not path.is_dir():
        raise SystemExit(f'the embedded model {path} is not installed; rebuild it with --retrain')
    return path


def train_embedded(name: str) -> Path:
    """Run the model's recipe up to a finished checkpoint in ``~/.cache/lewm_ros/<name>`` (resumable)."""
    from training.suite.recipe import TaskPaths, load_recipe, training_stages
    from training.suite.runner import run_stages

    paths = TaskPaths(CACHE / name)
    run_stages(name, training_stages(load_recipe(name, 'cpu'), paths), paths)
    return paths.checkpoint
