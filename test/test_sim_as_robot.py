"""scripts/sim_as_robot.py: sim_node as the robot, recorded over ROS 2 into rosbag2, imported, trained.

The default-suite tests record two short episodes in each storage format through real rclpy/DDS,
import them with ``lewm import-bag``, check the frames, commands and episode split against what
the teleop did (replaying the imported actions in a fresh simulator must give the imported frames
back), train a micro model for a few steps on the bag and let the planner node drive sim_node
with it. The slow test runs the whole script with real training and reports the success rate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('mujoco', reason='the sim node needs mujoco')
pytest.importorskip('rclpy', reason='rclpy is not installed')
pytest.importorskip('rosbags', reason='rosbags is not installed (pip install .[train])')

from ros_test_utils import wait_for  # noqa: E402

from training.cli import main  # noqa: E402
from training.data.episodes import EpisodeFile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'scripts' / 'sim_as_robot.py'
EPISODES, STEPS, SIZE, SEED = 2, 29, 32, 3  # 30 frames per episode; micro models are 32 px
STORAGES = ('mcap', 'sqlite3')


def load_script():
    spec = importlib.util.spec_from_file_location('sim_as_robot', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules['sim_as_robot'] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def sar():
    return load_script()


@pytest.fixture(scope='module')
def recorded(sar, tmp_path_factory):
    """Per storage format: the recording's result and the file ``lewm import-bag`` made of it."""
    root = tmp_path_factory.mktemp('sim_bags')
    out = {}
    for storage in STORAGES:
        result = sar.record(root / f'drive_{storage}', episodes=EPISODES, steps=STEPS, img_size=SIZE,
                            storage=storage, seed=SEED, progress=False)
        h5 = root / f'{storage}.h5'
        rc = main(['import-bag', str(result.bag), *map(str, sar.import_options(result.to_dict())),
                   '--out', str(h5)])
        assert rc == 0
        out[storage] = (result, h5)
    return out


