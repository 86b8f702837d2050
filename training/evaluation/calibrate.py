"""``lewm calibrate``: measure on held-out normal episodes what a checkpoint's users need from them.

Every episode of the file is cut into block-boundary sequences (frames ``frameskip`` env steps
apart, one per phase ``0 .. frameskip - 1``). Two things are measured and stored in the
checkpoint's ``meta.json``:

- ``surprise``: every frame is scored with the surprise monitor's definition (latent one-step
  prediction error from up to ``history`` previous frames and the executed action blocks), and
  the ``--quantile`` of all scores becomes the threshold, stored with the score statistics;
- ``goal_metric``: the covariance of the embedding's one-step changes, as the whitening matrix
  the planner's ``goal_metric: whitened`` measures goal distances with
  (``lewm_ros/planning/goal_metric.py``).

A threshold set on recorded episodes alone does not hold where the planner drives: it pushes into
walls, stops at goals and chatters, and those frames can score higher than an expert's. So, for a
checkpoint of one of our MuJoCo tasks, ``--closed-loop N`` episodes are also driven by the planner
(with the checkpoint's settings, ``lewm eval``'s protocol, other seeds) and scored the same way;
the threshold is the higher of the two quantiles, so it holds on both kinds of normal frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm calibrate``."""
    parser.add_argument(
        '--checkpoint', required=True, help='checkpoint directory to calibrate (updated in place)'
    )
    parser.add_argument('--data', required=True, help='HDF5 episode file of held-out normal episodes')
    parser.add_argument(
        '--quantile',
        type=float,
        default=0.995,
        help='threshold = this quantile of normal scores (default: 0.995)',
    )
    parser.add_argument(
        '--episodes', type=int, default=None, help='use only the first N episodes (default: all)'
    )
    parser.add_argument(
        '--phases', type=int, default=None,
        help='block phases per episode (default: all frameskip of them; 1 = frames 0, fs, 2fs, ...)',
    )  # fmt: skip
    parser.add_argument(
        '--closed-loop', type=int, default=40, metavar='N',
        help="also score N planner-driven episodes of the checkpoint's task and take the higher threshold "
        '(default: 40; 0 = recorded episodes only; needs mujoco)',
    )  # fmt: skip
    parser.add_argument('--closed-loop-seed', type=int, default=2000,
                        help='seed of the planner-driven episodes (default: 2000, apart from eval seeds)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--dry-run', action='store_true', help='print the calibration, do not write it')
    parser.add_argument('--json', action='store_true', help='print the calibration as one JSON object')


def episode_sequences(pixels, actions, frameskip: int, phases: int):
    """Yield (frames (T, H, W, 3), blocks (T - 1, fs, A)) at block boundaries, one per phase.

    Sequences are cut before any block holding a NaN action (a gap in a recording), so no score
    ever uses an action that is not known.
    """
    import numpy as np

    n = len(pixels)
    for phase in range(min(phases, frameskip)):
        idx = np.arange(phase, n, frameskip)
        if len(idx) < 2:
            continue
        blocks = np.stack([actions[i : i + frameskip] for i in idx[:-1]])
        bad = ~np.isfinite(blocks).all(axis=(1, 2))
        start = 0
        for cut in [*np.flatnonzero(bad), len(blocks)]:
            if cut - start >= 1:  # at least 2 frames
                yield pixels[idx[start : cut + 1]], blocks[start:cut]
            start = cut + 1


