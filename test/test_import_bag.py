"""``lewm import-bag`` on real rosbag2 files (MCAP and sqlite3) with CDR-serialised messages.

The bags are written with the rosbags writer and the ROS 2 Humble type store; the imported frames
are compared with ``lewm_ros.image_conversion`` applied to the very messages published, and the
actions with a schedule computed here independently of the importer.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

rosbags = pytest.importorskip('rosbags', reason='rosbags is not installed (pip install .[train])')

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from lewm_ros.image_conversion import (  # noqa: E402
    SUPPORTED_ENCODINGS,
    compressed_msg_to_square,
    image_msg_to_square,
    rgb_to_compressed_fields,
)
from training.cli import main  # noqa: E402
from training.data.dataset import load_clip_data  # noqa: E402
from training.data.episodes import EpisodeFile, partial_path  # noqa: E402

TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
T0 = 1_700_000_000 * 10**9  # a realistic epoch, in ns
SIZE = 8


def stamp(ns: int):
    return T['builtin_interfaces/msg/Time'](sec=ns // 10**9, nanosec=ns % 10**9)


def header(ns: int):
    return T['std_msgs/msg/Header'](stamp=stamp(ns), frame_id='camera')


def image(ns: int, rng: np.random.Generator, encoding: str = 'rgb8', height: int = 12, width: int = 16,
          big_endian: bool = False):
    channels = {'mono8': 1, '32FC1': 1, 'rgba8': 4, 'bgra8': 4}.get(encoding, 3)
    if encoding.startswith('32F'):
        values = rng.random((height, width, channels)).astype('>f4' if big_endian else '<f4')
        data = np.frombuffer(values.tobytes(), np.uint8)
    else:
        data = rng.integers(0, 256, height * width * channels, dtype=np.uint8)
    step = len(data) // height
    return T['sensor_msgs/msg/Image'](header=header(ns), height=height, width=width, encoding=encoding,
                                      is_bigendian=int(big_endian), step=step, data=data)


def compressed(ns: int, rng: np.random.Generator, fmt: str):
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    fields = rgb_to_compressed_fields(rgb, fmt)
    return T['sensor_msgs/msg/CompressedImage'](header=header(ns), format=fields['format'],
                                                data=np.frombuffer(fields['data'], np.uint8))


def twist_stamped(ns: int, values):
    v3 = T['geometry_msgs/msg/Vector3']
    twist = T['geometry_msgs/msg/Twist'](linear=v3(x=values[0], y=values[1], z=0.0),
                                         angular=v3(x=0.0, y=0.0, z=values[2]))
    return T['geometry_msgs/msg/TwistStamped'](header=header(ns), twist=twist)


def write_bag(path: Path, storage: str, messages: list[tuple[str, int, object]],
              topics: dict[str, str] | None = None) -> Path:
    """Write ``(topic, bag time ns, message)`` to a rosbag2 bag; ``topics`` adds empty topics."""
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        connections = {}
        for topic, msgtype in (topics or {}).items():
            connections[topic] = writer.add_connection(topic, msgtype, typestore=TS)
        for topic, ns, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=TS)
            writer.write(connections[topic], ns, TS.serialize_cdr(msg, msg.__msgtype__))
    return path


def camera_and_twist(seconds: float = 2.0, camera_hz: float = 30.0, command_hz: float = 7.0,
                     command_delay_ns: int = 10_000_000, seed: int = 0):
    """A camera and a TwistStamped stream; command j has values (j, -j, 0.5 j)."""
    rng = np.random.default_rng(seed)
    cams = [(T0 + round(k * 1e9 / camera_hz), image(T0 + round(k * 1e9 / camera_hz), rng))
            for k in range(int(seconds * camera_hz))]
    cmds = [(T0 + command_delay_ns + round(j * 1e9 / command_hz), (float(j), float(-j), 0.5 * j))
            for j in range(int(seconds * command_hz) + 1)]
    messages = [('/cam', ns + 2_000_000, msg) for ns, msg in cams]  # received 2 ms after the stamp
    messages += [('/cmd', ns + 1_000_000, twist_stamped(ns, v)) for ns, v in cmds]
    messages.sort(key=lambda m: m[1])
    return cams, cmds, messages


def run_import(capsys, bags, out, *options) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(['import-bag', *map(str, bags), '--out', str(out), *map(str, options)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def held_command(cmds, t_ns):
    """Index of the command in force at ``t_ns`` (the last one stamped at or before it), or None."""
    earlier = [j for j, (ns, _) in enumerate(cmds) if ns <= t_ns]
    return earlier[-1] if earlier else None


@pytest.mark.parametrize('storage', STORAGES)
def test_frames_and_actions_follow_the_command_schedule(tmp_path, capsys, storage):
    cams, cmds, messages = camera_and_twist()
    bag = write_bag(tmp_path / f'drive_{storage}', storage, messages)
    out = tmp_path / 'robot.h5'
    rc, stdout, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                                 '--rate', 10, '--img-size', SIZE,
                                 '--twist-fields', 'linear.x,linear.y,angular.z')
    assert rc == 0, err
    # 30 Hz -> 10 Hz keeps every third frame; frame 0 precedes the first command (10 ms later) and is
    # dropped, so the episode is frames 3, 6, 9, ... each with the command stamped last before it
    expected = list(range(3, len(cams), 3))
    with EpisodeFile(out) as f:
        assert f.num_episodes == 1 and f.num_frames == len(expected)
        episode = f.episode(0)
        attrs = f.attrs
    for row, k in enumerate(expected):
        np.testing.assert_array_equal(episode['pixels'][row], image_msg_to_square(cams[k][1], SIZE))
        if row < len(expected) - 1:
            np.testing.assert_array_equal(episode['actions'][row], cmds[held_command(cmds, cams[k][0])][1])
    assert np.isnan(episode['actions'][-1]).all()
    assert attrs['stamp_source'] == 'header' and attrs['policy'] == 'teleop'
    assert attrs['complete'] and attrs['control_rate_hz'] == 10.0 and attrs['image_size'] == SIZE
    assert json.loads(attrs['source_bags']) == [bag.name]
    assert attrs['camera_topic'] == '/cam' and attrs['action_topic'] == '/cmd'
    assert json.loads(attrs['action_names']) == ['linear.x', 'linear.y', 'angular.z']
    kept = episode['actions'][:-1]
    np.testing.assert_array_equal(attrs['action_low'], kept.min(axis=0))
    np.testing.assert_array_equal(attrs['action_high'], kept.max(axis=0))
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary['frames'] == len(expected) and summary['dropped_frames']['no_command_yet'] == 1
    assert 'dropped: 1 no command yet' in err
    assert not partial_path(out).exists()

    data = load_clip_data(out, history=3, frameskip=1, image_size=SIZE, val_fraction=0)
    assert len(data.train) == len(expected) - 3 and data.action_dim == 3


def test_twist_without_header_uses_bag_time_and_stale_commands_end_the_episode(tmp_path, capsys):
    """Twist has no header: both streams are aligned on bag time, whatever the camera's stamps say."""
    rng = np.random.default_rng(1)
    v3 = T['geometry_msgs/msg/Vector3']
    messages = []
    for k in range(40):  # 20 Hz camera; its header clock is 1000 s off and must be ignored
        ns = T0 + k * 50_000_000
        messages.append(('/cam', ns, image(ns - 1000 * 10**9, rng)))
    command_times = [T0 + j * 100_000_000 + 1 for j in range(10)]  # 10 Hz for 1 s, then silence
    for j, ns in enumerate(command_times):
        messages.append(('/cmd_vel', ns, T['geometry_msgs/msg/Twist'](linear=v3(x=j, y=0.0, z=0.0),
                                                                      angular=v3(x=0.0, y=0.0, z=-j))))
    messages.sort(key=lambda m: m[1])
    bag = write_bag(tmp_path / 'twist', 'mcap', messages)
    out = tmp_path / 'twist.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd_vel',
                            '--rate', 20, '--img-size', SIZE, '--twist-fields', 'angular.z,linear.x',
                            '--max-command-age', 0.3)
    assert rc == 0, err
    with EpisodeFile(out) as f:
        episode, attrs = f.episode(0), f.attrs
        assert f.num_episodes == 1
    assert attrs['stamp_source'] == 'bag'
    # frame k (bag time k * 50 ms) holds command floor(k / 2) (sent 1 ns after k * 50 ms for even k);
    # frame 0 has none, and frames past 0.9 s + 0.3 s (k > 24) have a stale command
    kept = list(range(1, 25))
    assert len(episode['actions']) == len(kept)
    held = [max(j for j, ns in enumerate(command_times) if ns <= T0 + k * 50_000_000) for k in kept[:-1]]
    expected = np.array([[-j, j] for j in held], np.float32)
    np.testing.assert_array_equal(episode['actions'][:-1], expected)
    assert 'stale command' in err and json.loads(attrs['drop_counts'])['stale_command'] == 40 - 25


