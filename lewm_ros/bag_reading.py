"""Read rosbag recordings (for `lewm import-bag` and `goal_publisher --bag`): topics, stamps, actions.

Built on ``rosbags`` (pure Python): ``AnyReader`` opens rosbag2 directories (MCAP or sqlite3),
single ``.mcap`` / ``.db3`` files and ROS 1 ``.bag`` files, with the message definitions stored
in the bag (or the ROS 2 Humble ones for bags without them). Deserialised messages carry the same
field names as rclpy's, so ``lewm_ros.image_conversion`` converts them exactly as the planner
node converts live frames. Every problem with a bag is a ``BagError`` whose text names the bag
and, for a missing or mistyped topic, lists the topics the bag holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_TYPES = ('sensor_msgs/Image', 'sensor_msgs/CompressedImage')
ACTION_TYPES = ('geometry_msgs/Twist', 'geometry_msgs/TwistStamped', 'std_msgs/Float64MultiArray',
                'sensor_msgs/JointState')
BOUNDARY_TYPES = ('std_msgs/Bool', 'std_msgs/Empty')
TWIST_FIELDS = tuple(f'{part}.{axis}' for part in ('linear', 'angular') for axis in 'xyz')
JOINT_FIELDS = ('position', 'velocity', 'effort')


class BagError(ValueError):
    """A bag cannot be imported as asked; the message says why (shown as one line by ``lewm``)."""


def short_type(msgtype: str) -> str:
    """``sensor_msgs/msg/Image`` (ROS 2) or ``sensor_msgs/Image`` (ROS 1) -> ``sensor_msgs/Image``."""
    return msgtype.replace('/msg/', '/')


def stamp_ns(msg: Any) -> int | None:
    """The header stamp of ``msg`` in nanoseconds; None when it has no header or a zero stamp."""
    header = getattr(msg, 'header', None)
    if header is None:
        return None
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns or None


def has_header(msgtype: str) -> bool:
    """Whether messages of this (short) type carry a ``std_msgs/Header``."""
    return short_type(msgtype) not in ('geometry_msgs/Twist', 'std_msgs/Float64MultiArray', *BOUNDARY_TYPES)


class Bag:
    """One open recording. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        self.name = self.path.name
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        try:
            self._reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self._reader.open()
        except Exception as err:  # noqa: BLE001 - rosbags, sqlite and yaml raise many types for bad bags
            raise BagError(f'cannot read bag {self.path}: {_reason(err)} (is it a complete rosbag2 '
                           'directory, .mcap/.db3 file or ROS 1 .bag? A recording cut off by a crash can '
                           'often be repaired with `mcap recover` or `ros2 bag reindex`)') from err
        self.is_ros2 = bool(self._reader.is2)
        self.topics = {name: short_type(info.msgtype or '?') for name, info in self._reader.topics.items()}
        self.counts = {name: int(info.msgcount) for name, info in self._reader.topics.items()}

    def describe(self) -> str:
        """The topics of the bag with their types and message counts, for error messages."""
        if not self.topics:
            return f'bag {self.name} holds no topics'
        listed = ', '.join(f'{name} ({kind}, {self.counts[name]} msgs)'
                           for name, kind in sorted(self.topics.items()))
        return f'bag {self.name} holds: {listed}'

    def check_topic(self, topic: str, option: str, allowed: Sequence[str]) -> str:
        """The type of ``topic``; a ``BagError`` listing the bag's topics if it is absent or mistyped."""
        if topic not in self.topics:
            raise BagError(f'{option} {topic}: no such topic in {self.name}; {self.describe()}')
        kind = self.topics[topic]
        if kind not in allowed:
            raise BagError(f'{option} {topic} is {kind}; it must be one of {", ".join(allowed)}; '
                           f'{self.describe()}')
        if self.counts[topic] == 0:
            raise BagError(f'{option} {topic} has no messages in {self.name}')
        return kind

    def messages(self, topic: str, deserialize: bool = True) -> Iterator[tuple[int, Any]]:
        """(bag receive time ns, message) of ``topic`` in bag order; raw CDR bytes unless ``deserialize``."""
        reader = self._reader
        connections = [c for c in reader.connections if c.topic == topic]
        iterator = reader.messages(connections=connections)
        while True:
            try:
                item = next(iterator)
                connection, timestamp, raw = item
                yield int(timestamp), (reader.deserialize(raw, connection.msgtype) if deserialize else raw)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 - a truncated or damaged file fails deep in rosbags
                raise BagError(f'cannot read {topic} from bag {self.path}: {_reason(err)} '
                               '(truncated or damaged?)') from err

    def deserialize(self, raw: bytes, topic: str) -> Any:
        """A message of ``topic`` from its raw bytes."""
        msgtype = next(c.msgtype for c in self._reader.connections if c.topic == topic)
        try:
            return self._reader.deserialize(raw, msgtype)
        except Exception as err:  # noqa: BLE001
            raise BagError(f'cannot decode a {topic} message of bag {self.path}: {_reason(err)}') from err

    def close(self) -> None:
        """Close the bag's files."""
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001, S110 - closing a half-read damaged bag may fail again
            pass

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f'{type(err).__name__}: {text[0]}' if text else type(err).__name__


