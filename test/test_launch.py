"""Launch-file tests (launch_pytest): planner.launch.py and sim.launch.py start and carry messages.

They need a ROS 2 distro (launch, launch_ros, launch_pytest): in a plain venv they are skipped with
the reason. Node behaviour itself is tested in-process with real rclpy by test_planner_node.py and
test_sim_in_the_loop.py, which run everywhere.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

launch_pytest = pytest.importorskip(
    'launch_pytest',
    reason='launch_pytest is not installed: launch tests run inside a ROS 2 distro '
           '(apt install ros-$ROS_DISTRO-launch-pytest, then colcon test)')
import launch  # noqa: E402
import rclpy  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

LAUNCH_DIR = Path(__file__).resolve().parent.parent / 'launch'
WAIT_S = 60.0  # bounds every wait: a launch error must fail the test, not hang it


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint: these tests check wiring, not plan quality."""
    from lewm_ros.checkpoint import build_metadata, save_checkpoint
    from lewm_ros.model import LeWM, ModelConfig

    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    bounds = [1.0] * model.config.action_dim
    path = tmp_path_factory.mktemp('launch') / 'micro'
    save_checkpoint(path, model, build_metadata(model, action_low=[-b for b in bounds], action_high=bounds))
    return path


def _include(name: str, **arguments: str) -> IncludeLaunchDescription:
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_DIR / name)),
                                    launch_arguments=arguments.items())


@launch_pytest.fixture
def planner_launch(checkpoint: Path) -> launch.LaunchDescription:
    return launch.LaunchDescription([
        _include('planner.launch.py', checkpoint=str(checkpoint), device='cpu'),
        launch_pytest.actions.ReadyToTest(),
    ])


@launch_pytest.fixture
def sim_launch(checkpoint: Path) -> launch.LaunchDescription:
    return launch.LaunchDescription([
        _include('sim.launch.py', checkpoint=str(checkpoint), device='cpu', img_size='64'),
        launch_pytest.actions.ReadyToTest(),
    ])


class Probe:
    """A test node that counts messages on the planner's outputs and can feed it images."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray

        rclpy.init()
        self.node = Node('launch_probe')
        self.surprise, self.actions = threading.Event(), threading.Event()
        self.node.create_subscription(DiagnosticArray, '/lewm/surprise', lambda m: self.surprise.set(), 10)
        self.node.create_subscription(Float64MultiArray, '/lewm/action', lambda m: self.actions.set(), 10)
        self._thread = threading.Thread(target=rclpy.spin, args=(self.node,), daemon=True)
        self._thread.start()

    def feed_images(self, until: threading.Event, size: int = 64) -> None:
        """Publish camera frames and a goal until ``until`` is set (or the wait bound passes)."""
        from sensor_msgs.msg import Image

        from lewm_ros.image_conversion import rgb_to_image_fields

        goal_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        camera = self.node.create_publisher(Image, '/camera/image_raw', 10)
        goal = self.node.create_publisher(Image, '/lewm/goal_image', goal_qos)
        rng = np.random.default_rng(0)

        def image() -> Image:
            return Image(**rgb_to_image_fields(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))

        goal.publish(image())
        for _ in range(int(WAIT_S * 10)):
            camera.publish(image())
            if until.wait(0.1):
                return

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown()
        self._thread.join(timeout=5.0)


@pytest.mark.launch(fixture=planner_launch)
def test_planner_launch_publishes_surprise_and_actions() -> None:
    probe = Probe()
    try:
        both = threading.Event()
        feeder = threading.Thread(target=probe.feed_images, args=(both,), daemon=True)
        feeder.start()
        assert probe.surprise.wait(WAIT_S), 'no message on /lewm/surprise'
        assert probe.actions.wait(WAIT_S), 'no message on /lewm/action'
        both.set()
        feeder.join(timeout=5.0)
    finally:
        probe.close()


@pytest.mark.launch(fixture=sim_launch)
def test_sim_launch_closes_the_loop() -> None:
    probe = Probe()
    try:
        assert probe.surprise.wait(WAIT_S), 'no message on /lewm/surprise'
        assert probe.actions.wait(WAIT_S), 'no message on /lewm/action'
    finally:
        probe.close()
