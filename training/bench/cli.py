"""``lewm bench``: speed benchmarks that print figures (and JSON), one sub-command per workload.

``train`` and ``plan`` need only torch, numpy, pyyaml (and the package itself): no rclpy, mujoco
or h5py, so they run side by side with other implementations in any torch environment. ``node``
runs the planner node over real DDS and needs rclpy.
"""

from __future__ import annotations

import argparse
import importlib

# sub-command -> (module with add_arguments/run, help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    'train': ('training.bench.train', 'training-step throughput (clips/s) on synthetic batches'),
    'plan': ('training.bench.plan', 'planning time per plan (ms) of the latent planner'),
    'node': ('training.bench.node', 'planner node against a camera stream: tick rate, latency, CPU'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per benchmark; each module adds its own options."""
    sub = parser.add_subparsers(dest='benchmark', metavar='BENCHMARK', required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_bench_module=module)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark."""
    return int(importlib.import_module(args._bench_module).run(args) or 0)
