"""Real rclpy over Fast DDS on loopback: the transport every node test builds on."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (run scripts/setup.sh)')
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402


def test_dds_stays_on_loopback() -> None:
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert os.environ['ROS_LOCALHOST_ONLY'] == '1'
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
