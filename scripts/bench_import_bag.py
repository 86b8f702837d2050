#!/usr/bin/env python3
r"""Write a long synthetic robot bag (camera + TwistStamped commands) and time ``lewm import-bag`` on it.

For the import throughput figure of docs/robot.md: a 30 Hz, 640 x 480 camera (``sensor_msgs/Image``
rgb8, or ``sensor_msgs/CompressedImage`` jpeg on ``<topic>/compressed``) and 20 Hz
``geometry_msgs/TwistStamped`` commands, header-stamped, received 2 ms after their stamps, in a
rosbag2 written with the rosbags writer (MCAP or sqlite3). The frames are a moving scene with
sensor noise (a few dozen distinct frames, cycled), so JPEG sizes and decode times are a camera's,
not those of a flat image. A raw 10-minute bag is 16.6 GB: mind the disk.

Examples::

    scripts/bench_import_bag.py --out /tmp/bench/raw10 --seconds 600 --format rgb8 --import
    scripts/bench_import_bag.py --out /tmp/bench/jpeg10 --seconds 600 --format jpeg --import --delete
    time lewm import-bag /tmp/bench/raw10 --camera-topic /camera/image_raw --action-topic /cmd_vel \\
        --rate 30 --img-size 64 --twist-fields linear.x,linear.y,angular.z --out /tmp/bench/raw10.h5

``--import`` runs the import after writing and prints its frames/s; ``--delete`` removes the bag and
the imported file afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000 * 10**9  # a realistic epoch, in ns
CAMERA_TOPIC = '/camera/image_raw'
COMMAND_TOPIC = '/cmd_vel'


def scene(k: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``k`` of a moving scene: lit floor, a wall band, a moving ball, sensor noise (uint8 RGB)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    floor = 90 + 60 * (y / height) + 10 * np.sin(x / 23.0 + k / 7.0)
    image = np.stack([floor * 0.9, floor, floor * 1.1], axis=-1)
    image[: height // 3] = (150, 160, 170)  # a wall
    cx, cy = width * (0.5 + 0.35 * np.cos(k / 9.0)), height * (0.6 + 0.25 * np.sin(k / 6.0))
    ball = (x - cx) ** 2 + (y - cy) ** 2 < (height / 10) ** 2
    image[ball] = (200, 60, 40)
    image += rng.normal(0.0, 3.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_bag(out: Path, *, seconds: float, rate: float, width: int, height: int, fmt: str, storage: str,
              command_rate: float, distinct: int = 60) -> dict:
    """Write the bag; returns what it holds."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from tqdm import tqdm

    from lewm_ros.image_conversion import rgb_to_compressed_fields

    ts = get_typestore(Stores.ROS2_JAZZY)
    t = ts.types
    rng = np.random.default_rng(0)
    zero = t['builtin_interfaces/msg/Time'](sec=0, nanosec=0)
    header = t['std_msgs/msg/Header'](stamp=zero, frame_id='camera')
    templates = []
    for k in range(distinct):
        rgb = scene(k, height, width, rng)
        if fmt == 'rgb8':
            msg = t['sensor_msgs/msg/Image'](header=header, height=height, width=width, encoding='rgb8',
                                             is_bigendian=0, step=3 * width, data=rgb.reshape(-1))
        else:
            fields = rgb_to_compressed_fields(rgb, 'jpeg')
            msg = t['sensor_msgs/msg/CompressedImage'](header=header, format=fields['format'],
                                                       data=np.frombuffer(fields['data'], np.uint8))
        templates.append(bytes(ts.serialize_cdr(msg, msg.__msgtype__)))
    camera_type = 'sensor_msgs/msg/Image' if fmt == 'rgb8' else 'sensor_msgs/msg/CompressedImage'
    topic = CAMERA_TOPIC if fmt == 'rgb8' else CAMERA_TOPIC + '/compressed'
    frames = int(round(seconds * rate))
    commands = int(round(seconds * command_rate)) + 1
    v3 = t['geometry_msgs/msg/Vector3']

    def stamped(raw: bytes, ns: int) -> bytes:
        # the header stamp is the first field: sec (int32) and nanosec (uint32) after the 4-byte CDR header
        return raw[:4] + struct.pack('<iI', ns // 10**9, ns % 10**9) + raw[12:]

    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    start = time.perf_counter()
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        cam = writer.add_connection(topic, camera_type, typestore=ts)
        cmd = writer.add_connection(COMMAND_TOPIC, 'geometry_msgs/msg/TwistStamped', typestore=ts)
        j = 0
        for k in tqdm(range(frames), unit='frame', desc=f'write {out.name}'):
            ns = T0 + round(k * 1e9 / rate)
            while j < commands and T0 + round(j * 1e9 / command_rate) <= ns:
                cns = T0 + round(j * 1e9 / command_rate)
                twist = t['geometry_msgs/msg/TwistStamped'](
                    header=t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](
                        sec=cns // 10**9, nanosec=cns % 10**9), frame_id='base_link'),
                    twist=t['geometry_msgs/msg/Twist'](linear=v3(x=np.sin(j / 10), y=0.0, z=0.0),
                                                       angular=v3(x=0.0, y=0.0, z=np.cos(j / 13))))
                writer.write(cmd, cns + 2_000_000, ts.serialize_cdr(twist, 'geometry_msgs/msg/TwistStamped'))
                j += 1
            writer.write(cam, ns + 2_000_000, stamped(templates[k % distinct], ns))
    seconds_written = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
    return {'bag': str(out), 'format': fmt, 'storage': storage, 'camera_topic': topic, 'frames': frames,
            'commands': commands, 'seconds_of_recording': seconds, 'width': width, 'height': height,
            'bytes': size, 'write_seconds': round(seconds_written, 1)}


def main(argv: list[str] | None = None) -> int:
    """Write the bag, optionally import it and report frames/s."""
    parser = argparse.ArgumentParser(prog='bench_import_bag.py', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[2:]))
    parser.add_argument('--out', type=Path, required=True, help='bag directory to write (must not exist)')
    parser.add_argument('--seconds', type=float, default=600.0, help='length of the recording (default: 600)')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate in Hz (default: 30)')
    parser.add_argument('--width', type=int, default=640, help='frame width (default: 640)')
    parser.add_argument('--height', type=int, default=480, help='frame height (default: 480)')
    parser.add_argument('--format', choices=('rgb8', 'jpeg'), default='rgb8',
                        help='raw sensor_msgs/Image rgb8 or CompressedImage jpeg (default: rgb8)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage')
    parser.add_argument('--command-rate', type=float, default=20.0, help='TwistStamped rate (default: 20)')
    parser.add_argument('--import', dest='run_import', action='store_true',
                        help='run lewm import-bag on the bag afterwards and report frames/s')
    parser.add_argument('--img-size', type=int, default=64, help='import --img-size (default: 64)')
    parser.add_argument('--delete', action='store_true',
                        help='remove the bag and the imported file at the end')
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f'{args.out} already exists')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = write_bag(args.out, seconds=args.seconds, rate=args.rate, width=args.width, height=args.height,
                     fmt=args.format, storage=args.storage, command_rate=args.command_rate)
    print(f'wrote {info["frames"]} frames ({info["bytes"] / 1e9:.2f} GB) in {info["write_seconds"]} s',
          flush=True)
    h5 = args.out.with_name(args.out.name + '.h5')
    try:
        if args.run_import:
            command = [sys.executable, '-m', 'training.cli', 'import-bag', str(args.out), '--camera-topic',
                       info['camera_topic'], '--action-topic', COMMAND_TOPIC, '--rate', f'{args.rate:g}',
                       '--img-size', str(args.img_size), '--twist-fields', 'linear.x,linear.y,angular.z',
                       '--out', str(h5), '--overwrite']
            env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO),
                                                                             os.environ.get('PYTHONPATH')]))}
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
            wall = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(f'import failed: {result.stderr[-2000:]}')
            summary = json.loads(result.stdout.strip().splitlines()[-1])
            info.update(import_wall_seconds=round(wall, 1), import_frames=summary['frames'],
                        import_frames_per_s_wall=round(summary['frames'] / wall, 1),
                        import_frames_per_s=summary['frames_per_s'], load_average=os.getloadavg())
        print(json.dumps(info))
    finally:
        if args.delete:
            shutil.rmtree(args.out, ignore_errors=True)
            h5.unlink(missing_ok=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
