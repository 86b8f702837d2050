"""``lewm bench train``: clips per second of the full training step (forward, backward, AdamW)."""

from __future__ import annotations

import argparse
import json
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the training benchmark."""
    parser.add_argument(
        '--preset', default='paper', help='training preset name or YAML path (default: paper)'
    )
    parser.add_argument('--batch', type=int, default=8, help='clips per step (default: 8)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N, mps or auto (default: cpu)')
    parser.add_argument(
        '--precision', default='auto', choices=('auto', 'bf16', 'fp32'), help='default: auto (as lewm train)'
    )
    parser.add_argument('--steps', type=int, default=10, help='timed steps (default: 10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first (default: 3)')
    parser.add_argument('--action-dim', type=int, default=2, help='action dimension of the synthetic data')
    parser.add_argument(
        '--threads', type=int, default=None, help='torch CPU threads (default: all usable cores)'
    )
    parser.add_argument('--compile', action='store_true', help='torch.compile the model first')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of a text line')


def run(args: argparse.Namespace) -> int:
    """Time ``--steps`` full training steps on random clips and report clips/s."""
    import torch

    from lewm_ros.device import resolve_device, usable_cores
    from lewm_ros.model import LeWM, ModelConfig, load_preset
    from training.fit.objective import make_optimizer, training_step
    from training.fit.precision import resolve_precision
    from training.fit.sigreg import SIGReg

    torch.set_num_threads(args.threads or usable_cores())
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    preset = load_preset(args.preset)
    cfg = ModelConfig.from_preset(args.preset, action_dim=args.action_dim)
    loss_cfg, optim_cfg = preset.get('loss') or {}, preset.get('optim') or {}
    torch.manual_seed(0)
    model = LeWM(cfg).to(device).train()
    if args.compile:
        model = torch.compile(model)
    sigreg = SIGReg(int(loss_cfg.get('num_projections', 1024)), int(loss_cfg.get('knots', 17)))
    optimizer = make_optimizer(
        model, float(optim_cfg.get('lr', 5e-5)), float(optim_cfg.get('weight_decay', 1e-3))
    )
    gen = torch.Generator().manual_seed(0)
    T, S = cfg.history + 1, cfg.image_size
    pixels = torch.randint(0, 256, (args.batch, T, S, S, 3), dtype=torch.uint8, generator=gen).to(device)
    actions = torch.randn(args.batch, cfg.history, cfg.action_input_dim, generator=gen).to(device)

    def step(i: int) -> None:
        terms, _ = training_step(
            model,
            sigreg,
            optimizer,
            pixels,
            actions,
            sigreg_lambda=float(loss_cfg.get('sigreg_lambda', 0.09)),
            grad_clip=float(optim_cfg.get('grad_clip', 1.0)),
            precision=precision,
            step=i,
        )
        terms.loss.item()  # waits for the device
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    rates = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + i)
        rates.append(args.batch / (time.perf_counter() - start))
    result = {
        'benchmark': 'train',
        'unit': 'clips/s',
        'median': statistics.median(rates),
        'min': min(rates),
        'max': max(rates),
        'preset': str(args.preset),
        'batch': args.batch,
        'device': str(device),
        'precision': precision,
        'threads': torch.get_num_threads(),
        'steps': args.steps,
        'parameters': sum(p.numel() for p in model.parameters()),
        'image_size': cfg.image_size,
        'frames_per_clip': T,
        'torch': torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f'train {args.preset} batch {args.batch} on {device} ({precision}, {result["threads"]} threads): '
            f'median {result["median"]:.2f} clips/s (min {result["min"]:.2f}, max {result["max"]:.2f})'
        )
    return 0
