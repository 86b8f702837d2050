"""The ``lewm`` command: one entry point for the offline work (collect, train, evaluate, benchmark).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their subcommand is used, so ``lewm bench`` needs nothing beyond
torch, numpy and pyyaml, and ``lewm --help`` starts instantly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Planning, evaluation and the demo run torch next to other busy threads (DDS, MuJoCo, a second
# job on a small machine): OpenMP workers that spin while waiting made them 10-100x slower.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# name -> (module, one-line help). Order is the order shown in `lewm --help`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'collect': ('training.data.collect', 'collect pixel+action episodes from a MuJoCo task into HDF5'),
    'import-bag': ('training.data.import_bag',
                   'import rosbag recordings of a robot into an HDF5 episode file'),
    'view': ('training.data.view', 'render a task episode to a GIF/PNG contact sheet to look at'),
    'train': ('training.fit.train', 'train a LeWM world model from an HDF5 episode file'),
    'train-controller': ('training.fit.controller',
                         'train a goal-conditioned controller on a checkpoint\'s frozen embeddings'),
    'info': ('training.info', 'print what a checkpoint holds'),
    'probe': ('training.evaluation.probe', 'which state variables the embeddings encode (linear probe R²)'),
    'calibrate': ('training.evaluation.calibrate', 'calibrate the surprise threshold on normal episodes'),
    'tune': ('training.evaluation.tune', 'search planner settings; store the best in the checkpoint'),
    'eval': ('training.evaluation.evaluate', 'closed-loop planning success on a MuJoCo task'),
    'eval-surprise': ('training.evaluation.eval_surprise', 'surprise AUROC for teleport / recolour events'),
    'diagnose': ('training.evaluation.diagnose', 'why closed-loop episodes fail: the search or the model'),
    'bench': ('training.bench.cli', 'benchmark training and planning speed (JSON output)'),
    'demo': ('training.demo.demo', 'sim-in-the-loop demo over real ROS 2 topics'),
    'suite': ('training.suite.cli', 'run every task\'s recipe end to end and write the results table'),
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser; only the subcommand named in ``argv`` is imported."""
    parser = argparse.ArgumentParser(
        prog='lewm',
        description='LeWorldModel offline tools: data, training, evaluation, benchmarks.',
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    chosen = next((a for a in argv if not a.startswith('-')), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if not _available(module):
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(sp)
            sp.set_defaults(_module=module)
    return parser


# Exit codes: 1 for a checkpoint or data file the command cannot use (as for the ROS nodes), 2 for
# bad options (argparse) or a bad training config, 130 for Ctrl-C (143 for SIGTERM).
EXIT_BAD_INPUT = 1
EXIT_INTERRUPTED = 130


# (module, class) of the errors that report bad input (a missing or damaged checkpoint, episode
# file or YAML file), not a bug: they are shown as one line.
_INPUT_ERRORS = (
    ('lewm_ros.checkpoint', 'CheckpointError'),
    ('training.data.episodes', 'EpisodeFormatError'),
    ('lewm_ros.bag_reading', 'BagError'),
    ('lewm_ros.planning.settings', 'PlannerSettingsError'),
    ('yaml', 'YAMLError'),
)


def _input_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input rather than a bug.

    The classes are looked up only if their modules were imported: an error of a module that was
    never loaded cannot have been raised, and ``lewm --help`` stays free of torch and h5py.
    """
    if isinstance(err, FileNotFoundError):  # a missing --data file, for instance
        return True
    for module, name in _INPUT_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(err, cls):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    """Run ``lewm``; returns the process exit code.

    A damaged or missing checkpoint or episode file is reported as one ``lewm CMD: error: ...``
    line (exit code 1) and Ctrl-C as one ``lewm CMD: interrupted`` line (exit code 130), without
    a traceback; commands that can say how to continue (collect, train) print that themselves.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not hasattr(args, '_module'):  # options before the subcommand; re-parse is not worth it
        parser.error('put options after the subcommand, e.g. `lewm train --help`')
    prog = ' '.join(['lewm', args.command, *([args.benchmark] if getattr(args, 'benchmark', None) else [])])
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt as err:  # also training.interrupts.Interrupted (SIGTERM: 143)
        print(f'{prog}: interrupted', file=sys.stderr)
        return int(getattr(err, 'exit_code', EXIT_INTERRUPTED))
    except Exception as err:
        if not _input_error(err):
            raise
        print(f'{prog}: error: {err}', file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == '__main__':
    sys.exit(main())
