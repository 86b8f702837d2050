"""``lewm train-controller``: a goal-conditioned controller on a checkpoint's frozen embeddings.

Every frame of the episode file is encoded once by the (frozen) world model. Training samples
are hindsight goals: from a frame of an episode, a later block-boundary frame of the same episode
``k`` blocks on (1 <= k <= ``--max-ahead``) is the goal, and the blocks actually executed from
there are the target (all ``--horizon`` of them the episode holds: past the goal, they are what
the data did next, the tail of a plan the hybrid starts from). The controller is stored in the
checkpoint (``controller.safetensors`` + ``meta['controller']``), with its held-out figures.

Examples::

    lewm train-controller --checkpoint runs/tworoom/final --data data/tworoom.h5
    lewm eval --checkpoint runs/tworoom/final --planner-preset controller
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.reports import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm train-controller``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split('Examples::', 1)[1]
    parser.add_argument(
        '--checkpoint', required=True, help='checkpoint directory; the controller is stored in it'
    )
    parser.add_argument(
        '--data', required=True, help='episode file (HDF5), e.g. the one the model was trained on'
    )
    parser.add_argument('--steps', type=int, default=3000, help='optimiser steps (default: 3000)')
    parser.add_argument('--batch-size', type=int, default=512, help='samples per step (default: 512)')
    parser.add_argument(
        '--lr', type=float, default=1e-3, help='peak learning rate, cosine decay (default: 1e-3)'
    )
    parser.add_argument('--weight-decay', type=float, default=1e-4, help='AdamW weight decay (default: 1e-4)')
    parser.add_argument(
        '--history', type=int, default=3, help='frames the controller reads, current included (default: 3)'
    )
    parser.add_argument('--horizon', type=int, default=5, help='action blocks it outputs (default: 5)')
    parser.add_argument(
        '--max-ahead', type=int, default=10, help='farthest hindsight goal, in blocks (default: 10)'
    )
    parser.add_argument('--hidden', type=int, default=512, help='width of the MLP (default: 512)')
    parser.add_argument('--depth', type=int, default=3, help='hidden layers (default: 3)')
    parser.add_argument(
        '--val-fraction',
        type=float,
        default=0.1,
        help='share of episodes held out for validation (default: 0.1)',
    )
    parser.add_argument('--val-every', type=int, default=500, help='validate every N steps (default: 500)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps (default: auto)')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of the split, sampling and init (default: 0)'
    )
    parser.add_argument(
        '--log-dir',
        default=None,
        help="TensorBoard directory (default: runs/controller/<parent>-<checkpoint>; '' = none)",
    )
    parser.add_argument(
        '--json', dest='json_out', default=None, help='write the training figures to this JSON'
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


@dataclass
class EmbeddedEpisodes:
    """Every frame of an episode file as an embedding, with normalised actions and episode bounds.

    ``first[i]`` and ``last[i]`` are the first and last frame index of frame i's episode, so
    that a sample never looks across an episode boundary.
    """

    z: Any  # (N, D) float32
    actions: Any  # (N, A) normalised
    first: Any  # (N,) int64
    last: Any  # (N,) int64
    episode: Any  # (N,) int64
    finite: Any = None  # (N,) bool: the action row is finite (NaN rows are zeros in ``actions``)

    def __post_init__(self) -> None:
        import torch

        if self.finite is None:
            self.finite = torch.ones(len(self.z), dtype=torch.bool)


def embed_episodes(
    model: Any, path: str, device: Any, progress: bool = True, chunk: int = 256
) -> EmbeddedEpisodes:
    """Encode every frame of ``path`` with ``model`` (no gradients); actions z-scored by the model."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from lewm_ros.model import resize_pixels
    from training.data.episodes import EpisodeFile

    zs, acts, first, last, episode = [], [], [], [], []
    size = model.config.image_size
    with EpisodeFile(path) as f, torch.no_grad():
        if f.column('actions').shape[1] != model.config.action_dim:
            raise SystemExit(
                f'{path} has {f.column("actions").shape[1]}-d actions; the checkpoint expects '
                f'{model.config.action_dim}'
            )
        bar = tqdm(total=f.num_frames, desc='embedding frames', unit='frame', disable=not progress)
        offset = 0
        for i in range(f.num_episodes):
            ep = f.episode(i)
            n = len(ep['pixels'])
            for s in range(0, n, chunk):
                pixels = resize_pixels(torch.from_numpy(ep['pixels'][s : s + chunk]).to(device), size)
                zs.append(model.encode(pixels[None])[0].float().cpu())
                bar.update(min(chunk, n - s))
            acts.append(torch.from_numpy(np.asarray(ep['actions'], np.float32)))
            first.append(torch.full((n,), offset))
            last.append(torch.full((n,), offset + n - 1))
            episode.append(torch.full((n,), i))
            offset += n
        bar.close()
    actions = torch.cat(acts)
    finite = torch.isfinite(actions).all(-1)
    actions = torch.nan_to_num(model.normalize_actions(actions.to(model.action_mean.device)).cpu().float())
    return EmbeddedEpisodes(torch.cat(zs), actions, torch.cat(first), torch.cat(last), torch.cat(episode),
                            finite)


