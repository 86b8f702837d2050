"""``lewm view``: run one episode of a MuJoCo task and write it as a GIF, MP4 or PNG contact sheet.

So a person can see what a task looks like, what the expert does and what a perturbation does,
without a display: everything renders offscreen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm view``."""
    parser.add_argument('--env', required=True,
                        help='task id: lewm/PushT-v0, lewm/TwoRoom-v0, lewm/Reacher-v0 or lewm/Cube-v0')
    parser.add_argument('--out', default=None,
                        help='output file: .gif, .mp4 or .png (contact sheet); default <task>.png')
    parser.add_argument('--policy', choices=('expert', 'random', 'mixed'), default='expert')
    parser.add_argument('--noise', type=float, default=0.0,
                        help='expert action noise (std, in [-1, 1] units)')
    parser.add_argument('--seed', type=int, default=0, help='episode seed')
    parser.add_argument('--steps', type=int, default=None, help='episode length (default: the task maximum)')
    parser.add_argument('--img-size', type=int, default=224, help='rendered image size (pixels)')
    parser.add_argument('--every', type=int, default=None,
                        help='keep every k-th frame (default: the task frameskip for .png, 1 otherwise)')
    parser.add_argument('--columns', type=int, default=None,
                        help='contact sheet: frames per row (default: one row up to 12 frames, else 8)')
    parser.add_argument('--perturb', choices=('teleport', 'recolour'), default=None,
                        help='apply a violation-of-expectation event during the episode')
    parser.add_argument('--perturb-step', type=int, default=20, help='env step at which --perturb happens')
    parser.add_argument('--stop-on-success', action='store_true', help='end the episode at the first success')


def contact_sheet(frames: list[np.ndarray], labels: list[str], columns: int) -> np.ndarray:
    """Frames tiled row by row with a label under each, as one RGB image."""
    from PIL import Image, ImageDraw

    size = frames[0].shape[0]
    label_h = 12
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new('RGB', (columns * (size + 2), rows * (size + label_h + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        x, y = (i % columns) * (size + 2), (i // columns) * (size + label_h + 2)
        sheet.paste(Image.fromarray(frame), (x, y))
        draw.text((x + 2, y + size), label, fill=(0, 0, 0))
    return np.asarray(sheet)


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write ``frames`` as an animated GIF or an MP4 (by suffix)."""
    if path.suffix == '.gif':
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix == '.mp4':
        import cv2

        h, w = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
        if not writer.isOpened():
            raise RuntimeError(f'OpenCV cannot write {path}; write a .gif instead')
        for frame in frames:
            writer.write(frame[:, :, ::-1])
        writer.release()
    else:
        raise ValueError(f'cannot write {path}: use .gif, .mp4 or .png')


def run(args: argparse.Namespace) -> int:
    """Roll out one episode and write it."""
    from lewm_ros.sim import ENV_IDS, make_env
    from lewm_ros.sim.experts import make_policy

    if args.env not in ENV_IDS:
        raise SystemExit(f'unknown --env {args.env!r}; choose one of {", ".join(ENV_IDS)}')
    out = Path(args.out or f'{args.env.split("/")[-1].lower()}.png')
    if out.suffix not in ('.png', '.gif', '.mp4'):
        raise SystemExit(f'--out must end in .png, .gif or .mp4, got {out}')
    try:
        env = make_env(args.env, img_size=args.img_size)
    except ValueError as err:
        raise SystemExit(f'--img-size: {err}') from err
    steps = args.steps or env.max_episode_steps
    every = args.every or (env.frameskip if out.suffix == '.png' else 1)
    options = {'perturb': (args.perturb, args.perturb_step)} if args.perturb else None
    obs, info = env.reset(seed=args.seed, options=options)
    policy = make_policy(env, args.policy, noise=args.noise, rng=np.random.default_rng(args.seed))
    frames, labels = [env.goal_image(), obs], ['goal', 't=0']
    first_success = None
    for t in range(1, steps + 1):
        obs, _, terminated, truncated, info = env.step(policy.act(obs))
        if info['is_success'] and first_success is None:
            first_success = t
        event = info.get('perturbation')
        if t % every == 0 or event or (info['is_success'] and first_success == t):
            frames.append(obs)
            labels.append(f't={t}' + (f' {event}' if event else '') + (' ok' if info['is_success'] else ''))
        if terminated or truncated or (args.stop_on_success and info['is_success']):
            break
    env.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == '.png':
        from PIL import Image

        columns = args.columns or (len(frames) if len(frames) <= 12 else 8)
        Image.fromarray(contact_sheet(frames, labels, columns)).save(out)
    else:
        write_video(out, frames[1:], fps=env.control_rate_hz / every)
    print(json.dumps({'out': str(out), 'env': args.env, 'steps': t, 'first_success_step': first_success,
                      'success_at_end': bool(info['is_success']), 'frames': len(frames)}))
    return 0
