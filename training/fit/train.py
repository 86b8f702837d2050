"""``lewm train``: train a LeWM world model from an HDF5 episode file.

Examples::

    lewm train --config tiny --data data/tworoom.h5
    lewm train --config config/train/paper.yaml --set optim.lr=1e-4 --set data.batch_size=64
    lewm train --resume runs/tiny/last            # continue an interrupted run
    torchrun --nproc_per_node 4 -m training.cli train --config paper --data data/cube.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm train``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split('Examples::', 1)[1]
    parser.add_argument(
        '--config',
        help='preset name in config/train (tiny, small, paper, micro) or a YAML file; '
        "optional with --resume (the run's saved config is used)",
    )
    parser.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='KEY=VALUE',
        help='override a config value, e.g. --set optim.lr=3e-4 (value parsed as YAML); repeatable',
    )
    parser.add_argument('--data', help='episode file (HDF5); shortcut for --set data.path=FILE')
    parser.add_argument(
        '--out', help='run directory (default runs/<config name>); shortcut for train.out_dir'
    )
    parser.add_argument('--device', help='auto, cpu, cuda, cuda:N or mps; shortcut for train.device')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        metavar='CKPT',
        help='continue from a checkpoint with resume state (default: <run dir>/last)',
    )


def run(args: argparse.Namespace) -> int:
    """Build the config, then train."""
    import sys

    import yaml

    from lewm_ros.checkpoint import CheckpointError, read_metadata
    from training.fit.train_config import apply_overrides, complete, load_train_config
    from training.fit.trainer import Trainer, TrainingInterrupted

    overrides = list(args.overrides)
    for flag, key in ((args.data, 'data.path'), (args.out, 'train.out_dir'), (args.device, 'train.device')):
        if flag:
            overrides.append(f'{key}={flag}')
    resume = None
    try:
        if args.config:
            config = load_train_config(args.config, overrides)
        elif args.resume and args.resume != 'auto':
            meta = read_metadata(args.resume)
            if not meta.get('train_config'):
                raise CheckpointError(f'{args.resume} holds no training config; pass --config as well')
            config = complete(apply_overrides(meta['train_config'], overrides))
        else:
            print('lewm train: give --config PRESET (or --resume CKPT to continue a run)')
            return 2
        if args.resume:
            out_dir = Path(config['train']['out_dir'] or Path('runs') / (config.get('name') or 'run'))
            resume = out_dir / 'last' if args.resume == 'auto' else Path(args.resume)
            read_metadata(resume)  # fail early with a clear message
        return 0 if Trainer(config, resume=resume).run() else 1
    except CheckpointError as err:  # exit code 1, as for every command that reads a checkpoint
        print(f'lewm train: error: {err}')
        return 1
    except (ValueError, FileNotFoundError, FloatingPointError, yaml.YAMLError) as err:
        print(f'lewm train: error: {err}')
        return 2
    except TrainingInterrupted as err:
        print(f'lewm train: interrupted after step {err.step}, saved to {err.checkpoint}; continue with '
              f'`lewm train --resume {err.checkpoint}`', file=sys.stderr)
        return err.exit_code
