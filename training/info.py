"""``lewm info CKPT``: print what a checkpoint holds (model, data conventions, provenance, calibration)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm info``."""
    parser.add_argument('checkpoint', help='checkpoint directory (holding model.safetensors and meta.json)')
    parser.add_argument('--json', action='store_true', help='print meta.json (plus tensor summary) as JSON')
    parser.add_argument(
        '--no-verify', action='store_true', help='skip loading the weights (faster, fewer checks)'
    )


def _fmt(values) -> str:
    if values is None:
        return '-'
    return '[' + ', '.join(f'{v:.4g}' for v in values) + ']'


def run(args: argparse.Namespace) -> int:
    """Print the summary; a missing or damaged checkpoint raises ``CheckpointError`` (exit code 1)."""
    from lewm_ros.checkpoint import inspect_checkpoint, load_checkpoint

    if args.no_verify:
        (meta, _), model = inspect_checkpoint(args.checkpoint, check_weights=False), None
    else:
        model, meta = load_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    cfg = meta['model_config']
    prov = meta.get('provenance') or {}
    dataset = prov.get('dataset') or {}
    lines = [
        f'checkpoint   {args.checkpoint}  ({meta["format"]} v{meta["format_version"]})',
        f'parameters   {meta.get("num_parameters", 0) / 1e6:.2f} M'
        + ('  (weights loaded and verified)' if model is not None else '  (weights not checked)'),
        f'encoder      ViT {cfg["image_size"]} px, patch {cfg["patch_size"]}, width {cfg["encoder_width"]}, '
        f'depth {cfg["encoder_depth"]}, heads {cfg["encoder_heads"]}',
        f'embedding    {cfg["embed_dim"]} dims (projector hidden {cfg["projector_hidden"]}, BatchNorm)',
        f'predictor    depth {cfg["predictor_depth"]}, '
        f'{cfg["predictor_heads"]} heads x {cfg["predictor_head_dim"]}, '
        f'MLP {cfg["predictor_mlp_dim"]}, history {cfg["history"]}',
        f'pixels       {meta.get("pixel_format", "uint8 RGB (H, W, 3)")}',
        f'actions      dim {cfg["action_dim"]}, frameskip {cfg["frameskip"]} '
        f'(blocks of {cfg["frameskip"] * cfg["action_dim"]} values)',
        f'  bounds     low {_fmt(meta.get("action_low"))}  high {_fmt(meta.get("action_high"))}',
        f'  z-score    mean {_fmt(meta.get("action_mean"))}  std {_fmt(meta.get("action_std"))}',
        f'env          {meta.get("env_id") or "-"}',
        f'trained      {prov.get("steps", "-")} steps ({prov.get("epochs", "-")} epochs) in '
        f'{prov.get("train_seconds", "-")} s on {prov.get("device", "-")} ({prov.get("precision", "-")}, '
        f'{prov.get("world_size", 1)} process(es)), torch {prov.get("torch_version", "-")}',
        f'created      {prov.get("created", "-")}, git {prov.get("git_commit") or "-"}',
        f'dataset      {dataset.get("path", "-")}'
        + (
            f'  {dataset.get("hash_method")} {str(dataset.get("hash"))[:16]}...'
            if dataset.get('hash')
            else ''
        ),
    ]
    if dataset.get('episodes_train') is not None:
        lines.append(
            f'             {dataset["episodes_train"]} train / '
            f'{dataset.get("episodes_val", 0)} val episodes, '
            f'{dataset.get("clips_train", "-")} train clips'
        )
    surprise = meta.get('surprise')
    lines.append(
        'surprise     ' + ('not calibrated (run lewm calibrate)' if not surprise else json.dumps(surprise))
    )
    metric = meta.get('goal_metric')
    lines.append(
        'goal metric  '
        + (
            'not calibrated (run lewm calibrate; needed for goal_metric: whitened)'
            if not metric
            else f'{metric["kind"]} from {metric["steps"]} one-step changes of {metric["data"]}'
        )
    )
    lines += _planner_lines(meta)
    lines.append(_controller_line(meta))
    print('\n'.join(lines))
    return 0


def _planner_lines(meta: dict) -> list[str]:
    """The planner settings every tool uses with this checkpoint, where each comes from, and how they did."""
    from lewm_ros.planning.settings import resolve

    resolved = resolve(meta)  # an invalid stored setting raises, naming the key
    config, block = resolved.config, meta.get('planner') or {}
    origin = (f'stored by {block.get("source", "?")}' if block else
              'none stored (run `lewm tune`): our recommended settings')
    lines = [f'planner      {config.solver} {config.samples} x {config.iterations} (elites {config.elites}), '
             f'horizon {config.horizon}, replan every {config.receding_horizon}, '
             f'goal cost {config.goal_cost}, '
             f'metric {config.goal_metric}, white fraction {config.icem_white_fraction:g}; {origin}',
             '  sources    ' + ', '.join(f'{k}: {v}' for k, v in resolved.sources.items())]
    measured = block.get('measured')
    if measured:
        lo, hi = measured.get('success_ci95', [None, None])
        ci = f', 95 % CI {100 * lo:.0f}-{100 * hi:.0f} %' if lo is not None else ''
        lines.append(f'  measured   success {100 * measured["success_rate"]:.1f} % of {measured["episodes"]} '
                     f'episodes{ci} on {measured.get("env_id", "?")} (seed {measured.get("seed", "?")})')
    return lines


def _controller_line(meta: dict) -> str:
    """What goal-conditioned controller the checkpoint carries, and how it did on held-out episodes."""
    block = meta.get('controller')
    if not block:
        return 'controller   none (lewm train-controller trains one for solver: controller and the hybrid)'
    cfg, val, trained = block.get('config', {}), block.get('validation', {}), block.get('trained', {})
    current = block.get('world_model_sha256') == (meta.get('weights') or {}).get('sha256')
    return (f"controller   MLP {cfg.get('depth')} x {cfg.get('hidden')}, reads {cfg.get('history')} frames, "
            f"plans {cfg.get('horizon')} blocks; {trained.get('steps', '?')} steps on "
            f"{trained.get('episodes_train', '?')} episodes; held-out R² of the next block "
            f"{val.get('r2_next_block', float('nan')):.2f}"
            + ('' if current else '; TRAINED FOR OTHER WORLD-MODEL WEIGHTS: retrain it'))
