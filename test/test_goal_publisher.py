"""``goal_publisher``: a latched goal image that a planner started later still receives.

The node runs as its own process (as ``ros2 run`` starts it); the subscriber is created only after
the node has published, with the planner's goal QoS, and must still get the image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ros_test_utils import reap, wait_for

REPO = Path(__file__).resolve().parent.parent


def _publisher(*args: str, log: Path) -> subprocess.Popen:
    environment = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
                   'PYTHONUNBUFFERED': '1'}
    with open(log, 'w') as out:
        return subprocess.Popen([sys.executable, '-m', 'lewm_ros.nodes.goal_publisher', *args],
                                stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=REPO)


def _stop(process: subprocess.Popen) -> int:
    try:
        process.send_signal(signal.SIGINT)
        return process.wait(timeout=30)
    finally:
        reap(process)


def test_a_subscriber_started_after_the_publisher_gets_the_goal(tmp_path, rclpy_context, spinner):
    import rclpy
    from PIL import Image as PILImage
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    goal = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    PILImage.fromarray(goal).save(tmp_path / 'goal.png')
    log = tmp_path / 'goal.log'
    topic = f'/goal_test_{os.getpid()}/goal_image'
    process = _publisher('--image', str(tmp_path / 'goal.png'), '--goal-topic', topic, log=log)
    try:
        started = wait_for(lambda: 'published goal' in log.read_text() or process.poll() is not None,
                           60.0, 0.1)
        assert started, log.read_text()
        assert process.poll() is None, log.read_text()
        node = spinner.add(rclpy.create_node('late_planner', context=rclpy_context))
        received = []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(Image, topic, received.append, latched)
        assert wait_for(lambda: bool(received), 20.0, 0.05), 'the late subscriber got no goal'
    finally:
        code = _stop(process)
    msg = received[0]
    assert (msg.width, msg.height, msg.encoding) == (40, 30, 'rgb8')
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(30, 40, 3), goal)
    output = log.read_text()
    assert code == 0, output
    assert 'Traceback' not in output, output


def test_a_goal_from_a_bag_frame(tmp_path):
    pytest.importorskip('rosbags', reason='rosbags is not installed (pip install .[train])')
    from test_import_bag import T0, compressed, image, write_bag

    from lewm_ros.image_conversion import image_msg_to_rgb
    from lewm_ros.nodes.goal_publisher import GoalSourceError, rgb_from_bag

    rng = np.random.default_rng(1)
    raw = [image(T0 + k, rng) for k in range(3)]
    packed = [compressed(T0 + k, rng, 'png') for k in range(3)]
    bag = write_bag(tmp_path / 'frames', 'mcap', [('/cam', T0 + k, raw[k]) for k in range(3)]
                    + [('/cam/compressed', T0 + k, packed[k]) for k in range(3)])
    np.testing.assert_array_equal(rgb_from_bag(bag, '/cam', 1), image_msg_to_rgb(raw[1]))
    import io

    from PIL import Image as PILImage

    last = np.asarray(PILImage.open(io.BytesIO(bytes(packed[-1].data))).convert('RGB'))
    np.testing.assert_array_equal(rgb_from_bag(bag, '/cam/compressed', -1), last)
    with pytest.raises(GoalSourceError, match='has 3 messages'):
        rgb_from_bag(bag, '/cam', 3)
    with pytest.raises(GoalSourceError, match='no such topic.*holds: /cam'):
        rgb_from_bag(bag, '/camera', 0)


def test_a_bad_image_is_one_error_line_and_exit_1(tmp_path):
    (tmp_path / 'goal.png').write_bytes(b'not a png')
    for args in (['--image', str(tmp_path / 'missing.png')], ['--image', str(tmp_path / 'goal.png')]):
        log = tmp_path / 'bad.log'
        process = _publisher(*args, log=log)
        code = process.wait(timeout=60)
        output = log.read_text()
        assert code == 1, output
        assert output.startswith('goal_publisher: error: cannot read the goal image'), output
        assert 'Traceback' not in output
        assert len(output.strip().splitlines()) == 1, output


def test_the_robot_side_imports_no_offline_tools(tmp_path):
    """Without --bag the goal publisher needs neither rosbags nor the training package."""
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'g.png')
    code = ('import sys; from lewm_ros.nodes import goal_publisher as g; g.rgb_from_file(sys.argv[1]); '
            'bad = [m for m in ("rosbags", "h5py", "training", "mujoco") if m in sys.modules]; '
            'sys.exit(f"goal_publisher imported {bad}" if bad else 0)')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'g.png')], capture_output=True,
                            text=True, env=env, cwd='/')
    assert result.returncode == 0, result.stderr + result.stdout
