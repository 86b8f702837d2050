"""The package installs the ROS way: share/ files, the ament index marker, executables in lib/lewm_ros.

The install below is the one colcon performs for an ament_python package (setup.py install with the
prefix of the workspace), so these tests catch a data file or console script missing from setup.py
before a ROS user does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXECUTABLES = ('planner_node', 'sim_node', 'goal_publisher', 'lewm')


@pytest.fixture(scope='module')
def install_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the package into a fresh prefix exactly as colcon does, once for this module."""
    tmp = tmp_path_factory.mktemp('colcon_like')
    build, prefix = tmp / 'build', tmp / 'install'
    build.mkdir()
    cmd = [sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(build), 'build', '--build-base',
           str(build), 'install', '--prefix', str(prefix), '--record', str(tmp / 'record.txt'),
           '--single-version-externally-managed']
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return prefix


def _site_packages(prefix: Path) -> Path:
    return prefix / 'lib' / f'python{sys.version_info.major}.{sys.version_info.minor}' / 'site-packages'


def test_share_files_are_installed(install_prefix: Path) -> None:
    share = install_prefix / 'share' / 'lewm_ros'
    assert (install_prefix / 'share/ament_index/resource_index/packages/lewm_ros').is_file()
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()
    for folder, pattern in (('launch', '*.launch.py'), ('config', '*.yaml'), ('config/train', '*.yaml'),
                            ('config/recipes', '*.yaml')):
        in_repo = sorted(p.name for p in (REPO / folder).glob(pattern))
        assert in_repo, f'the repository has no {folder}/{pattern}'
        assert sorted(p.name for p in (share / folder).glob(pattern)) == in_repo


def test_the_shipped_models_are_installed_under_share(install_prefix: Path) -> None:
    """`lewm demo` and the README's `ros2 launch` read share/lewm_ros/models/<name>: all ship there."""
    in_repo = sorted(p.name for p in (REPO / 'models').iterdir() if p.is_dir())
    from training.demo.demo import EMBEDDED

    assert in_repo == sorted(EMBEDDED)
    installed = install_prefix / 'share' / 'lewm_ros' / 'models'
    assert installed.is_dir() and sorted(p.name for p in installed.iterdir()) == in_repo
    for name in in_repo:
        files = sorted(p.name for p in (REPO / 'models' / name).iterdir())
        assert sorted(p.name for p in (installed / name).iterdir()) == files, name
        for file in files:
            assert (installed / name / file).read_bytes() == (REPO / 'models' / name / file).read_bytes()


def test_ament_index_finds_the_package(install_prefix: Path) -> None:
    ament = pytest.importorskip('ament_index_python.packages', reason='ament_index_python not installed')
    os.environ['AMENT_PREFIX_PATH'], saved = str(install_prefix), os.environ.get('AMENT_PREFIX_PATH')
    try:
        assert Path(ament.get_package_share_directory('lewm_ros')) == install_prefix / 'share' / 'lewm_ros'
    finally:
        if saved is None:
            del os.environ['AMENT_PREFIX_PATH']
        else:
            os.environ['AMENT_PREFIX_PATH'] = saved


def test_runtime_does_not_pull_in_the_offline_tools(install_prefix: Path) -> None:
    """The planner node must run on a robot without mujoco, h5py, gymnasium or rosbags."""
    code = ('import sys, lewm_ros.nodes.planner_node; '
            'bad = [m for m in ("mujoco", "h5py", "gymnasium", "rosbags", "training") if m in sys.modules]; '
            'sys.exit(f"planner_node imported {bad}" if bad else 0)')
    env = {**os.environ, 'PYTHONPATH': str(_site_packages(install_prefix))}
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd='/')
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize('name', EXECUTABLES)
def test_executables_print_usage(install_prefix: Path, name: str) -> None:
    """`ros2 run lewm_ros <name> --help` finds lib/lewm_ros/<name>, which starts and explains itself."""
    exe = install_prefix / 'lib' / 'lewm_ros' / name
    assert exe.is_file() and os.access(exe, os.X_OK), f'{exe} missing: ros2 run would not find it'
    env = {**os.environ, 'PYTHONPATH': str(_site_packages(install_prefix))}
    result = subprocess.run([sys.executable, str(exe), '--help'], capture_output=True, text=True, env=env,
                            cwd='/', timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'usage' in result.stdout.lower()
