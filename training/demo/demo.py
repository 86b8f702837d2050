"""``lewm demo``: the README's main job — a MuJoCo task driven by the LeWM planner over ROS 2 topics.

Runs ``sim_node`` and ``planner_node`` in this process on a real DDS graph (loopback only), plays a
few episodes with the paper's protocol (start on an expert trajectory, goal = 25 steps later,
50-step budget), then one more episode with a teleport and a recolour, and reports the success
rate, the surprise summary and a PNG of the surprise trace.

The model is the shipped demo checkpoint (``models/demo_tworoom``, trained by our own
``lewm collect`` + ``lewm train`` with the commands in docs/demo.md) unless ``--checkpoint`` or
``--retrain`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_ENV = 'lewm/TwoRoom-v0'
DEMO_MODEL = 'demo_tworoom'
CACHE = Path.home() / '.cache' / 'lewm_ros'
# The exact commands that made the shipped checkpoint (docs/demo.md); --retrain runs them again.
RETRAIN_COMMANDS = (
    ['lewm', 'collect', '--env', DEMO_ENV, '--episodes', '400', '--policy', 'expert', '--noise', '0.5',
     '--img-size', '64', '--out', '{data}.h5', '--overwrite'],
    ['lewm', 'collect', '--env', DEMO_ENV, '--episodes', '40', '--policy', 'expert', '--noise', '0.5',
     '--img-size', '64', '--seed', '100000', '--out', '{data}_calib.h5', '--overwrite'],
    ['lewm', 'train', '--config', 'tiny', '--data', '{data}.h5', '--out', '{run}', '--set',
     'optim.max_steps=2000'],
    ['lewm', 'calibrate', '--checkpoint', '{ckpt}', '--data', '{data}_calib.h5'],
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm demo``."""
    parser.add_argument('--checkpoint', type=Path,
                        help='checkpoint to drive the task with (default: the shipped demo model)')
    parser.add_argument('--env', default=None, help="task (default: the checkpoint's env_id, or TwoRoom)")
    parser.add_argument('--episodes', type=int, default=5, help='normal episodes for the success rate')
    parser.add_argument('--teleport-step', type=int, default=20,
                        help='env step of the teleport in the extra surprise episode')
    parser.add_argument('--recolour-step', type=int, default=35,
                        help='env step of the recolour in the extra surprise episode')
    parser.add_argument('--samples', type=int, default=300, help='CEM samples per iteration')
    parser.add_argument('--iterations', type=int, default=10, help='CEM iterations per plan')
    parser.add_argument('--rate-hz', type=float, default=20.0, help='control rate of the loop')
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first episode')
    parser.add_argument('--out', type=Path, default=Path('outputs/demo'), help='folder for the PNG and JSON')
    parser.add_argument('--retrain', action='store_true',
                        help=f'collect and train the demo model again into {CACHE}/ (about 15 minutes)')


def run(args: argparse.Namespace) -> int:
    """Resolve the checkpoint (training it if asked), then run the sim-in-the-loop episodes."""
    from training.demo.loop import run_demo

    checkpoint = args.checkpoint or _demo_checkpoint(args.retrain)
    return run_demo(args, checkpoint)


def _demo_checkpoint(retrain: bool) -> Path:
    """The shipped demo checkpoint, or one trained here with ``RETRAIN_COMMANDS``."""
    from lewm_ros.paths import share_dir

    shipped = share_dir() / 'models' / DEMO_MODEL
    if shipped.is_dir() and not retrain:
        return shipped
    return _train_demo_checkpoint()


def _train_demo_checkpoint() -> Path:
    import shutil
    import subprocess
    import sys

    data, run_dir = CACHE / 'tworoom', CACHE / 'runs' / DEMO_MODEL
    ckpt = run_dir / 'final'
    if ckpt.is_dir():
        print(f'using the demo model trained earlier: {ckpt} (delete it to train again)')
        return ckpt
    lewm = shutil.which('lewm') or f'{sys.executable} -m training.cli'
    for template in RETRAIN_COMMANDS:
        cmd = [part.format(data=data, run=run_dir, ckpt=ckpt) for part in template]
        cmd = lewm.split() + cmd[1:]
        print('$ ' + ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return ckpt