@pytest.mark.parametrize(('rate', 'kept'), [(30, list(range(60))), (15, list(range(0, 60, 2)))])
def test_a_jittery_camera_keeps_a_regular_grid(tmp_path, capsys, rate, kept):
    """Frames 30 Hz +- 6 ms (stamp jitter): all kept at --rate 30, every other one at 15."""
    rng = np.random.default_rng(7)
    times = [T0 + round(k * 1e9 / 30) + int(rng.integers(-6, 7)) * 1_000_000 for k in range(60)]
    frames = [(ns, image(ns, rng)) for ns in times]
    messages = [('/cam', ns, msg) for ns, msg in frames]
    messages += [('/cmd', T0 - 10**8 + j * 20_000_000, twist_stamped(T0 - 10**8 + j * 20_000_000, (j, 0, 0)))
                 for j in range(110)]
    bag = write_bag(tmp_path / 'jitter', 'mcap', sorted(messages, key=lambda m: m[1]))
    out = tmp_path / 'jitter.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', rate, '--img-size', SIZE)
    assert rc == 0, err
    with EpisodeFile(out) as f:
        pixels = f.column('pixels')[:]
    np.testing.assert_array_equal(pixels, np.stack([image_msg_to_square(frames[k][1], SIZE) for k in kept]))