def read_bag(path: Path):
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        types = {c.topic: (c.msgtype, c.msgdef.data if hasattr(c.msgdef, 'data') else c.msgdef)
                 for c in reader.connections}
        messages = [(c.topic, t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    return types, messages


@pytest.mark.parametrize('storage', STORAGES)
def test_the_bag_holds_camera_commands_and_episode_ends_on_the_sim_clock(recorded, storage):
    result, _ = recorded[storage]
    types, messages = read_bag(result.bag)
    assert {t: m for t, (m, _) in types.items()} == {
        '/camera/image_raw': 'sensor_msgs/msg/Image', '/lewm/action': 'std_msgs/msg/Float64MultiArray',
        '/episode_end': 'std_msgs/msg/Empty'}
    assert 'uint8[] data' in types['/camera/image_raw'][1]  # the definition is stored with the type
    frames = [(t, m) for topic, t, m in messages if topic == '/camera/image_raw']
    commands = [t for topic, t, _ in messages if topic == '/lewm/action']
    ends = [t for topic, t, _ in messages if topic == '/episode_end']
    assert len(frames) == result.frames == EPISODES * (STEPS + 1)
    assert len(ends) == result.boundaries == EPISODES
    # a decision at each frame but the last, and the 20 Hz keep-alive between frames: two per 100 ms
    # frame period, less the one that ends the episode (it publishes /episode_end instead)
    assert len(commands) == result.commands == EPISODES * (3 * STEPS - 1)
    # receive time on the sim clock = the sim's own stamp: both are the simulation time of the frame
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in frames]
    assert [t for t, _ in frames] == stamps
    gaps = np.diff(stamps[:STEPS + 1])
    # frame 0 comes with the reset, half a command period (25 ms) after a camera tick: 75 ms before the next
    assert gaps[0] == 75_000_000 and (gaps[1:] == 100_000_000).all()
    assert frames[STEPS][0] < ends[0] <= frames[STEPS + 1][0]  # the end between the two episodes


@pytest.mark.parametrize('storage', STORAGES)
def test_import_gives_every_frame_with_the_command_that_moved_the_robot(recorded, storage):
    from lewm_ros.sim import make_env

    result, h5 = recorded[storage]
    with EpisodeFile(h5) as f:
        assert f.lengths.tolist() == [STEPS + 1] * EPISODES  # split at /episode_end
        attrs = dict(f.attrs)
        episodes = [f.episode(i) for i in range(EPISODES)]
    assert attrs['env_id'] == 'lewm/TwoRoom-v0' and attrs['frameskip'] == 5 and attrs['control_rate_hz'] == 10
    counts = json.loads(attrs['drop_counts'])
    assert counts['no_command_yet'] == counts['stale_command'] == counts['resampled_away'] == 0
    env = make_env('lewm/TwoRoom-v0', img_size=SIZE)
    try:
        for teleop, episode in zip(result.episodes, episodes, strict=True):
            actions = episode['actions']
            assert np.isnan(actions[-1]).all() and np.abs(actions[:-1]).max() <= 1.0
            np.testing.assert_array_equal(actions[:-1], np.asarray(teleop.commands, np.float32))
            # the actions replayed from the episode's start give the recorded frames back, exactly
            obs, _ = env.reset(seed=SEED + teleop.sim_episode)
            replayed = [obs] + [env.step(a)[0] for a in np.asarray(teleop.commands)]
            np.testing.assert_array_equal(episode['pixels'], np.stack(replayed))
    finally:
        env.close()


def test_a_model_trained_on_the_bag_drives_sim_node(recorded, tmp_path, rclpy_context, spinner):
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray

    from lewm_ros.nodes.planner_node import PlannerNode
    from lewm_ros.nodes.sim_node import SimNode

    _, h5 = recorded['mcap']
    run = tmp_path / 'run'
    assert main(['train', '--config', 'micro', '--data', str(h5), '--out', str(run), '--set',
                 'optim.max_steps=5', '--set', 'data.batch_size=4', '--device', 'cpu']) == 0
    sim = spinner.add(SimNode(context=rclpy_context, env_id='lewm/TwoRoom-v0', img_size=SIZE, mode='lockstep',
                              control_rate_hz=20.0, episode_steps=1000, auto_reset=False))
    spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(run / 'final'), device='cpu',
                            control_rate_hz=20.0, frame_driven=True, samples=16, iterations=2, elites=4,
                            horizon=2))
    probe = spinner.add(Node('sim_as_robot_probe', context=rclpy_context))
    actions = []
    probe.create_subscription(Float64MultiArray, 'lewm/action', lambda m: actions.append(list(m.data)), 100)
    assert wait_for(lambda: sim.steps >= 3, 60.0), f'the loop made {sim.steps} steps in 60 s'
    assert wait_for(lambda: len(actions) >= 3, 5.0)
    assert all(abs(a) <= 1.0 for action in actions for a in action)


def test_help_names_every_stage():
    result = subprocess.run([sys.executable, str(SCRIPT), '--help'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for word in ('record', 'import', 'train', 'calibrate', 'evaluate', 'all', '--storage', '--episodes',
                 '--steps'):
        assert word in result.stdout, word


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_whole_path_reaches_goals(tmp_path):
    """All stages with real training (15-30 min on 2 cores); the success rate must be above zero."""
    env = {**os.environ, 'ROS_DOMAIN_ID': str((int(os.environ.get('ROS_DOMAIN_ID', '0')) + 1) % 100)}
    result = subprocess.run([sys.executable, str(SCRIPT), 'all', '--out', str(tmp_path), '--episodes', '300',
                             '--calib-episodes', '30', '--steps', '2000', '--eval-episodes', '30',
                             '--ros-episodes', '5'], capture_output=True, text=True, timeout=3600, env=env)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / 'summary.json').read_text())
    print(f"success in MuJoCo {summary['eval']}, over ROS {summary['ros']}")
    assert summary['imported_frames'] == summary['recorded_frames'] == 300 * 101
    assert summary['eval']['success_rate'] > 0
