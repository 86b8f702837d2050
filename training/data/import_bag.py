"""``lewm import-bag``: turn rosbag recordings of a robot into an HDF5 episode file for ``lewm train``.

The camera stream is resampled to ``--rate`` Hz on the message stamps (the header stamp when the
camera and action messages carry one, the bag's receive time otherwise; ``--stamp``). Each kept
frame gets the command in force at its time (zero-order hold: the last action message at or
before it), which is the action applied after observing it, as docs/data-format.md asks. Frames
with no command yet, or whose command is older than ``--max-command-age``, are dropped; a
dropped frame ends the episode there, so every episode has a regular time step. Episodes are one
per bag, split further at camera gaps (``--split-gap``) and at ``--boundary-topic`` messages;
episodes shorter than ``--min-length`` frames are dropped. All drops are counted in the summary.

Frames are converted by ``lewm_ros.image_conversion``, the code the planner node runs on live
frames, so training and deployment see identical pixels. The bags are read twice: first the
stamps and commands (every check happens before the output file is created), then the kept
frames. The file is written as ``<out>.partial`` and renamed when complete; on any error the
partial file is removed.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lewm_ros.bag_reading import (
    ACTION_TYPES,
    BOUNDARY_TYPES,
    IMAGE_TYPES,
    JOINT_FIELDS,
    Bag,
    BagError,
    action_extractor,
    has_header,
    parse_twist_fields,
    stamp_ns,
)

DROP_REASONS = ('no_command_yet', 'stale_command', 'short_episode')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm import-bag``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        'example:\n'
        '  lewm import-bag drive_01 drive_02 --camera-topic /camera/image_raw --action-topic /cmd_vel \\\n'
        '      --rate 10 --img-size 64 --twist-fields linear.x,linear.y,angular.z --out data/robot.h5\n'
        'docs/robot.md: what to record, and the steps from a bag to a planner on the robot.')
    parser.description = (
        'Import rosbag recordings (rosbag2 MCAP or sqlite3 directories, .mcap/.db3 files, ROS 1 .bag)\n'
        'into an HDF5 episode file: camera frames resampled to --rate Hz, each with the command in\n'
        'force at its time (zero-order hold). Frames without a fresh command are dropped and end the\n'
        'episode there. Prints a summary (episodes, frames, dropped frames and why) and a JSON line.\n'
        'Record with e.g. `ros2 bag record -s mcap /camera/image_raw /cmd_vel`.')
    parser.add_argument('bags', nargs='+', metavar='BAG',
                        help='recordings to import (one episode or more each)')
    parser.add_argument('--camera-topic', required=True,
                        help='sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8, 32FC1, 32FC3) or '
                             'sensor_msgs/CompressedImage (jpeg/png) topic', metavar='TOPIC')
    parser.add_argument('--action-topic', required=True,
                        help='command topic: geometry_msgs/Twist or TwistStamped, std_msgs/Float64MultiArray '
                             'or sensor_msgs/JointState', metavar='TOPIC')
    parser.add_argument('--rate', type=float, required=True,
                        help='frames per second of the episodes (at most the camera rate); the planner runs '
                             'at this rate (control_rate_hz)', metavar='HZ')
    parser.add_argument('--img-size', type=int, required=True, help='side of the square frames (centre crop)',
                        metavar='N')
    parser.add_argument('--out', required=True, help='output HDF5 file (written as <out>.partial until done)',
                        metavar='F.h5')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    parser.add_argument('--twist-fields', default='linear.x,linear.y', metavar='FIELDS',
                        help='Twist/TwistStamped components that form the action, in order, from linear.x '
                             '... angular.z (default: linear.x,linear.y)')
    parser.add_argument('--joints', default=None, metavar='A,B,...',
                        help='JointState: comma-separated joint names, in order (default: all joints of the '
                             'first message)')
    parser.add_argument('--joint-field', choices=JOINT_FIELDS, default='position',
                        help='JointState: which field is the action (default: position)')
    parser.add_argument('--stamp', choices=('auto', 'header', 'bag'), default='auto',
                        help='time stamps: the header stamp, the bag receive time, or auto: header when both '
                             'the camera and the action messages carry a non-zero one, else bag (default)')
    parser.add_argument('--max-command-age', type=float, default=0.5, metavar='SECONDS',
                        help='seconds; a frame whose latest command is older is dropped (default: 0.5)')
    parser.add_argument('--split-gap', type=float, default=None, metavar='SECONDS',
                        help='seconds; start a new episode where the camera stream pauses longer than this '
                             '(default: one episode per bag)')
    parser.add_argument('--boundary-topic', default=None, metavar='TOPIC',
                        help='std_msgs/Bool (true) or std_msgs/Empty topic; each message starts a new '
                             'episode')
    parser.add_argument('--min-length', type=int, default=2, metavar='N',
                        help='drop episodes with fewer frames (default: 2)')
    parser.add_argument('--action-low', default=None, metavar='A,B,...',
                        help='comma-separated action lower bounds (default: the minimum in the data); write '
                             'negative values as --action-low=-1,-1')
    parser.add_argument('--action-high', default=None, metavar='A,B,...',
                        help='comma-separated action upper bounds (default: the maximum in the data)')
    parser.add_argument('--label', default='teleop',
                        help='the policy attribute: who drove the robot (default: teleop)')
    parser.add_argument('--env-id', default='robot',
                        help='the env_id attribute: a name for this task/robot (default: robot)')
    parser.add_argument('--frameskip', type=int, default=1, metavar='N',
                        help='the recommended frameskip attribute: frames per action block in training '
                             '(default: 1)')


# -- planning: which frames, which actions --------------------------------------------------------
@dataclass
class Scan:
    """What the first pass over one bag found: time stamps and commands."""

    bag: Path
    camera_type: str
    stamp_source: str
    camera_index: np.ndarray  # position of each camera message in bag order
    camera_t: np.ndarray  # seconds, on the chosen stamps
    camera_bag_t: np.ndarray  # seconds, bag receive time (boundaries are compared on it)
    action_t: np.ndarray
    action_values: np.ndarray  # (M, A)
    boundary_bag_t: np.ndarray
    action_names: list[str] = field(default_factory=list)
    non_finite_commands: int = 0  # command messages with NaN or inf, ignored


@dataclass
class Plan:
    """Episodes of one bag: camera message positions (bag order) and their actions, plus counts."""

    episodes: list[tuple[np.ndarray, np.ndarray]]
    counts: dict[str, int]


def plan_episodes(
    scan: Scan, *, rate: float, max_command_age: float, split_gap: float | None, min_length: int
) -> Plan:
    """Resample the camera stream, attach the command in force to each frame, split into episodes."""
    order = np.argsort(scan.camera_t, kind='stable')
    t, bag_t, index = scan.camera_t[order], scan.camera_bag_t[order], scan.camera_index[order]
    counts = {'camera_messages': len(t), 'resampled_away': 0, **{k: 0 for k in DROP_REASONS},
              'non_finite_commands': scan.non_finite_commands}
    period = 1.0 / rate
    median = period
    if len(t) >= 2:
        median = float(np.median(np.diff(t)))
        if median <= 0:
            raise BagError(f'{scan.bag.name}: most {scan.stamp_source} stamps of the camera repeat the one '
                           'before; try --stamp bag')
        if rate > 1.05 / median:
            camera_hz = 1.0 / median
            raise BagError(f'{scan.bag.name}: the camera publishes about {camera_hz:.3g} Hz on '
                           f'{scan.stamp_source} stamps; --rate {rate:g} must not exceed it')
    # pieces: runs of camera frames with no gap and no boundary message between them
    new_piece = np.zeros(len(t), bool)
    if split_gap is not None:
        new_piece[1:] |= np.diff(t) > split_gap
    if len(scan.boundary_bag_t):
        passed = np.searchsorted(np.sort(scan.boundary_bag_t), bag_t, side='right')
        new_piece[1:] |= np.diff(passed) > 0
    # a frame up to half a camera interval early still takes its slot (camera jitter), but never
    # the frame before the one that is due
    tolerance = 0.5 * min(median, period)
    episodes: list[tuple[np.ndarray, np.ndarray]] = []
    run: list[int] = []

    def close_run() -> None:
        if not run:
            return
        if len(run) < min_length:
            counts['short_episode'] += len(run)
        else:
            rows = np.asarray(run)
            held = np.searchsorted(scan.action_t, t[rows], side='right') - 1
            episodes.append((index[rows], scan.action_values[held]))
        run.clear()

    due = -np.inf
    for i in range(len(t)):
        if new_piece[i]:
            close_run()
            due = -np.inf
        if t[i] < due - tolerance:
            counts['resampled_away'] += 1
            continue
        due = t[i] + period if t[i] >= due + period - tolerance else due + period
        held = int(np.searchsorted(scan.action_t, t[i], side='right')) - 1
        if held < 0:
            counts['no_command_yet'] += 1
            close_run()
        elif t[i] - scan.action_t[held] > max_command_age:
            counts['stale_command'] += 1
            close_run()
        else:
            run.append(i)
    close_run()
    counts['frames'] = sum(len(e[0]) for e in episodes)
    return Plan(episodes, counts)


# -- first pass: stamps and commands --------------------------------------------------------------
def _cdr_header_stamp(raw: bytes | memoryview) -> int | None:
    """The header stamp (ns) at the start of a CDR message whose first field is a Header; None if zero.

    Reads 8 bytes instead of deserialising a whole image (the stamp is all the first pass needs).
    """
    little = raw[1] & 1
    sec, nanosec = struct.unpack_from('<iI' if little else '>iI', raw, 4)
    return (sec * 1_000_000_000 + nanosec) or None


def scan_bag(bag: Bag, args: argparse.Namespace, twist_fields: list[str], joints: list[str] | None) -> Scan:
    """Read the stamps of the camera topic, the commands and the boundary messages of one bag."""
    camera_type = bag.check_topic(args.camera_topic, '--camera-topic', IMAGE_TYPES)
    action_type = bag.check_topic(args.action_topic, '--action-topic', ACTION_TYPES)
    if args.boundary_topic is not None:
        boundary_type = bag.check_topic(args.boundary_topic, '--boundary-topic', BOUNDARY_TYPES)
    header_possible = has_header(action_type)
    if args.stamp == 'header' and not header_possible:
        raise BagError(f'--stamp header: {args.action_topic} is {action_type}, which has no header; '
                       'use --stamp bag (or auto)')

    cam_bag, cam_header = [], []
    fast = bag.is_ros2  # checked on the first message against a full deserialisation
    for bag_ns, raw in bag.messages(args.camera_topic, deserialize=False):
        cam_bag.append(bag_ns)
        if args.stamp == 'bag':
            continue
        if fast and not cam_header:
            fast = _cdr_header_stamp(raw) == stamp_ns(bag.deserialize(raw, args.camera_topic))
        cam_header.append(_cdr_header_stamp(raw) if fast
                          else stamp_ns(bag.deserialize(raw, args.camera_topic)))
    extract, names = action_extractor(action_type, twist_fields, joints, args.joint_field)
    act_bag, act_header, values = [], [], []
    for bag_ns, msg in bag.messages(args.action_topic):
        act_bag.append(bag_ns)
        act_header.append(stamp_ns(msg))
        values.append(extract(msg))
    boundaries = []
    if args.boundary_topic is not None:
        for bag_ns, msg in bag.messages(args.boundary_topic):
            if boundary_type == 'std_msgs/Empty' or bool(msg.data):
                boundaries.append(bag_ns)

    headers_complete = header_possible and None not in cam_header and None not in act_header
    if args.stamp == 'header' and not headers_complete:
        which = args.camera_topic if None in cam_header else args.action_topic
        raise BagError(f'--stamp header: some {which} messages of {bag.name} have a zero header stamp; '
                       'use --stamp bag (or auto)')
    source = 'header' if args.stamp == 'header' or (args.stamp == 'auto' and headers_complete) else 'bag'
    cam_t = np.asarray(cam_header if source == 'header' else cam_bag, np.int64)
    act_t = np.asarray(act_header if source == 'header' else act_bag, np.int64)
    action_order = np.argsort(act_t, kind='stable')
    if not all(len(v) == len(values[0]) for v in values) or len(values[0]) == 0:
        raise BagError(f'{args.action_topic} in {bag.name}: the actions do not all have the same, non-zero '
                       f'number of values')
    # seconds from the first camera frame: differences of int64 ns stay exact (an epoch in float
    # seconds would round away the sub-microsecond order of a frame and a command)
    origin, bag_origin = int(cam_t.min()), int(min(cam_bag))
    act_values = np.stack(values)[action_order]
    finite = np.isfinite(act_values).all(axis=1)  # a NaN command would end training clips silently
    return Scan(
        bag=bag.path, camera_type=camera_type, stamp_source=source,
        camera_index=np.arange(len(cam_t)), camera_t=(cam_t - origin) * 1e-9,
        camera_bag_t=(np.asarray(cam_bag, np.int64) - bag_origin) * 1e-9,
        action_t=(act_t[action_order][finite] - origin) * 1e-9,
        action_values=act_values[finite].astype(np.float32),
        boundary_bag_t=(np.asarray(boundaries, np.int64) - bag_origin) * 1e-9, action_names=names(),
        non_finite_commands=int((~finite).sum()),
    )


def _no_overlap_message(scan: Scan, args: argparse.Namespace) -> str:
    cam, act = scan.camera_t, scan.action_t
    if len(act) == 0:
        return (f'{scan.bag.name}: all {scan.non_finite_commands} messages of {args.action_topic} hold NaN '
                'or inf values')
    return (f'{scan.bag.name}: no camera frame has a command at most {args.max_command_age:g} s old: '
            f'{args.camera_topic} spans {cam.min():.3f}..{cam.max():.3f} s and {args.action_topic} '
            f'{act.min():.3f}..{act.max():.3f} s ({scan.stamp_source} stamps, from the first frame)')


# -- second pass: pixels --------------------------------------------------------------------------
def _converter(camera_type: str, size: int) -> Any:
    from lewm_ros.image_conversion import compressed_msg_to_square, image_msg_to_square

    compressed = camera_type == 'sensor_msgs/CompressedImage'
    convert = compressed_msg_to_square if compressed else image_msg_to_square
    return lambda msg: convert(msg, size)


def write_bag_frames(
    bag: Bag, plan: Plan, scan: Scan, args: argparse.Namespace, writer: Any, bar: Any,
    check: Any = lambda: None,
) -> None:
    """Convert the planned frames of one bag and append its episodes to ``writer`` in order.

    Frames of the episode being written go straight to the file (an episode may be longer than
    memory); the few that arrive early for a later episode (camera stamps slightly out of bag
    order) wait in memory until their episode begins.
    """
    from lewm_ros.image_conversion import ImageConversionError

    convert = _converter(scan.camera_type, args.img_size)
    wanted: dict[int, tuple[int, int]] = {}
    for e, (rows, _) in enumerate(plan.episodes):
        for p, row in enumerate(rows):
            wanted[int(row)] = (e, p)
    early: dict[int, dict[int, np.ndarray]] = {}
    remaining = [len(rows) for rows, _ in plan.episodes]
    current = 0

    def advance() -> None:
        nonlocal current
        while current < len(remaining) and remaining[current] == 0:
            writer.end_episode(plan.episodes[current][1][:-1])
            current += 1
            if current < len(remaining):
                writer.begin_episode(remaining[current])
                for p, frame in early.pop(current, {}).items():
                    writer.put_frame(p, frame)
                    remaining[current] -= 1

    if plan.episodes:
        writer.begin_episode(remaining[0])
    for position, (bag_ns, raw) in enumerate(bag.messages(args.camera_topic, deserialize=False)):
        check()
        if position not in wanted:
            continue
        e, p = wanted[position]
        msg = bag.deserialize(raw, args.camera_topic)
        try:
            frame = convert(msg)
        except ImageConversionError as err:
            raise BagError(f'{bag.name}: {args.camera_topic} message {position} (bag time '
                           f'{bag_ns * 1e-9:.3f} s) cannot be converted: {err}') from err
        if e == current:
            writer.put_frame(p, frame)
            remaining[e] -= 1
            advance()
        else:
            early.setdefault(e, {})[p] = frame
        bar.update(1)
    if current != len(plan.episodes):
        raise BagError(f'{bag.name}: {args.camera_topic} has fewer messages on the second read than on '
                       'the first')


# -- the command ----------------------------------------------------------------------------------
def _bounds(text: str | None, dim: int, option: str) -> np.ndarray | None:
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split(',')], np.float32)
    except ValueError as err:
        raise BagError(f'{option} {text!r}: expected {dim} comma-separated numbers') from err
    if len(values) != dim:
        raise BagError(f'{option} {text!r} has {len(values)} values; the actions have {dim}')
    return values


def _check_options(args: argparse.Namespace) -> None:
    if args.rate <= 0 or args.img_size < 1 or args.min_length < 2 or args.frameskip < 1:
        raise BagError('--rate must be > 0, --img-size >= 1, --min-length >= 2 and --frameskip >= 1')
    if args.max_command_age <= 0 or (args.split_gap is not None and args.split_gap <= 0):
        raise BagError('--max-command-age and --split-gap must be > 0 seconds')


def run(args: argparse.Namespace) -> int:
    """Import the bags; errors in the bags or options are ``BagError`` (one line from ``lewm``).

    Ctrl-C or SIGTERM stops at the next message, removes the unfinished file, and ``lewm`` exits
    with 130 (143).
    """
    from training.interrupts import GracefulStop

    with GracefulStop() as stop:
        return _import(args, stop.check)


def _import(args: argparse.Namespace, check: Any) -> int:
    from tqdm import tqdm

    from training.data.episodes import EpisodeWriter, partial_path

    _check_options(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise BagError(f'{out} already exists; pass --overwrite to replace it or choose another --out')
    twist_fields = parse_twist_fields(args.twist_fields)
    joints = [j.strip() for j in args.joints.split(',') if j.strip()] if args.joints else None
    start_time = time.perf_counter()

    scans, plans = [], []
    for path in args.bags:
        check()
        with Bag(path) as bag:
            scan = scan_bag(bag, args, twist_fields, joints)
        plan = plan_episodes(scan, rate=args.rate, max_command_age=args.max_command_age,
                             split_gap=args.split_gap, min_length=args.min_length)
        if plan.counts['no_command_yet'] + plan.counts['stale_command'] == plan.counts['camera_messages'] \
                - plan.counts['resampled_away']:
            raise BagError(_no_overlap_message(scan, args))
        scans.append(scan)
        plans.append(plan)
    names = {tuple(s.action_names) for s in scans}
    if len(names) > 1 or len({s.action_values.shape[1] for s in scans}) > 1:
        raise BagError(f'the bags carry different actions: {sorted(names)}')
    total = sum(p.counts['frames'] for p in plans)
    if total == 0:
        raise BagError(f'no episode of at least --min-length {args.min_length} frames in the bags; '
                       f'counts: {_sum_counts(plans)}')
    dim = scans[0].action_values.shape[1]
    kept_actions = np.concatenate([a[:-1] for p in plans for _, a in p.episodes])
    low = _bounds(args.action_low, dim, '--action-low')
    high = _bounds(args.action_high, dim, '--action-high')
    low = kept_actions.min(axis=0) if low is None else low
    high = kept_actions.max(axis=0) if high is None else high
    if np.any(low > high):
        raise BagError(f'--action-low {low.tolist()} exceeds --action-high {high.tolist()}')
    sources = sorted({s.stamp_source for s in scans})
    attrs = {
        'env_id': args.env_id, 'frameskip': int(args.frameskip), 'control_rate_hz': float(args.rate),
        'action_low': low.astype(np.float32), 'action_high': high.astype(np.float32),
        'policy': args.label, 'noise': 0.0, 'collector': 'lewm import-bag',
        'source_bags': json.dumps([Path(b).name for b in args.bags]),
        'camera_topic': args.camera_topic, 'camera_type': scans[0].camera_type,
        'action_topic': args.action_topic, 'action_names': json.dumps(scans[0].action_names),
        'stamp_source': sources[0] if len(sources) == 1 else 'per bag: ' + json.dumps(
            {s.bag.name: s.stamp_source for s in scans}),
        'boundary_topic': args.boundary_topic or '', 'split_gap': float(args.split_gap or 0.0),
        'max_command_age': float(args.max_command_age), 'drop_counts': json.dumps(_sum_counts(plans)),
    }
    if args.overwrite:
        partial_path(out).unlink(missing_ok=True)
    writer = EpisodeWriter(out, image_size=args.img_size, action_dim=dim, attrs=attrs)
    try:
        with tqdm(total=total, unit='frame', desc='import-bag') as bar:
            for path, scan, plan in zip(args.bags, scans, plans, strict=True):
                with Bag(path) as bag:
                    write_bag_frames(bag, plan, scan, args, writer, bar, check)
        writer.close(complete=True)
    except BaseException:
        writer.close(complete=False)
        partial_path(out).unlink(missing_ok=True)
        raise
    elapsed = time.perf_counter() - start_time
    counts = _sum_counts(plans)
    summary = {
        'out': str(out), 'bags': len(args.bags), 'episodes': writer.num_episodes, 'frames': total,
        'camera_messages': counts['camera_messages'], 'resampled_away': counts['resampled_away'],
        'dropped_frames': {k: counts[k] for k in DROP_REASONS}, 'stamp_source': attrs['stamp_source'],
        'non_finite_commands': counts['non_finite_commands'],
        'action_names': scans[0].action_names, 'seconds': round(elapsed, 2),
        'frames_per_s': round(total / max(elapsed, 1e-9), 1),
    }
    dropped = ', '.join(f'{counts[k]} {k.replace("_", " ")}' for k in DROP_REASONS)
    print(f'imported {total} frames in {writer.num_episodes} episodes from {len(args.bags)} bag(s) '
          f'into {out}; '
          f'dropped: {dropped}; {counts["resampled_away"]} camera frames skipped by resampling to '
          f'{args.rate:g} Hz' + (f'; {counts["non_finite_commands"]} commands with NaN or inf ignored'
                                 if counts['non_finite_commands'] else ''), file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _sum_counts(plans: list[Plan]) -> dict[str, int]:
    keys = ('camera_messages', 'resampled_away', *DROP_REASONS, 'non_finite_commands', 'frames')
    return {k: int(sum(p.counts.get(k, 0) for p in plans)) for k in keys}