class HindsightSampler:
    """Batches of (history, blocks, goal, blocks ahead, targets, mask) from frames ``pool``."""

    def __init__(
        self, data: EmbeddedEpisodes, pool: Any, frameskip: int, history: int, horizon: int, max_ahead: int
    ) -> None:
        self.data, self.pool = data, pool
        self.fs, self.history, self.horizon, self.max_ahead = frameskip, history, horizon, max_ahead

    def sample(self, n: int, generator: Any) -> tuple[Any, ...]:
        """One batch of ``n`` samples drawn with ``generator``."""
        import torch

        d, fs, H = self.data, self.fs, self.history
        c = self.pool[torch.randint(len(self.pool), (n,), generator=generator)]
        ahead = torch.clamp((d.last[c] - c) // fs, max=self.max_ahead)
        k = 1 + (torch.rand(n, generator=generator) * ahead).long().clamp(max=ahead - 1)
        older = ((c - d.first[c]) // fs).clamp(max=H - 1)  # real frames before the current one
        back = torch.arange(H - 1, -1, -1)  # H-1 .. 0 blocks back
        hist = c[:, None] - torch.minimum(back[None], older[:, None]) * fs  # (n, H), pads repeat the oldest
        z = d.z[hist]
        steps = torch.arange(fs)
        block_rows = hist[:, :-1, None] + steps  # (n, H-1, fs): the block after each history frame
        padded = back[None, :-1] > older[:, None]  # that history frame is a repeat of the oldest
        blocks = d.actions[block_rows.clamp(max=len(d.z) - 1)]
        blocks = torch.where(padded[..., None, None], torch.zeros_like(blocks), blocks).reshape(
            n, H - 1, fs * d.actions.shape[1])
        goal = d.z[c + k * fs]
        target_rows = c[:, None, None] + torch.arange(self.horizon)[None, :, None] * fs + steps
        targets = d.actions[target_rows.clamp(max=len(d.z) - 1)]  # (n, horizon, fs, A)
        # every block the episode holds (the goal may lie before its end: the later blocks are what
        # the data did next, a plan's tail the hybrid starts from); a block with a NaN action is out
        inside = (torch.arange(self.horizon)[None] + 1) * fs <= (d.last[c] - c)[:, None]
        finite = d.finite[target_rows.clamp(max=len(d.z) - 1)].all(-1)
        mask = (inside & finite).float()
        return z, blocks, goal, k, targets, mask


def masked_mse(prediction: Any, targets: Any, mask: Any) -> Any:
    """Mean squared error over the unmasked blocks (B, horizon, fs, A) / mask (B, horizon)."""
    per_block = (prediction - targets).square().mean(dim=(2, 3))
    return (per_block * mask).sum() / mask.sum().clamp(min=1)


def validate(controller: Any, batch: tuple[Any, ...]) -> dict[str, float]:
    """Held-out loss, and R² of the next block and of all unmasked blocks against the data mean."""
    import torch

    z, blocks, goal, k, targets, mask = batch
    with torch.no_grad():
        pred = controller(z, blocks, goal, k)
    loss = float(masked_mse(pred, targets, mask))
    first = float(
        (pred[:, 0] - targets[:, 0]).square().mean() / targets[:, 0].var(dim=0).mean().clamp(min=1e-9)
    )
    weights = mask[..., None, None].expand_as(targets)
    mean = (targets * weights).sum(0) / weights.sum(0).clamp(min=1)
    var = float(((targets - mean).square() * weights).sum() / weights.sum().clamp(min=1))
    return {'loss': loss, 'r2_next_block': 1.0 - first, 'r2_all_blocks': 1.0 - loss / max(var, 1e-9)}


def fit_controller(
    data: EmbeddedEpisodes,
    config: Any,
    train_pool: Any,
    val_pool: Any,
    *,
    steps: int,
    batch_size: int = 512,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: Any = 'cpu',
    val_every: int = 500,
    writer: Any = None,
    progress: bool = False,
) -> tuple[Any, list[dict[str, float]]]:
    """Train a ``GoalController`` of ``config`` on hindsight samples of ``data``; returns it, val figures.

    ``train_pool`` and ``val_pool`` are the frame indices samples may start from (goals at least
    one block ahead). AdamW with a short warm-up and cosine decay; gradients clipped at 1.
    """
    import torch
    from tqdm import tqdm

    from lewm_ros.planning.controller import GoalController

    torch.manual_seed(seed)
    controller = GoalController(config).to(device)
    args = (config.frameskip, config.history, config.horizon, config.max_steps_ahead)
    sampler, val_sampler = HindsightSampler(data, train_pool, *args), HindsightSampler(data, val_pool, *args)
    generator = torch.Generator().manual_seed(seed + 1)
    val_batch = tuple(t.to(device) for t in val_sampler.sample(8192, torch.Generator().manual_seed(seed + 2)))
    optimizer = torch.optim.AdamW(controller.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = min(200, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    history: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc='train-controller', unit='step', disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group['lr'] = lr_at(step)
        z, blocks, goal, k, targets, mask = (t.to(device) for t in sampler.sample(batch_size, generator))
        loss = masked_mse(controller(z, blocks, goal, k), targets, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controller.parameters(), 1.0)
        optimizer.step()
        if writer is not None and step % 20 == 0:
            writer.add_scalar('train/loss', loss.item(), step)
            writer.add_scalar('train/lr', lr_at(step), step)
        if (step + 1) % val_every == 0 or step + 1 == steps:
            controller.eval()
            figures = validate(controller, val_batch)
            controller.train()
            history.append({'step': step + 1, **figures})
            bar.set_postfix(val_loss=f'{figures["loss"]:.3f}', r2=f'{figures["r2_next_block"]:.2f}')
            if writer is not None:
                for key, value in figures.items():
                    writer.add_scalar(f'val/{key}', value, step + 1)
    bar.close()
    return controller.eval(), history


def split_pools(
    data: EmbeddedEpisodes, frameskip: int, val_fraction: float, seed: int
) -> tuple[Any, Any, int]:
    """Start frames of training and held-out episodes (a goal one block ahead or more): train, val, n val."""
    import torch

    episodes = int(data.episode.max()) + 1
    order = torch.randperm(episodes, generator=torch.Generator().manual_seed(seed))
    val_episodes = order[: max(1, int(round(val_fraction * episodes)))]
    usable = data.last - torch.arange(len(data.z)) >= frameskip
    held_out = torch.isin(data.episode, val_episodes)
    return torch.nonzero(usable & ~held_out)[:, 0], torch.nonzero(usable & held_out)[:, 0], len(val_episodes)


def run(args: argparse.Namespace) -> int:
    """Embed, train, validate, store the controller in the checkpoint."""
    from lewm_ros.checkpoint import checkpoint_dir, load_checkpoint, save_controller
    from lewm_ros.device import resolve_device
    from lewm_ros.planning.controller import ControllerConfig
    from training.fit.trainer import dataset_fingerprint, git_commit

    for name in ('steps', 'batch_size', 'history', 'horizon', 'max_ahead', 'hidden', 'depth', 'val_every'):
        if getattr(args, name) < 1:
            raise SystemExit(f'--{name.replace("_", "-")} must be at least 1')
    if not 0 < args.val_fraction < 1:
        raise SystemExit('--val-fraction must be between 0 and 1')
    started = time.perf_counter()
    device = resolve_device(args.device)
    model, _ = load_checkpoint(args.checkpoint, device)
    mc = model.config
    if args.history > mc.history:
        raise SystemExit(f"--history {args.history} exceeds the world model's history {mc.history}: the "
                         'planner keeps no more frames than that')
    if not (args.lr > 0 and args.weight_decay >= 0):
        raise SystemExit('--lr must be positive and --weight-decay >= 0')
    data = embed_episodes(model, args.data, device, progress=not args.no_progress)
    embed_seconds = time.perf_counter() - started
    episodes = int(data.episode.max()) + 1
    if episodes < 2:
        raise SystemExit(
            f'{args.data} has {episodes} episode; the controller needs at least 2 (one held out)'
        )
    train_pool, val_pool, n_val = split_pools(data, mc.frameskip, args.val_fraction, args.seed)
    if len(train_pool) == 0 or len(val_pool) == 0:
        raise SystemExit(f'{args.data}: episodes are too short for a goal {mc.frameskip} steps ahead')
    config = ControllerConfig(
        embed_dim=mc.embed_dim,
        action_dim=mc.action_dim,
        frameskip=mc.frameskip,
        history=args.history,
        horizon=args.horizon,
        hidden=args.hidden,
        depth=args.depth,
        max_steps_ahead=args.max_ahead,
    )
    name = '-'.join(checkpoint_dir(args.checkpoint).resolve().parts[-2:])  # e.g. tworoom-final
    log_dir = args.log_dir if args.log_dir is not None else str(Path('runs/controller') / name)
    writer = None
    if log_dir:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir)
    print(
        f'{len(data.z)} frames of {episodes} episodes ({n_val} held out) embedded in {embed_seconds:.0f} s; '
        f'{args.steps} steps of {args.batch_size} on {device}'
        f'{f"; TensorBoard: {log_dir}" if log_dir else ""}'
    )
    train_started = time.perf_counter()
    try:
        controller, history = fit_controller(
            data,
            config,
            train_pool,
            val_pool,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            device=device,
            val_every=args.val_every,
            writer=writer,
            progress=not args.no_progress,
        )
    finally:
        if writer is not None:
            writer.close()
    final = history[-1]
    info = {
        'trained': {
            'data': str(args.data),
            'dataset': dataset_fingerprint(Path(args.data)),
            'git_commit': git_commit(),
            'steps': args.steps,
            'batch_size': args.batch_size,
            'lr': args.lr,
            'seed': args.seed,
            'episodes_train': episodes - n_val,
            'episodes_val': n_val,
            'seconds': round(time.perf_counter() - train_started + embed_seconds, 1),
            'device': str(device),
        },
        'validation': {k: round(v, 5) for k, v in final.items() if k != 'step'},
    }
    save_controller(args.checkpoint, controller.cpu(), info)
    print(
        f'held-out: loss {final["loss"]:.4f}, R² of the next block {final["r2_next_block"]:.3f}, of all '
        f'{args.horizon} blocks {final["r2_all_blocks"]:.3f}; stored in {checkpoint_dir(args.checkpoint)}'
    )
    if args.json_out:
        write_json(args.json_out, {'checkpoint': str(args.checkpoint), **info, 'history': history})
    return 0