def parse_twist_fields(text: str) -> list[str]:
    """``linear.x,angular.z`` -> the list of fields, checked."""
    fields = [f.strip() for f in text.split(',') if f.strip()]
    bad = [f for f in fields if f not in TWIST_FIELDS]
    if not fields or bad:
        raise BagError(f'--twist-fields {text!r}: each field must be one of {", ".join(TWIST_FIELDS)}')
    return fields


def action_extractor(
    msgtype: str, twist_fields: list[str], joints: list[str] | None, joint_field: str
) -> tuple[Callable[[Any], np.ndarray], Callable[[], list[str]]]:
    """A function message -> action vector (float64) for ``msgtype``, and one naming the components.

    Twist / TwistStamped: ``twist_fields``. Float64MultiArray: all of ``data`` (its length must not
    change). JointState: ``joint_field`` of ``joints`` by name (default: the joints of the first
    message, in its order).
    """
    kind = short_type(msgtype)
    names: list[str] = []
    if kind in ('geometry_msgs/Twist', 'geometry_msgs/TwistStamped'):
        names[:] = twist_fields

        def twist(msg: Any) -> np.ndarray:
            twist_msg = msg.twist if kind == 'geometry_msgs/TwistStamped' else msg
            return np.array([getattr(getattr(twist_msg, part), axis)
                             for part, axis in (f.split('.') for f in twist_fields)], np.float64)
        return twist, lambda: list(names)
    if kind == 'std_msgs/Float64MultiArray':
        def array(msg: Any) -> np.ndarray:
            values = np.asarray(msg.data, np.float64).reshape(-1)
            if not names:
                names[:] = [f'data[{i}]' for i in range(len(values))]
            if len(values) != len(names):
                raise BagError(f'Float64MultiArray actions change length: {len(names)} then '
                               f'{len(values)} values')
            return values
        return array, lambda: list(names)
    if kind == 'sensor_msgs/JointState':
        if joint_field not in JOINT_FIELDS:
            raise BagError(f'--joint-field must be one of {", ".join(JOINT_FIELDS)}, got {joint_field!r}')
        if joints:
            names[:] = joints

        def joint_state(msg: Any) -> np.ndarray:
            present = list(msg.name)
            if not names:
                names[:] = present
            values = np.asarray(getattr(msg, joint_field), np.float64).reshape(-1)
            missing = [j for j in names if j not in present]
            if missing or len(values) != len(present):
                raise BagError(f'a JointState message lacks the {joint_field} of {missing or names} '
                               f'(it names {present} and has {len(values)} {joint_field} values)')
            return np.array([values[present.index(j)] for j in names], np.float64)
        return joint_state, lambda: [f'{j}.{joint_field}' for j in names]
    raise BagError(f'actions of type {kind} are not supported; use one of {", ".join(ACTION_TYPES)}')
