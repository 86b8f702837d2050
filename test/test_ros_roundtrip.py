"""Real rclpy over Fast DDS on loopback: the transport every node test builds on."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (run scripts/setup.sh)')
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _sourced_env_sh(environment: dict[str, str], cwd: Path) -> dict[str, str]:
    """The environment a bash started with only ``environment`` has after sourcing scripts/env.sh."""
    result = subprocess.run(['bash', '-c', '. "$1" && env -0', 'bash', str(REPO / 'scripts' / 'env.sh')],
                            env=environment, cwd=cwd, capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stderr, result.stderr.decode()
    return dict(item.split('=', 1) for item in result.stdout.decode().split('\0') if item)


def test_dds_stays_on_loopback(tmp_path: Path) -> None:
    """scripts/env.sh confines DDS to this machine whatever the shell had, and conftest.py agrees."""
    path = '/usr/bin:/bin'
    # A shell set up for the network: env.sh must override it (sourced from another directory).
    hostile = {'PATH': path, 'ROS_LOCALHOST_ONLY': '0', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    out = _sourced_env_sh(hostile, tmp_path)
    assert out['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'  # Jazzy and newer
    assert out['ROS_LOCALHOST_ONLY'] == '1'  # Humble
    assert out['ROS_DOMAIN_ID'] == '42' and out['RMW_IMPLEMENTATION'] == 'rmw_fastrtps_cpp'
    venv = str(REPO / '.venv')
    assert out['VIRTUAL_ENV'] == venv and out['PATH'].split(':')[0] == f'{venv}/bin'
    assert out['AMENT_PREFIX_PATH'].split(':')[0] == venv
    # A domain, an RMW and a venv chosen by the caller are kept; loopback is not negotiable.
    chosen = {**hostile, 'ROS_DOMAIN_ID': '57', 'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp',
              'LEWM_VENV': str(tmp_path / 'venv')}
    out = _sourced_env_sh(chosen, REPO)
    assert (out['ROS_DOMAIN_ID'], out['RMW_IMPLEMENTATION']) == ('57', 'rmw_cyclonedds_cpp')
    assert out['VIRTUAL_ENV'] == str(tmp_path / 'venv')
    assert (out['ROS_AUTOMATIC_DISCOVERY_RANGE'], out['ROS_LOCALHOST_ONLY']) == ('LOCALHOST', '1')
    # This test run (conftest.py) uses the same loopback settings as env.sh, on a valid domain.
    for name in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY'):
        assert os.environ[name] == out[name], name
    assert 0 <= int(os.environ['ROS_DOMAIN_ID']) <= 101


def test_image_round_trip_between_two_nodes(rclpy_context, spinner) -> None:
    """A camera-sized RGB image published by one node arrives intact at another."""
    assert rclpy.get_rmw_implementation_identifier() == 'rmw_fastrtps_cpp'
    sender = spinner.add(Node('roundtrip_sender', context=rclpy_context))
    receiver = spinner.add(Node('roundtrip_receiver', context=rclpy_context))
    received: list[Image] = []
    arrived = threading.Event()

    def on_image(msg: Image) -> None:
        received.append(msg)
        arrived.set()

    # The sensor-data profile the planner uses for cameras (best effort, keep last).
    receiver.create_subscription(Image, 'roundtrip/image', on_image, qos_profile_sensor_data)
    publisher = sender.create_publisher(Image, 'roundtrip/image', qos_profile_sensor_data)

    pixels = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    msg = Image(height=64, width=80, encoding='rgb8', is_bigendian=0, step=80 * 3, data=pixels.tobytes())
    msg.header.frame_id = 'camera'
    # Discovery takes a moment: republish until the first message arrives, bounded by a timeout.
    for _ in range(100):
        publisher.publish(msg)
        if arrived.wait(timeout=0.1):
            break
    assert arrived.is_set(), 'no image arrived within 10 s over loopback DDS'

    got = received[0]
    assert (got.height, got.width, got.encoding, got.step) == (64, 80, 'rgb8', 240)
    assert got.header.frame_id == 'camera'
    np.testing.assert_array_equal(np.frombuffer(bytes(got.data), np.uint8).reshape(64, 80, 3), pixels)
