"""``goal_publisher``: give the planner a goal image from a PNG/JPEG file or from a frame of a bag.

The image is published once on ``lewm/goal_image`` as an rgb8 ``sensor_msgs/Image`` at its full
resolution (the planner crops and resizes it as it does camera frames), with the planner's goal
QoS: reliable, transient local, depth 1. The node then keeps running, so the message stays
latched: a planner started later still receives it. Ctrl-C (or SIGTERM) exits 0.

It runs on the robot: it needs rclpy, numpy and Pillow; ``rosbags`` is imported only with
``--bag``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lewm_ros.image_conversion import ImageConversionError, image_msg_to_rgb, rgb_to_image_fields
from lewm_ros.nodes.node_runner import run_node

NODE_NAME = 'lewm_goal_publisher'
DEFAULT_TOPIC = 'lewm/goal_image'


class GoalSourceError(ValueError):
    """The goal image cannot be read; the text says why."""


def build_parser() -> argparse.ArgumentParser:
    """Options of ``ros2 run lewm_ros goal_publisher`` (ROS arguments go after ``--ros-args``)."""
    parser = argparse.ArgumentParser(
        prog='ros2 run lewm_ros goal_publisher',
        description='Publish a goal image for planner_node (latched: reliable + transient local, depth 1) '
                    'and keep it available to late subscribers until Ctrl-C. ROS arguments (remapping, '
                    'namespace) go after --ros-args.')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--image', help='a PNG or JPEG file')
    source.add_argument('--bag', help='a rosbag (as for lewm import-bag); with --topic and --index')
    parser.add_argument('--topic', help='with --bag: the sensor_msgs/Image or CompressedImage topic')
    parser.add_argument('--index', type=int, default=0,
                        help='with --bag: which message of --topic, 0 = first, -1 = last')
    parser.add_argument('--goal-topic', default=DEFAULT_TOPIC, help='topic to publish the goal on')
    parser.add_argument('--frame-id', default='', help='header.frame_id of the goal message')
    return parser


def rgb_from_file(path: str | Path) -> np.ndarray:
    """The RGB pixels (H, W, 3) uint8 of a PNG or JPEG file."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except (OSError, ValueError) as err:  # missing file, not an image, truncated
        raise GoalSourceError(f'cannot read the goal image {path}: {err}') from err


def rgb_from_bag(bag_path: str | Path, topic: str | None, index: int) -> np.ndarray:
    """The RGB pixels of message ``index`` of ``topic`` in a bag (rosbags is imported here only)."""
    import io

    from PIL import Image as PILImage

    from lewm_ros.bag_reading import IMAGE_TYPES, Bag, BagError

    if not topic:
        raise GoalSourceError('--bag needs --topic (the camera topic)')
    try:
        with Bag(bag_path) as bag:
            kind = bag.check_topic(topic, '--topic', IMAGE_TYPES)
            count = bag.counts[topic]
            position = index if index >= 0 else count + index
            if not 0 <= position < count:
                raise GoalSourceError(f'--index {index}: {topic} has {count} messages in {bag.name}')
            raw = next(m for i, (_, m) in enumerate(bag.messages(topic, deserialize=False)) if i == position)
            msg = bag.deserialize(raw, topic)
    except BagError as err:
        raise GoalSourceError(str(err)) from err
    try:
        if kind == 'sensor_msgs/CompressedImage':
            with PILImage.open(io.BytesIO(bytes(msg.data))) as image:
                return np.asarray(image.convert('RGB'))
        return image_msg_to_rgb(msg)
    except (ImageConversionError, OSError, ValueError) as err:
        raise GoalSourceError(f'message {position} of {topic} is not a usable image: {err}') from err


def _goal_node(fields: dict[str, Any], topic: str, frame_id: str, source: str) -> Any:
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    class GoalPublisher(Node):
        """Publishes the goal once, latched, and keeps it there."""

        def __init__(self) -> None:
            super().__init__(NODE_NAME)
            latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.publisher = self.create_publisher(Image, topic, latched)
            msg = Image(**fields)
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = frame_id
            self.publisher.publish(msg)
            self.get_logger().info(f'published goal {source} ({msg.width}x{msg.height}) on '
                                   f'{self.publisher.topic_name}; latched until Ctrl-C')

    return GoalPublisher()


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``ros2 run lewm_ros goal_publisher``; exit code 1 when the image cannot be read."""
    argv = list(sys.argv if args is None else args)
    head, ros = argv[1:], []
    if '--ros-args' in head:
        ros = head[head.index('--ros-args'):]
        head = head[:head.index('--ros-args')]
    options = build_parser().parse_args(head)
    try:
        if options.image is not None:
            rgb, source = rgb_from_file(options.image), options.image
        else:
            rgb = rgb_from_bag(options.bag, options.topic, options.index)
            source = f'{options.bag} {options.topic}[{options.index}]'
    except GoalSourceError as err:
        print(f'goal_publisher: error: {err}', file=sys.stderr)
        return 1
    fields = rgb_to_image_fields(rgb)
    return run_node([argv[0] if argv else 'goal_publisher', *ros], 'goal_publisher', NODE_NAME,
                    'Publish a latched goal image.', (),
                    lambda: _goal_node(fields, options.goal_topic, options.frame_id, source), (ValueError,))


if __name__ == '__main__':
    sys.exit(main())