def run(args: argparse.Namespace) -> int:
    """Score the file's frames and store the threshold."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from lewm_ros.checkpoint import load_checkpoint, update_metadata
    from lewm_ros.device import resolve_device
    from lewm_ros.planning.goal_metric import (
        DEFAULT_RIDGE,
        goal_metric_to_dict,
        step_covariance,
        whitening_matrix,
    )
    from lewm_ros.surprise import calibrate, encode_frames, surprise_scores
    from training.data.episodes import EpisodeFile

    if not 0.0 < args.quantile < 1.0:
        raise SystemExit(f'--quantile must be in (0, 1), got {args.quantile}')
    model, meta = load_checkpoint(args.checkpoint, resolve_device(args.device))
    fs, A = model.config.frameskip, model.config.action_dim
    phases = args.phases or fs
    scores, embeddings = [], []
    with EpisodeFile(args.data) as data, torch.no_grad():
        if data.column('actions').shape[1] != A:
            raise SystemExit(
                f'{args.data} has {data.column("actions").shape[1]}-D actions, the model takes {A}-D ones'
            )
        env_file, env_model = data.attrs.get('env_id'), meta.get('env_id')
        if env_file and env_model and env_file != env_model:
            print(
                f'warning: {args.data} holds {env_file} episodes, the checkpoint was trained on {env_model}'
            )
        count = data.num_episodes if args.episodes is None else min(args.episodes, data.num_episodes)
        for index in tqdm(range(count), desc='calibrate', unit='episode'):
            episode = data.episode(index)
            for frames, blocks in episode_sequences(episode['pixels'], episode['actions'], fs, phases):
                z = encode_frames(model, frames[None])
                scores.append(surprise_scores(model, z, blocks[None])[0, 1:].cpu().numpy())
                embeddings.append(z[0].float().cpu())
    if not scores:
        raise SystemExit(f'{args.data} has no episode long enough to score (need 2 frames {fs} steps apart)')
    recorded = calibrate(np.concatenate(scores), args.quantile, data=str(args.data),
                         history=model.config.history)
    covariance, steps = step_covariance(embeddings)
    metric = goal_metric_to_dict(whitening_matrix(covariance), DEFAULT_RIDGE, steps, str(args.data))
    parts = {'recorded': _part(recorded)}
    calibration = recorded
    if args.closed_loop > 0:
        closed = closed_loop_calibration(args, model, {**meta, 'goal_metric': metric}, phases)
        if closed is not None:
            parts['closed_loop'] = _part(closed)
            if closed.threshold > calibration.threshold:
                calibration = closed
    calibration = dataclasses.replace(calibration, data=str(args.data), parts=parts)
    if not args.dry_run:
        update_metadata(args.checkpoint, 'surprise', calibration.to_dict(), goal_metric=metric)
    if args.json:
        summary = {k: v for k, v in metric.items() if k != 'matrix'}
        print(json.dumps({**calibration.to_dict(), 'goal_metric': summary, 'written': not args.dry_run,
                          'checkpoint': str(args.checkpoint)}))
    else:
        where = 'not written (dry run)' if args.dry_run else f'written to {args.checkpoint}'
        detail = '; '.join(f'{name} {part["threshold"]:.4g} from {part["n"]} frames'
                           for name, part in parts.items())
        print(f'surprise threshold {calibration.threshold:.5g}, the higher {100 * args.quantile:g} % '
              'quantile '
              f'({detail}); goal metric from {steps} one-step changes; {where}')
    return 0


def _part(calibration) -> dict:
    return {k: getattr(calibration, k) for k in ('threshold', 'mean', 'std', 'n')}


def closed_loop_calibration(args: argparse.Namespace, model, meta: dict, phases: int):
    """The calibration on frames of ``--closed-loop`` episodes that the checkpoint's planner drives."""
    import numpy as np
    import torch

    from lewm_ros.checkpoint import load_controller
    from lewm_ros.planning import LatentPlanner, settings
    from lewm_ros.planning.goal_metric import goal_metric_from_meta
    from lewm_ros.planning.planner import needs_controller
    from lewm_ros.surprise import calibrate, encode_frames, surprise_scores
    from training.evaluation.evaluate import run_episodes

    env_id = meta.get('env_id')
    if not str(env_id).startswith('lewm/'):  # a robot's checkpoint: no simulator to drive
        print(f'closed loop: skipped, the checkpoint was trained on {env_id!r}, not one of our MuJoCo tasks')
        return None
    device = str(next(model.parameters()).device)
    config = settings.resolve(meta, explicit={'device': device, 'seed': args.closed_loop_seed}).config
    controller = load_controller(args.checkpoint, meta, device) if needs_controller(config) else None
    planner = LatentPlanner(model, config, meta.get('action_low'), meta.get('action_high'),
                            goal_metric_from_meta(meta, model.config.embed_dim), controller)
    # the whole budget: the frames of a planner holding at its goal are normal frames too
    results = run_episodes(planner, env_id, args.closed_loop, 10, args.closed_loop_seed, record=True,
                           desc='calibrate closed loop', stop_at_success=False)
    scores = []
    with torch.no_grad():
        for frames, actions in results.recordings:
            for seq_frames, blocks in episode_sequences(frames, actions, model.config.frameskip, phases):
                z = encode_frames(model, seq_frames[None])
                scores.append(surprise_scores(model, z, blocks[None])[0, 1:].cpu().numpy())
    if not scores:
        raise SystemExit('the planner-driven episodes were too short to score')
    print(f'closed loop: {results.summary()["successes"]}/{args.closed_loop} planner-driven episodes '
          'reached their goal')
    return calibrate(np.concatenate(scores), args.quantile, data=f'closed loop {env_id}',
                     history=model.config.history)
