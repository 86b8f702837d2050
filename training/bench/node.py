"""``lewm bench node``: the planner node against a real camera stream, as a robot would run it.

A camera process (spawned, so it has its own interpreter and DDS participant, like a camera
driver) publishes frames of the given size and rate and a goal image, and records when each
action arrives. The planner node runs in this process, spun the way ``planner_node`` spins it.
After a warm-up the figures are taken over a fixed window: control ticks per second, actions per
second at the robot and the largest gap between two, frame arrival -> action latency (median,
p99), the age of the frame each tick acts on, frames published / received / used / dropped,
stale ticks, and the CPU share of the executor thread, of the control thread and of the process.
Figures go to stdout as text, or as one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the node benchmark."""
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint directory (default: the embedded demo model)')
    parser.add_argument('--camera-hz', type=float, default=30.0, help='camera frame rate (default: 30)')
    parser.add_argument('--width', type=int, default=640, help='camera frame width (default: 640)')
    parser.add_argument('--height', type=int, default=480, help='camera frame height (default: 480)')
    parser.add_argument('--transport', default='raw', choices=('raw', 'compressed'),
                        help='raw sensor_msgs/Image (rgb8) or jpeg CompressedImage (default: raw)')
    parser.add_argument('--publisher-qos', default='reliable', choices=('reliable', 'best_effort'),
                        help="the camera publisher's reliability (default: reliable, as most drivers)")
    parser.add_argument('--camera-qos', default='auto', choices=('auto', 'sensor_data', 'reliable'),
                        help="the node's camera_qos parameter (default: auto)")
    parser.add_argument('--control-rate', type=float, default=10.0, help='control_rate_hz (default: 10)')
    parser.add_argument('--solver', default='cem', choices=('cem', 'icem', 'mppi'), help='default: cem')
    parser.add_argument('--samples', type=int, default=64, help='planner samples (default: 64)')
    parser.add_argument('--iterations', type=int, default=5, help='planner iterations (default: 5)')
    parser.add_argument('--elites', type=int, default=8, help='planner elites (default: 8)')
    parser.add_argument('--executor', default='single', choices=('single', 'multi'),
                        help="single: how planner_node spins; multi: rclpy's MultiThreadedExecutor "
                        '(3 threads)')
    parser.add_argument('--warmup', type=float, default=5.0,
                        help='seconds between the first plan and the measured window (default: 5)')
    parser.add_argument('--seconds', type=float, default=20.0, help='seconds measured (default: 20)')
    parser.add_argument('--device', default='cpu', help='torch device (default: cpu)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the exit code."""
    # Loopback only, and a DDS domain of this run's own: a benchmark never talks to a robot's graph.
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
    os.environ.setdefault('ROS_DOMAIN_ID', str(10 + os.getpid() % 90))
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    from lewm_ros.nodes.planner_node import PlannerNode
    from lewm_ros.paths import share_dir

    checkpoint = args.checkpoint or str(share_dir() / 'models' / 'tworoom')
    spawn = multiprocessing.get_context('spawn')
    parent_end, child_end = spawn.Pipe()
    camera = spawn.Process(target=camera_process, args=(child_end, vars(args)), daemon=True)
    camera.start()
    context = rclpy.context.Context()
    rclpy.init(context=context)
    load_before = os.getloadavg()
    node = executor = None
    try:
        node = PlannerNode(context=context, checkpoint=checkpoint, device=args.device,
                           control_rate_hz=args.control_rate, camera_qos=args.camera_qos,
                           camera_transport=args.transport, solver=args.solver, samples=args.samples,
                           iterations=args.iterations, elites=args.elites)
        executor = (SingleThreadedExecutor(context=context) if args.executor == 'single'
                    else MultiThreadedExecutor(num_threads=3, context=context))
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, name='executor', daemon=True)
        spin.start()
        parent_end.send('go')
        started = time.monotonic()
        # The window opens once the loop plans on camera frames (QoS matched, kernels warm) plus
        # the warm-up; how long the first action took is a figure of its own.
        while not node.plan_times_ms and time.monotonic() - started < 60.0:
            if not camera.is_alive():
                raise SystemExit(f'lewm bench node: the camera process died (exit code {camera.exitcode})')
            time.sleep(0.05)
        if not node.plan_times_ms:
            raise SystemExit('lewm bench node: no plan within 60 s of the camera starting; see the log above')
        first_plan_s = time.monotonic() - started
        time.sleep(args.warmup)
        start = _snapshot(node, spin)
        time.sleep(args.seconds)
        end = _snapshot(node, spin)
        parent_end.send('stop')
        camera_report = parent_end.recv() if parent_end.poll(30.0) else {}
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        camera.join(timeout=10.0)
        if camera.is_alive():
            camera.terminate()
    if not camera_report:
        raise SystemExit('lewm bench node: the camera process sent no report')
    figures = _figures(args, checkpoint, node, start, end, camera_report, load_before)
    figures['first_plan_after_s'] = round(first_plan_s, 2)
    print(json.dumps(figures, indent=2) if args.json else _text(figures))
    return 0