def test_commands_with_nan_are_ignored_and_counted(tmp_path, capsys):
    """A NaN command does not reach the file: the command before it stays in force."""
    cams, cmds, messages = camera_and_twist(seconds=1.0)
    bad = 3  # command 3 holds NaN
    nan_command = twist_stamped(cmds[bad][0], (float('nan'), 0.0, 0.0))
    messages = [(t, ns, nan_command if t == '/cmd' and ns == cmds[bad][0] + 1_000_000 else m)
                for t, ns, m in messages]
    bag = write_bag(tmp_path / 'nan', 'mcap', messages)
    out = tmp_path / 'nan.h5'
    rc, stdout, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                                 '--rate', 30, '--img-size', SIZE)
    assert rc == 0, err
    assert '1 commands with NaN or inf ignored' in err
    assert json.loads(stdout.strip().splitlines()[-1])['non_finite_commands'] == 1
    with EpisodeFile(out) as f:
        actions = f.column('actions')[:-1]
    assert np.isfinite(actions).all()
    good = [c for j, c in enumerate(cmds) if j != bad]
    expected = [good[held_command(good, ns)][1][:2] for ns, _ in cams[1:-1]]
    np.testing.assert_array_equal(actions, expected)


def test_episodes_split_on_camera_gaps_and_boundary_messages(tmp_path, capsys):
    rng = np.random.default_rng(2)
    messages, camera_times = [], []
    for k in range(60):  # 10 Hz with a 2 s pause after frame 29
        ns = T0 + k * 100_000_000 + (2 * 10**9 if k >= 30 else 0)
        camera_times.append(ns)
        messages.append(('/cam', ns, image(ns, rng)))
    for j in range(80):  # commands every 50 ms, from before the first frame to after the last
        ns = T0 - 10_000_000 + j * 50_000_000
        messages.append(('/cmd', ns, T['std_msgs/msg/Float64MultiArray'](
            layout=T['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0), data=np.array([j, 2.0 * j]))))
    # episode boundaries: Bool(true) before frame 10, Bool(false) (ignored) before frame 20
    messages.append(('/reset', camera_times[10] - 1, T['std_msgs/msg/Bool'](data=True)))
    messages.append(('/reset', camera_times[20] - 1, T['std_msgs/msg/Bool'](data=False)))
    messages.sort(key=lambda m: m[1])
    bag = write_bag(tmp_path / 'gaps', 'sqlite3', messages)
    common = ['--camera-topic', '/cam', '--action-topic', '/cmd', '--rate', 10, '--img-size', SIZE,
              '--max-command-age', 5]

    def lengths(out, *options):
        rc, _, err = run_import(capsys, [bag], out, *common, *options)
        assert rc == 0, err
        with EpisodeFile(out) as f:
            return f.lengths.tolist()

    assert lengths(tmp_path / 'one.h5') == [60]
    assert lengths(tmp_path / 'gap.h5', '--split-gap', 1.0) == [30, 30]
    assert lengths(tmp_path / 'both.h5', '--split-gap', 1.0, '--boundary-topic', '/reset') == [10, 20, 30]
    assert lengths(tmp_path / 'short.h5', '--split-gap', 1.0, '--boundary-topic', '/reset',
                   '--min-length', 15) == [20, 30]
    # the commands stop 50 ms after frame 59 of the second part; Empty messages split as Bool(true) does
    empty = [('/cam', ns, image(ns, rng)) for ns in camera_times[:20]]
    empty += [('/cmd', ns - 5_000_000, T['std_msgs/msg/Float64MultiArray'](
        layout=T['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0), data=np.array([1.0])))
        for ns in camera_times[:20]]
    empty += [('/new_episode', camera_times[5] - 1, T['std_msgs/msg/Empty']())]
    empty.sort(key=lambda m: m[1])
    bag = write_bag(tmp_path / 'empty_msgs', 'mcap', empty)
    assert lengths(tmp_path / 'empty.h5', '--boundary-topic', '/new_episode') == [5, 15]


@pytest.mark.parametrize('encoding', [*SUPPORTED_ENCODINGS, '32FC3-bigendian', 'jpeg', 'png'])
def test_every_camera_encoding_gives_the_planner_node_pixels(tmp_path, capsys, encoding):
    rng = np.random.default_rng(3)
    frames = []
    for k in range(6):
        ns = T0 + k * 100_000_000
        if encoding in ('jpeg', 'png'):
            frames.append((ns, compressed(ns, rng, encoding)))
        else:
            big_endian = encoding.endswith('bigendian')
            frames.append((ns, image(ns, rng, encoding.split('-')[0], big_endian=big_endian)))
    messages = [('/cam', ns, msg) for ns, msg in frames]
    messages += [('/cmd', ns - 1000, twist_stamped(ns - 1000, (k, 0.0, 0.0)))
                 for k, (ns, _) in enumerate(frames)]
    messages.sort(key=lambda m: m[1])
    storage = 'mcap' if len(encoding) % 2 else 'sqlite3'
    bag = write_bag(tmp_path / 'enc', storage, messages)
    out = tmp_path / 'enc.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert rc == 0, err
    with EpisodeFile(out) as f:
        pixels = f.episode(0)['pixels']
        np.testing.assert_array_equal(f.episode(0)['actions'][:-1], [[k, 0.0] for k in range(5)])
    convert = compressed_msg_to_square if encoding in ('jpeg', 'png') else image_msg_to_square
    np.testing.assert_array_equal(pixels, np.stack([convert(msg, SIZE) for _, msg in frames]))


def test_joint_state_actions_by_name_and_field(tmp_path, capsys):
    rng = np.random.default_rng(4)
    messages = []
    for k in range(8):
        ns = T0 + k * 100_000_000
        messages.append(('/cam', ns + 1, image(ns + 1, rng)))
        messages.append(('/joint_cmd', ns, T['sensor_msgs/msg/JointState'](
            header=header(ns), name=['a', 'b', 'c'], position=np.array([k, 10.0 + k, 20.0 + k]),
            velocity=np.array([-k, -10.0 - k, -20.0 - k]), effort=np.array([]))))
    messages.sort(key=lambda m: m[1])
    bag = write_bag(tmp_path / 'arm', 'mcap', messages)
    out = tmp_path / 'arm.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/joint_cmd',
                            '--rate', 10, '--img-size', SIZE, '--joints', 'c,a', '--joint-field', 'velocity',
                            '--action-low=-30,-10', '--action-high', '0,0', '--label', 'scripted')
    assert rc == 0, err
    with EpisodeFile(out) as f:
        actions, attrs = f.episode(0)['actions'], f.attrs
    np.testing.assert_array_equal(actions[:-1], [[-20.0 - k, -k] for k in range(7)])
    assert json.loads(attrs['action_names']) == ['c.velocity', 'a.velocity']
    np.testing.assert_array_equal(attrs['action_low'], [-30, -10])
    np.testing.assert_array_equal(attrs['action_high'], [0, 0])
    assert attrs['policy'] == 'scripted'


# -- bad input: one error line, exit code 1, no output file ------------------------------------------
def assert_clean_failure(rc, err, out, *needles):
    assert rc == 1, err
    assert 'Traceback' not in err, err
    lines = [line for line in err.replace('\r', '\n').splitlines()
             if line.strip() and not line.startswith('import-bag: ')]  # the progress bar's lines
    assert len(lines) == 1 and lines[0].startswith('lewm import-bag: error: '), err
    for needle in needles:
        assert needle in lines[0], err
    assert not out.exists() and not partial_path(out).exists()


@pytest.fixture
def drive_bag(tmp_path):
    _, _, messages = camera_and_twist(seconds=1.0)
    return write_bag(tmp_path / 'drive', 'mcap', messages)


def test_a_missing_topic_lists_what_the_bag_holds(tmp_path, capsys, drive_bag):
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [drive_bag], out, '--camera-topic', '/camera/image_raw',
                            '--action-topic', '/cmd', '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, '/camera/image_raw', '/cam (sensor_msgs/Image, 30 msgs)',
                         '/cmd (geometry_msgs/TwistStamped, 8 msgs)')


def test_actions_of_the_wrong_type_are_refused(tmp_path, capsys, drive_bag):
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [drive_bag], out, '--camera-topic', '/cam', '--action-topic', '/cam',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, '--action-topic /cam is sensor_msgs/Image', 'geometry_msgs/Twist',
                         '/cmd (geometry_msgs/TwistStamped')
    rc, _, err = run_import(capsys, [drive_bag], out, '--camera-topic', '/cmd', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, '--camera-topic /cmd is geometry_msgs/TwistStamped')


def test_an_empty_bag_is_refused(tmp_path, capsys):
    out = tmp_path / 'x.h5'
    bag = write_bag(tmp_path / 'empty', 'sqlite3', [], topics={'/cam': 'sensor_msgs/msg/Image',
                                                                '/cmd': 'geometry_msgs/msg/Twist'})
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'no messages')
    bare = write_bag(tmp_path / 'bare', 'mcap', [])
    rc, _, err = run_import(capsys, [bare], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'holds no topics')


@pytest.mark.parametrize('storage', STORAGES)
def test_a_truncated_or_damaged_bag_is_refused(tmp_path, capsys, storage):
    _, _, messages = camera_and_twist(seconds=1.0)
    bag = write_bag(tmp_path / 'cut', storage, messages)
    data_file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[:len(raw) // 2])
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'cut')
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: [not, a, mapping')
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'cannot read bag')
    rc, _, err = run_import(capsys, [tmp_path / 'nowhere'], out, '--camera-topic', '/cam', '--action-topic',
                            '/cmd', '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'does not exist')


def test_camera_and_commands_that_do_not_overlap_are_refused(tmp_path, capsys):
    cams, _, messages = camera_and_twist(seconds=1.0)
    late = [(topic, ns + (5 * 10**9 if topic == '/cmd' else 0), msg) for topic, ns, msg in messages]
    late = [(t, ns, twist_stamped(ns, (1.0, 2.0, 3.0)) if t == '/cmd' else msg) for t, ns, msg in late]
    bag = write_bag(tmp_path / 'late', 'mcap', sorted(late, key=lambda m: m[1]))
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, 'no camera frame has a command', '/cam spans', '/cmd')


def test_a_bad_frame_leaves_no_file_behind(tmp_path, capsys):
    """A frame that cannot be converted fails the import during writing; the .partial file goes too."""
    cams, cmds, messages = camera_and_twist(seconds=1.0)
    broken = image(cams[-1][0], np.random.default_rng(0))
    broken.encoding = 'yuv422'
    messages = [(t, ns, broken if msg is cams[-1][1] else msg) for t, ns, msg in messages]
    bag = write_bag(tmp_path / 'broken', 'sqlite3', messages)
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 30, '--img-size', SIZE)
    assert_clean_failure(rc, err, out, "unsupported encoding 'yuv422'")


def test_options_are_checked_and_existing_files_kept(tmp_path, capsys, drive_bag):
    out = tmp_path / 'x.h5'
    common = ['--camera-topic', '/cam', '--action-topic', '/cmd', '--img-size', SIZE]
    rc, _, err = run_import(capsys, [drive_bag], out, *common, '--rate', 60)
    assert_clean_failure(rc, err, out, 'the camera publishes about 30 Hz', '--rate 60')
    rc, _, err = run_import(capsys, [drive_bag], out, *common, '--rate', 10, '--twist-fields', 'linear.w')
    assert_clean_failure(rc, err, out, '--twist-fields')
    rc, _, err = run_import(capsys, [drive_bag], out, *common, '--rate', 10, '--action-low', '0')
    assert_clean_failure(rc, err, out, '--action-low')
    with h5py.File(out, 'w') as f:
        f.attrs['mine'] = 1
    rc, _, err = run_import(capsys, [drive_bag], out, *common, '--rate', 10)
    assert rc == 1 and 'already exists' in err
    with h5py.File(out, 'r') as f:
        assert f.attrs['mine'] == 1
    rc, _, err = run_import(capsys, [drive_bag, drive_bag], out, *common, '--rate', 10, '--overwrite')
    assert rc == 0, err
    with EpisodeFile(out) as f:
        assert f.num_episodes == 2 and json.loads(f.attrs['source_bags']) == ['drive', 'drive']


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['import-bag', '--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ('--camera-topic', '--action-topic', '--rate', '--img-size', '--out', '--twist-fields',
                   '--joints', '--joint-field', '--stamp', '--max-command-age', '--split-gap',
                   '--boundary-topic', '--min-length', '--action-low', '--action-high', '--label',
                   'zero-order hold', 'ros2 bag record'):
        assert option in text, option


def test_camera_stamps_out_of_bag_order_across_an_episode_boundary(tmp_path, capsys):
    """Frames are ordered by their stamps; one that reaches the bag early for the next episode waits."""
    rng = np.random.default_rng(5)
    frames = [(T0 + k * 100_000_000 + (2 * 10**9 if k >= 10 else 0), None) for k in range(20)]
    frames = [(ns, image(ns, rng)) for ns, _ in frames]
    receive = [ns + 1_000_000 for ns, _ in frames]
    receive[10] = receive[9] - 50_000_000  # frame 10 (episode 2) reaches the bag before frame 9
    messages = [('/cam', receive[k], msg) for k, (_, msg) in enumerate(frames)]
    messages += [('/cmd', ns - 10, twist_stamped(ns - 10, (k, 0.0, 0.0)))
                 for k, (ns, _) in enumerate(frames)]
    bag = write_bag(tmp_path / 'shuffled', 'mcap', sorted(messages, key=lambda m: m[1]))
    out = tmp_path / 'shuffled.h5'
    rc, _, err = run_import(capsys, [bag], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE, '--split-gap', 1.0)
    assert rc == 0, err
    with EpisodeFile(out) as f:
        assert f.lengths.tolist() == [10, 10]
        pixels = f.column('pixels')[:]
        actions = f.column('actions')[:]
    np.testing.assert_array_equal(pixels, np.stack([image_msg_to_square(m, SIZE) for _, m in frames]))
    np.testing.assert_array_equal(actions[:9, 0], np.arange(9))
    np.testing.assert_array_equal(actions[10:19, 0], np.arange(10, 19))


def test_stamp_option_forces_a_clock(tmp_path, capsys):
    """--stamp bag ignores good header stamps; --stamp header refuses messages without them."""
    cams, cmds, messages = camera_and_twist(seconds=1.0)
    # the commands' receive times lag their stamps by 1 s: on bag time frame k holds an older command
    messages = [(t, ns + (10**9 if t == '/cmd' else 0), m) for t, ns, m in messages]
    bag = write_bag(tmp_path / 'lag', 'sqlite3', sorted(messages, key=lambda m: m[1]))
    common = ['--camera-topic', '/cam', '--action-topic', '/cmd', '--rate', 30, '--img-size', SIZE]
    rc, _, err = run_import(capsys, [bag], tmp_path / 'header.h5', *common)
    assert rc == 0, err
    rc, _, err = run_import(capsys, [bag], tmp_path / 'bag.h5', *common, '--stamp', 'bag')
    assert rc == 1 and 'no camera frame has a command' in err and '(bag stamps' in err, err
    with EpisodeFile(tmp_path / 'header.h5') as f:
        assert f.attrs['stamp_source'] == 'header' and f.num_frames == len(cams) - 1
    v3 = T['geometry_msgs/msg/Vector3']
    plain = T['geometry_msgs/msg/Twist'](linear=v3(x=1.0, y=0.0, z=0.0), angular=v3(x=0.0, y=0.0, z=0.0))
    twist = write_bag(tmp_path / 'plain', 'mcap', [('/cam', T0, image(T0, np.random.default_rng(0))),
                                                   ('/cmd', T0, plain)])
    out = tmp_path / 'x.h5'
    rc, _, err = run_import(capsys, [twist], out, *common, '--stamp', 'header')
    assert_clean_failure(rc, err, out, '--stamp header', 'geometry_msgs/Twist, which has no header')


def test_a_ros1_bag_imports_too(tmp_path, capsys):
    from rosbags.rosbag1 import Writer as Writer1

    ts1 = get_typestore(Stores.ROS1_NOETIC)
    t1 = ts1.types
    rng = np.random.default_rng(6)
    path = tmp_path / 'drive.bag'
    published = []
    with Writer1(path) as writer:
        cam = writer.add_connection('/cam', 'sensor_msgs/msg/Image', typestore=ts1)
        cmd = writer.add_connection('/cmd', 'geometry_msgs/msg/TwistStamped', typestore=ts1)
        for k in range(10):
            ns = T0 + k * 100_000_000
            head = t1['std_msgs/msg/Header'](seq=k, stamp=t1['builtin_interfaces/msg/Time'](
                sec=ns // 10**9, nanosec=ns % 10**9), frame_id='cam')
            ros2_like = image(ns, rng, 'bgr8')
            msg = t1['sensor_msgs/msg/Image'](header=head, height=ros2_like.height, width=ros2_like.width,
                                              encoding='bgr8', is_bigendian=0, step=ros2_like.step,
                                              data=ros2_like.data)
            published.append(msg)
            v3 = t1['geometry_msgs/msg/Vector3']
            twist = t1['geometry_msgs/msg/TwistStamped'](header=head, twist=t1['geometry_msgs/msg/Twist'](
                linear=v3(x=k, y=-k, z=0.0), angular=v3(x=0.0, y=0.0, z=0.0)))
            writer.write(cmd, ns, ts1.serialize_ros1(twist, 'geometry_msgs/msg/TwistStamped'))
            writer.write(cam, ns + 1, ts1.serialize_ros1(msg, 'sensor_msgs/msg/Image'))
    out = tmp_path / 'ros1.h5'
    rc, _, err = run_import(capsys, [path], out, '--camera-topic', '/cam', '--action-topic', '/cmd',
                            '--rate', 10, '--img-size', SIZE)
    assert rc == 0, err
    with EpisodeFile(out) as f:
        episode, attrs = f.episode(0), f.attrs
    assert attrs['stamp_source'] == 'header'
    expected = np.stack([image_msg_to_square(m, SIZE) for m in published])
    np.testing.assert_array_equal(episode['pixels'], expected)
    np.testing.assert_array_equal(episode['actions'][:-1], [[k, -k] for k in range(9)])
