"""Shared test set-up: loopback-only DDS on a domain of this run's own, headless MuJoCo, and rclpy.

The environment is fixed here, before any test imports rclpy or mujoco, so a bare ``pytest`` is
as safe as ``scripts/test.sh``: no DDS traffic leaves this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', 'egl')
# Nodes, DDS threads and torch share 2 cores here: spinning OpenMP workers would starve the rest.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from ros_test_utils import SpinningExecutor  # noqa: E402  (after the environment is fixed)


@pytest.fixture(scope='session')
def rclpy_context() -> Iterator[object]:
    """One rclpy context for the whole session (rclpy.init is not cheap and not re-entrant)."""
    rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (run scripts/setup.sh)')
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture
def spinner(rclpy_context: object) -> Iterator[SpinningExecutor]:
    """An executor spinning in the background for the duration of one test."""
    spinning = SpinningExecutor(rclpy_context)
    yield spinning
    spinning.close()