def _cpu_seconds(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _snapshot(node: Any, spin: threading.Thread) -> dict[str, Any]:
    return {'t': time.monotonic(), 'process_cpu': time.process_time(), 'spin_cpu': _cpu_seconds(spin),
            'control_cpu': _cpu_seconds(node._loop), 'ticks': node.ticks, 'missed': node.missed_ticks,
            'stale': node.stale_ticks, 'received': node.frames_received, 'used': node.frames_used,
            'dropped': node.dropped_frames, 'sent': node.actions_sent, 'latencies': list(node.latencies_ms),
            'ages': list(node.frame_ages_ms), 'plans': list(node.plan_times_ms)}


def _new(end: list[float], start: list[float]) -> list[float]:
    """The values appended between two snapshots (the node's deques hold 1000: longer than a window)."""
    return end[len(start):]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def _figures(args: argparse.Namespace, checkpoint: str, node: Any, start: dict, end: dict, camera: dict,
             load_before: tuple[float, float, float]) -> dict[str, Any]:
    wall = end['t'] - start['t']
    arrivals = [t for t in camera.get('action_times', []) if start['t'] <= t < end['t']]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    latencies = _new(end['latencies'], start['latencies'])
    planner = node.mpc.planner.config
    return {
        'checkpoint': checkpoint, 'camera': f'{args.width}x{args.height} at {args.camera_hz:g} Hz',
        'transport': args.transport, 'publisher_qos': args.publisher_qos, 'camera_qos': args.camera_qos,
        'camera_qos_in_force': node._camera_reliability, 'executor': args.executor,
        'planner': f'{planner.solver} {planner.samples}x{planner.iterations}',
        'control_rate_hz': args.control_rate,
        'seconds': round(wall, 2), 'tick_rate_hz': round((end['ticks'] - start['ticks']) / wall, 2),
        'missed_ticks': end['missed'] - start['missed'], 'stale_ticks': end['stale'] - start['stale'],
        'actions_per_s_at_robot': round(len(arrivals) / wall, 2),
        'largest_action_gap_s': round(max(gaps), 3) if gaps else None,
        'frame_to_action_ms_median': _pct(latencies, 50), 'frame_to_action_ms_p99': _pct(latencies, 99),
        'frame_age_ms_median': _pct(_new(end['ages'], start['ages']), 50),
        'plan_ms_median': _pct(_new(end['plans'], start['plans']), 50),
        'frames_published': camera.get('published_in_window'),
        'frames_received': end['received'] - start['received'], 'frames_used': end['used'] - start['used'],
        'frames_dropped': end['dropped'] - start['dropped'],
        'cpu_executor_thread': round((end['spin_cpu'] - start['spin_cpu']) / wall, 3),
        'cpu_control_thread': round((end['control_cpu'] - start['control_cpu']) / wall, 3),
        'cpu_process': round((end['process_cpu'] - start['process_cpu']) / wall, 3),
        'load_average_before': [round(x, 2) for x in load_before],
        'load_average_after': [round(x, 2) for x in os.getloadavg()],
        'cpu_count': os.cpu_count(),
    }


def _text(f: dict[str, Any]) -> str:
    return '\n'.join([
        f"planner node: {f['camera']} camera ({f['transport']}, {f['publisher_qos']} publisher, node "
        f"camera_qos {f['camera_qos']} -> {f['camera_qos_in_force']}), {f['planner']} at "
        f"{f['control_rate_hz']:g} Hz, "
        f"{f['executor']} executor, {f['seconds']} s measured",
        f"  start           first plan {f['first_plan_after_s']} s after the camera started",
        f"  ticks           {f['tick_rate_hz']} Hz ({f['missed_ticks']} missed, {f['stale_ticks']} stale)",
        f"  at the robot    {f['actions_per_s_at_robot']} actions/s, "
        f"largest gap {f['largest_action_gap_s']} s",
        f"  frame->action   median {f['frame_to_action_ms_median']} ms, p99 {f['frame_to_action_ms_p99']} ms "
        f"(plan median {f['plan_ms_median']} ms)",
        f"  frame age       median {f['frame_age_ms_median']} ms at the tick that used it",
        f"  frames          {f['frames_published']} published, {f['frames_received']} received, "
        f"{f['frames_used']} used, {f['frames_dropped']} dropped",
        f"  CPU (of a core) executor thread {f['cpu_executor_thread']:.0%}, control thread "
        f"{f['cpu_control_thread']:.0%}, process {f['cpu_process']:.0%}",
        f"  machine         {f['cpu_count']} cores, load average {f['load_average_before'][0]} before, "
        f"{f['load_average_after'][0]} after",
    ])


def camera_process(conn: Any, options: dict[str, Any]) -> None:
    """The camera driver's side: publish frames and a goal, record when actions arrive."""
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Float64MultiArray

    from lewm_ros.image_conversion import rgb_to_compressed_fields, rgb_to_image_fields

    rclpy.init()
    node = Node('lewm_bench_camera')
    rng = np.random.default_rng(0)
    scenes = [np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
                      np.ones((options['height'] // 12 + 1, options['width'] // 16 + 1, 1), np.uint8))
              [:options['height'], :options['width']] for _ in range(4)]
    reliable = options['publisher_qos'] == 'reliable'
    qos = QoSProfile(depth=5,
                     reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    if options['transport'] == 'raw':
        frames = [Image(**rgb_to_image_fields(s)) for s in scenes]
        publisher = node.create_publisher(Image, 'camera/image_raw', qos)
    else:
        frames = [CompressedImage(**rgb_to_compressed_fields(s, 'jpeg')) for s in scenes]
        publisher = node.create_publisher(CompressedImage, 'camera/image_raw/compressed', qos)
    goal = node.create_publisher(Image, 'lewm/goal_image', QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    goal.publish(Image(**rgb_to_image_fields(scenes[-1])))
    action_times: list[float] = []
    node.create_subscription(Float64MultiArray, 'lewm/action',
                             lambda m: action_times.append(time.monotonic()), 100)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    conn.recv()  # 'go': the planner is up
    published: list[float] = []
    period, next_t, i = 1.0 / options['camera_hz'], time.monotonic(), 0
    while not conn.poll():
        publisher.publish(frames[i % len(frames)])
        published.append(time.monotonic())
        i += 1
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    conn.recv()  # 'stop'
    end = time.monotonic()
    window_start = end - options['seconds']
    in_window = sum(1 for t in published if t >= window_start)
    conn.send({'action_times': action_times, 'published_in_window': in_window})
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown()
