"""``lewm demo``: the README's main job — a MuJoCo task driven by the LeWM planner over ROS 2 topics.

Runs ``sim_node`` and ``planner_node`` in this process on a real DDS graph (loopback only), plays
episodes with the paper's protocol (start on an expert trajectory, goal = 25 steps later, 50-step
budget), then one more episode with a teleport and a recolour, and reports the success rate, the
surprise summary and a PNG of the surprise trace. The planner node runs with its defaults: the
planner settings and the surprise threshold stored in the checkpoint.

The model is one of the embedded checkpoints (``models/<name>``, trained by our own
``lewm collect`` + ``lewm train`` with the commands below, listed in docs/demo.md) unless
``--checkpoint`` says otherwise; ``--retrain`` runs those commands again.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

CACHE = Path.home() / '.cache' / 'lewm_ros'


@dataclass(frozen=True)
class EmbeddedModel:
    """A checkpoint that ships in ``models/``, and the commands that rebuild it."""

    name: str
    env_id: str
    commands: tuple[tuple[str, ...], ...]  # {data}: data folder, {ckpt}: the checkpoint it makes


def _recipe(env_id: str, stem: str, img_size: int, collect: tuple[str, ...], train: tuple[str, ...],
            calib_seed: int, quantile: str = '0.995') -> tuple[tuple[str, ...], ...]:
    data, calib = f'{{data}}/{stem}.h5', f'{{data}}/{stem}_calib.h5'
    common = ('--env', env_id, '--img-size', str(img_size))
    return (
        ('lewm', 'collect', *common, *collect, '--out', data, '--overwrite'),
        ('lewm', 'collect', *common, '--episodes', '40', '--policy', 'expert', '--noise', '0.5', '--seed',
         str(calib_seed), '--out', calib, '--overwrite'),
        ('lewm', 'train', '--config', 'tiny', '--data', data, '--out', '{run}', *train),
        # goal metric first (the tuned planner measures with it), then the planner settings, then
        # the surprise threshold on frames that planner drives
        ('lewm', 'calibrate', '--checkpoint', '{ckpt}', '--data', calib, '--closed-loop', '0'),
        ('lewm', 'tune', '--checkpoint', '{ckpt}'),
        ('lewm', 'calibrate', '--checkpoint', '{ckpt}', '--data', calib, '--quantile', quantile),
        # last: the stored planner stays the tuned search; the controller and the hybrid are a
        # planner_preset away (docs/planning.md, "The controller")
        ('lewm', 'train-controller', '--checkpoint', '{ckpt}', '--data', data, '--log-dir', ''),
    )


MODELS: dict[str, EmbeddedModel] = {
    'tworoom': EmbeddedModel('tworoom', 'lewm/TwoRoom-v0', _recipe(
        'lewm/TwoRoom-v0', 'tworoom', 64,
        ('--episodes', '1600', '--policy', 'mixed', '--noise', '0.5', '--expert-fraction', '0.5',
         '--workers', '2', '--seed', '710000'),
        # 99.9 %: the 99.5 % threshold flagged 1-2 % of the demo's normal frames, each a hair above
        # it, and a teleport scores 4x the higher threshold still
        ('--set', 'optim.max_steps=3000'), calib_seed=1000000, quantile='0.999')),
    'reacher': EmbeddedModel('reacher', 'lewm/Reacher-v0', _recipe(
        'lewm/Reacher-v0', 'reacher', 96,
        ('--episodes', '1200', '--policy', 'mixed', '--noise', '0.5', '--workers', '1', '--seed', '1000000'),
        ('--set', 'model.image_size=96', '--set', 'model.patch_size=12', '--set', 'optim.max_steps=5000'),
        calib_seed=900000)),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm demo``."""
    parser.add_argument('--env', default='tworoom',
                        help=f'embedded model to run: {", ".join(MODELS)}, or a task id with --checkpoint '
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
                        help=f'collect and train the embedded model again into {CACHE}/ (TwoRoom about '
                        '40 min, Reacher about 60 min on 2 cores)')


def run(args: argparse.Namespace) -> int:
    """Resolve the checkpoint (training it if asked), then run the sim-in-the-loop episodes."""
    from training.demo.loop import run_demo

    if args.checkpoint is None:
        if args.env not in MODELS:
            raise SystemExit(f'--env must name an embedded model ({", ".join(MODELS)}) unless --checkpoint '
                             f'is given, got {args.env!r}')
        model = MODELS[args.env]
        args.checkpoint = train_embedded(model) if args.retrain else shipped_checkpoint(model)
        args.env = model.env_id
    elif args.env in MODELS:
        args.env = MODELS[args.env].env_id
    return run_demo(args, args.checkpoint)


def shipped_checkpoint(model: EmbeddedModel) -> Path:
    """Where the installed package keeps ``model``."""
    from lewm_ros.paths import share_dir

    path = share_dir() / 'models' / model.name
    if not path.is_dir():
        raise SystemExit(f'the embedded model {path} is not installed; rebuild it with --retrain')
    return path


def train_embedded(model: EmbeddedModel) -> Path:
    """Run ``model.commands`` into ``~/.cache/lewm_ros`` (once: a finished checkpoint is reused)."""
    import shutil
    import subprocess
    import sys

    data, run_dir = CACHE / 'data', CACHE / 'runs' / model.name
    ckpt = run_dir / 'final'
    if (ckpt / 'meta.json').is_file() and '"planner"' in (ckpt / 'meta.json').read_text():
        print(f'using the model trained earlier: {ckpt} (delete {run_dir} to train again)')
        return ckpt
    lewm = (shutil.which('lewm') or f'{sys.executable} -m training.cli').split()
    for template in model.commands:
        cmd = lewm + [part.format(data=data, run=run_dir, ckpt=ckpt) for part in template[1:]]
        print('$ ' + ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return ckpt
