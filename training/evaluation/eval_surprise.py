"""``lewm eval-surprise``: does the surprise score single out physically impossible events.

For each episode seed the task is rolled three times with the same start, policy and noise: once
normally, once with the object (or agent) *teleported* at ``--perturb-step`` and once with it
*recoloured* there. Surprise is scored at every block-boundary frame. Reported: the AUROC of the
perturbation frame's score against all normal frames' scores (teleport, recolour), the AUROC of
teleport against recolour, the false-flag rate of the calibrated threshold on the normal episodes
(and its detection rates), and a plot of the traces with the perturbation step marked.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from training.reports import save_figure, write_json

VARIANTS = ('normal', 'teleport', 'recolour')
POLICIES = ('expert', 'random', 'mixed')  # lewm_ros.sim.experts.POLICIES, without importing mujoco


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm eval-surprise``."""
    parser.add_argument(
        '--checkpoint', required=True, help='checkpoint directory (calibrated: lewm calibrate)'
    )
    parser.add_argument('--env', default=None, help="task id (default: the checkpoint's env_id)")
    parser.add_argument(
        '--episodes', type=int, default=20, help='episode seeds, each run 3 ways (default: 20)'
    )
    parser.add_argument('--steps', type=int, default=60, help='env steps per episode (default: 60)')
    parser.add_argument(
        '--perturb-step', type=int, default=30,
        help='env step after which the event happens; a multiple of the frameskip (default: 30)',
    )  # fmt: skip
    parser.add_argument(
        '--policy',
        choices=POLICIES,
        default=None,
        help="what drives the episodes, as in collect (default: the calibration data's, else expert)",
    )
    parser.add_argument(
        '--noise', type=float, default=None,
        help="expert action noise (default: the calibration data's, else 0)",
    )  # fmt: skip
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--seed', type=int, default=0, help='base seed (default: 0)')
    parser.add_argument('--json', dest='json_out', default=None, help='write the results to this JSON file')
    parser.add_argument('--plot', default=None, help='write a PNG of the surprise traces')


def auroc(positives: Any, negatives: Any) -> float:
    """Area under the ROC curve = P(positive > negative) + P(tie) / 2 (Mann-Whitney U), numpy only."""
    import numpy as np

    pos = np.asarray(positives, dtype=np.float64).ravel()
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float('nan')
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind='mergesort')
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    # average ranks over ties
    edges = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [values.size]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # 1-based average rank
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roll_episode(env: Any, variant: str, args: argparse.Namespace, index: int, frameskip: int) -> tuple:
    """One episode: (boundary frames (T, S, S, 3), executed blocks (T - 1, fs, A))."""
    import numpy as np

    from lewm_ros.sim.experts import make_policy

    seed = int(np.random.default_rng([args.seed, index]).integers(2**31 - 1))
    options = None if variant == 'normal' else {'perturb': (variant, args.perturb_step)}
    obs, _ = env.reset(seed=seed, options=options)
    policy = make_policy(env, args.policy, noise=args.noise, rng=np.random.default_rng([args.seed, index, 1]),
                         expert_fraction=args.expert_fraction)
    goal_rng = np.random.default_rng([args.seed, index, 2])
    frames, actions = [obs], []
    for t in range(args.steps):
        action = np.asarray(policy.act(obs), dtype=np.float32)
        obs, _, _, _, info = env.step(action)
        actions.append(action)
        if (t + 1) % frameskip == 0:
            frames.append(obs)
        if info['is_success']:  # keep the agent moving, as lewm collect does
            env.resample_goal(goal_rng)
            policy.reset()
    blocks = np.asarray(actions[: (len(frames) - 1) * frameskip]).reshape(len(frames) - 1, frameskip, -1)
    return np.stack(frames), blocks


def drive_like_calibration(args: argparse.Namespace, calibration: Any) -> None:
    """Fill an unset ``--policy``/``--noise`` from the calibration file's attributes.

    The false-flag rate only means something on frames like those the threshold was set on; a
    noise-free expert moves differently from the noisy one that recorded the calibration data.
    """
    attrs: dict[str, Any] = {}
    data = None if calibration is None else calibration.data
    if (args.policy is None or args.noise is None) and data and Path(data).is_file():
        from training.data.episodes import EpisodeFile

        with EpisodeFile(data) as f:
            attrs = f.attrs
    if args.policy is None:  # a user's recording (teleop, another robot) names no policy we have
        recorded = str(attrs.get('policy', 'expert'))
        args.policy = recorded if recorded in POLICIES else 'expert'
    if args.noise is None:
        args.noise = float(attrs.get('noise', 0.0))
    args.expert_fraction = attrs.get('expert_fraction')  # for --policy mixed; None: the default share
    source = f'like the calibration data {data}' if attrs else 'default'
    print(f'episodes driven by the {args.policy} policy, noise {args.noise:g} ({source})')


