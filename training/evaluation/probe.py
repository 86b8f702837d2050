"""``lewm probe``: which state variables can be read linearly from a checkpoint's embeddings.

A JEPA is never told what to encode: nothing in its two loss terms rewards information, so a model
can reach a low prediction loss while its embedding ignores a degree of freedom the planner needs
(we saw a TwoRoom model that encoded the agent's x but not its y: every goal on the same vertical
line looked reached). A ridge regression from the embedding to each recorded state variable,
fitted on some episodes and scored (R²) on others, shows this in seconds. Angles are probed as
(cos, sin) so that wrapping does not count as an error.
"""

from __future__ import annotations

import argparse
from typing import Any

from training.reports import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm probe``."""
    parser.add_argument('--checkpoint', required=True, help='checkpoint directory')
    parser.add_argument('--data', required=True, help="episode file with a 'state' (or --column) column")
    parser.add_argument('--column', default='state', help="which recorded column to probe (default: state)")
    parser.add_argument(
        '--dims', type=int, nargs='+', default=None, help='column dims to probe (default: all)'
    )
    parser.add_argument(
        '--angle-dims', type=int, nargs='+', default=(),
        help='dims that are angles, probed as cos and sin (e.g. Reacher: 0 1)',
    )  # fmt: skip
    parser.add_argument('--frames', type=int, default=4000, help='at most this many frames (default: 4000)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument('--json', dest='json_out', default=None, help='write the R² values to this JSON file')


def ridge_r2(features: Any, targets: Any, train: Any, alpha: float = 1e-3) -> Any:
    """R² on the rows not in ``train`` of a ridge fit ``targets ~ features`` on the rows in ``train``."""
    import numpy as np

    X = np.c_[features, np.ones(len(features))]
    Xt, Yt = X[train], targets[train]
    weights = np.linalg.solve(Xt.T @ Xt + alpha * len(Xt) * np.eye(X.shape[1]), Xt.T @ Yt)
    test = ~train
    residual = ((X[test] @ weights - targets[test]) ** 2).mean(0)
    return 1.0 - residual / np.maximum(targets[test].var(0), 1e-12)


def probe_targets(
    values: Any, dims: list[int], angle_dims: set[int], column: str = 'state'
) -> tuple[list[str], Any]:
    """Names and (N, K) targets: each dim as is, or as its cos and sin when it is an angle."""
    import numpy as np

    names, columns = [], []
    for d in dims:
        if d in angle_dims:
            names += [f'cos {column}[{d}]', f'sin {column}[{d}]']
            columns += [np.cos(values[:, d]), np.sin(values[:, d])]
        else:
            names.append(f'{column}[{d}]')
            columns.append(values[:, d])
    return names, np.stack(columns, 1)


def run(args: argparse.Namespace) -> int:
    """Encode frames, fit on 70 % of the episodes, print R² on the rest."""
    import numpy as np
    import torch

    from lewm_ros.checkpoint import load_checkpoint
    from lewm_ros.device import resolve_device
    from training.data.episodes import EpisodeFile

    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device)
    with EpisodeFile(args.data) as f:
        if not f.has(args.column):
            raise SystemExit(f"{args.data} has no '{args.column}' column (collect it without --no-state)")
        frames, values, episode_of = [], [], []
        for i in range(f.num_episodes):
            episode = f.episode(i)
            frames.append(episode['pixels'])
            values.append(episode[args.column])
            episode_of.append(np.full(len(episode['pixels']), i))
            if sum(len(x) for x in frames) >= args.frames:
                break
    pixels = np.concatenate(frames)[: args.frames]
    values = np.concatenate(values)[: args.frames].astype(np.float64)
    episode_of = np.concatenate(episode_of)[: args.frames]
    if episode_of.max() < 1:
        raise SystemExit('lewm probe needs at least 2 episodes (fit on some, score on the others)')
    dims = args.dims if args.dims is not None else list(range(values.shape[1]))
    if any(not 0 <= d < values.shape[1] for d in dims):
        raise SystemExit(f"--dims must be in 0..{values.shape[1] - 1} for '{args.column}'")
    names, targets = probe_targets(values, dims, set(args.angle_dims), args.column)
    z = []
    with torch.no_grad():
        for start in range(0, len(pixels), 256):
            chunk = torch.from_numpy(pixels[start : start + 256]).to(device)
            z.append(model.encode(chunk[None])[0].float().cpu().numpy())
    train = episode_of < max(1, int(round(0.7 * (episode_of.max() + 1))))
    r2 = ridge_r2(np.concatenate(z), targets, train)
    print(f"linear probe of {args.column} from {meta['embed_dim']}-d embeddings "
          f'({int(train.sum())} frames to fit, {int((~train).sum())} to score):')
    for name, value in zip(names, r2, strict=True):
        note = '' if value > 0.5 else '   <- hardly encoded'
        print(f'  {name:<14} R² {value:6.3f}{note}')
    if args.json_out:
        write_json(args.json_out, {
            'checkpoint': str(args.checkpoint), 'data': str(args.data), 'column': args.column,
            'r2': {n: float(v) for n, v in zip(names, r2, strict=True)},
        })  # fmt: skip
    return 0