def plot_traces(
    path: str, traces: dict[str, Any], frameskip: int, perturb_step: int, threshold: float | None
) -> None:
    """Surprise over time for a few episodes of each kind, the event and the threshold marked."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {'normal': 'tab:gray', 'teleport': 'tab:red', 'recolour': 'tab:blue'}
    fig, ax = plt.subplots(figsize=(8, 4))
    for variant in VARIANTS:
        scores = traces[variant]
        steps = np.arange(scores.shape[1]) * frameskip
        for i, row in enumerate(scores[:8]):
            ax.plot(
                steps[1:], row[1:], color=colours[variant], alpha=0.6, lw=1, label=variant if i == 0 else None
            )
    ax.axvline(perturb_step, color='k', linestyle='--', lw=1, label='perturbation')
    if threshold is not None:
        ax.axhline(threshold, color='tab:orange', lw=1, label='calibrated threshold')
    ax.set_yscale('log')
    ax.set_xlabel('env step')
    ax.set_ylabel('surprise ||ẑ - z||² / D')
    ax.legend(loc='upper left', fontsize=8)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    """Roll, score and report."""
    import numpy as np
    from tqdm import tqdm

    from lewm_ros.checkpoint import load_checkpoint
    from lewm_ros.device import resolve_device
    from lewm_ros.sim import ENV_IDS, make_env
    from lewm_ros.surprise import SurpriseCalibration, surprise_scores

    model, meta = load_checkpoint(args.checkpoint, resolve_device(args.device))
    env_id = args.env or meta.get('env_id')
    if env_id not in ENV_IDS:
        raise SystemExit(
            f'--env must be one of {", ".join(ENV_IDS)} (the checkpoint says {meta.get("env_id")!r})'
        )
    fs = model.config.frameskip
    if args.episodes < 1:
        raise SystemExit('--episodes must be at least 1')
    if args.perturb_step % fs or not 0 < args.perturb_step < args.steps:
        raise SystemExit(
            f'--perturb-step must be a multiple of the frameskip {fs} between 1 and --steps {args.steps}, '
            f'got {args.perturb_step}'
        )
    event_frame = args.perturb_step // fs  # first boundary frame that shows the event
    calibration = SurpriseCalibration.from_meta(meta)
    drive_like_calibration(args, calibration)
    env = make_env(env_id, img_size=model.config.image_size)
    traces: dict[str, list] = {v: [] for v in VARIANTS}
    for index in tqdm(range(args.episodes), desc=f'surprise {env_id}', unit='episode'):
        for variant in VARIANTS:
            frames, blocks = roll_episode(env, variant, args, index, fs)
            traces[variant].append(surprise_scores(model, frames[None], blocks[None])[0].cpu().numpy())
    env.close()
    scores = {v: np.stack(traces[v]) for v in VARIANTS}
    normal = scores['normal'][:, 1:].ravel()
    normal = normal[np.isfinite(normal)]
    events = {v: scores[v][:, event_frame] for v in ('teleport', 'recolour')}
    threshold = None if calibration is None else calibration.threshold
    summary: dict[str, Any] = {
        'env_id': env_id,
        'checkpoint': str(args.checkpoint),
        'episodes': args.episodes,
        'steps': args.steps,
        'perturb_step': args.perturb_step,
        'event_frame': event_frame,
        'frameskip': fs,
        'policy': args.policy,
        'noise': args.noise,
        'seed': args.seed,
        'auroc_teleport_vs_normal': auroc(events['teleport'], normal),
        'auroc_recolour_vs_normal': auroc(events['recolour'], normal),
        'auroc_teleport_vs_recolour': auroc(events['teleport'], events['recolour']),
        'normal_frames': int(normal.size),
        'normal_median': float(np.median(normal)),
        'normal_p99': float(np.percentile(normal, 99)),
        'teleport_median': float(np.median(events['teleport'])),
        'recolour_median': float(np.median(events['recolour'])),
        'threshold': threshold,
        'calibration': None if calibration is None else calibration.to_dict(),
        'false_flag_rate': None if threshold is None else float(np.mean(normal > threshold)),
        'teleport_detection_rate': None
        if threshold is None
        else float(np.mean(events['teleport'] > threshold)),
        'recolour_detection_rate': None
        if threshold is None
        else float(np.mean(events['recolour'] > threshold)),
        'traces': {
            v: [[None if not np.isfinite(x) else float(x) for x in row] for row in scores[v]]
            for v in VARIANTS
        },
    }
    flag = (
        'no calibrated threshold in the checkpoint (run lewm calibrate) so no false-flag rate'
        if threshold is None
        else f'false flags {100 * summary["false_flag_rate"]:.2f} % of normal frames '
        f'at threshold {threshold:.4g}; '
        f'detected teleport {100 * summary["teleport_detection_rate"]:.0f} %, '
        f'recolour {100 * summary["recolour_detection_rate"]:.0f} %'
    )
    print(
        f'{env_id}: AUROC teleport {summary["auroc_teleport_vs_normal"]:.3f}, '
        f'recolour {summary["auroc_recolour_vs_normal"]:.3f} (vs {normal.size} normal frames), '
        f'teleport vs recolour {summary["auroc_teleport_vs_recolour"]:.3f}; medians: normal '
        f'{summary["normal_median"]:.3g}, teleport {summary["teleport_median"]:.3g}, '
        f'recolour {summary["recolour_median"]:.3g}\n{flag}'
    )
    if args.json_out:
        write_json(args.json_out, summary)
    if args.plot:
        plot_traces(args.plot, scores, fs, args.perturb_step, threshold)
    return 0
