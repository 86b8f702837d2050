"""``lewm bench plan``: milliseconds per plan of the latent planner, with the time split.

Needs only torch, numpy and pyyaml. With ``--preset`` the model has random weights, which is fine
for timing (the planner does the same work whatever the weights) and says so in its output;
with ``--checkpoint`` it plans with a trained model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the planning benchmark."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', help='checkpoint directory to plan with')
    source.add_argument('--preset', help='training preset name or YAML (paper, tiny, ...): random weights')
    parser.add_argument(
        '--samples', type=int, default=None,
        help="candidates per iteration (default: the checkpoint's planner settings; with --preset the "
        "paper's CEM, 300)",
    )  # fmt: skip
    parser.add_argument('--iters', type=int, default=None, help='solver iterations (default: as --samples)')
    parser.add_argument('--elites', type=int, default=None, help='CEM elites (default: as --samples)')
    parser.add_argument('--horizon', type=int, default=None,
                        help='plan length in action blocks (default: as --samples)')
    parser.add_argument('--solver', default=None, choices=('cem', 'icem', 'mppi', 'controller'),
                        help="default: as --samples (controller: the checkpoint's; with --preset random)")
    parser.add_argument('--proposal', default=None, choices=('none', 'controller'),
                        help='controller: the solver starts from the controller\'s plan (the hybrid)')
    parser.add_argument('--planner-preset', default=None,
                        help='named planner settings (paper, recommended, controller, hybrid) over the '
                        "checkpoint's, or over the paper's CEM with --preset")
    parser.add_argument('--from-embeddings', action='store_true',
                        help='plan from frame embeddings, as the node does (it encodes each frame once, on '
                        'arrival); the encoding of one frame is timed apart and added per decision')
    parser.add_argument('--envs', type=int, default=1, help='environments planned in one batch (default: 1)')
    parser.add_argument(
        '--history-frames', type=int, default=None,
        help="observed frames per plan (default: the model's trained history; 1 = what the reference uses)",
    )  # fmt: skip
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N, mps or auto (default: cpu)')
    parser.add_argument(
        '--dtype',
        default='auto',
        choices=('auto', 'float32', 'bfloat16'),
        help='rollout precision (default: auto = bfloat16 where the device has native bf16 math)',
    )
    parser.add_argument('--rollout', default='cached', choices=('cached', 'naive'), help='default: cached')
    parser.add_argument('--compile', action='store_true', help='torch.compile the rollout')
    parser.add_argument(
        '--cuda-graphs', action='store_true', help='torch.compile with CUDA graphs (CUDA only)'
    )
    parser.add_argument('--plans', type=int, default=5, help='timed plans (default: 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed plans first (default: 1)')
    parser.add_argument(
        '--action-dim', type=int, default=2, help='action dimension with --preset (default: 2)'
    )
    parser.add_argument(
        '--threads', type=int, default=0,
        help='torch CPU threads (default 0: the planner\'s choice, 1 for small predictors, else all cores)'
    )
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    parser.add_argument(
        '--compare-bfloat16', action='store_true',
        help='instead of timing: plan --plans real scenes from --data in float32 and in bfloat16 and '
        'compare the plans (needs --checkpoint and --data; reads HDF5 with h5py)',
    )  # fmt: skip
    parser.add_argument('--data', default=None, help='episode file for --compare-bfloat16')


def real_scenes(path: str, count: int, history: int, frameskip: int, goal_ahead: int, seed: int) -> list:
    """``count`` (frames, blocks, goal image) from an episode file: a goal ``goal_ahead`` steps on."""
    import numpy as np

    from training.data.episodes import EpisodeFile

    rng = np.random.default_rng(seed)
    scenes = []
    span = (history - 1) * frameskip
    with EpisodeFile(path) as data:
        usable = [i for i in range(data.num_episodes) if data.lengths[i] > span + goal_ahead]
        if not usable:
            raise SystemExit(f'{path} has no episode longer than {span + goal_ahead} steps')
        for _ in range(count):
            episode = data.episode(int(rng.choice(usable)))
            t = int(rng.integers(span, len(episode['pixels']) - goal_ahead))
            idx = list(range(t - span, t + 1, frameskip))
            blocks = (
                np.stack([episode['actions'][i : i + frameskip] for i in idx[:-1]]) if len(idx) > 1 else None
            )
            scenes.append((episode['pixels'][idx][None], None if blocks is None else blocks[None],
                           episode['pixels'][t + goal_ahead][None]))  # fmt: skip
    return scenes


def compare_bfloat16(args: argparse.Namespace, config) -> int:
    """Do bf16 rollouts change the chosen plan? Compared with the spread between two float32 seeds."""
    import numpy as np
    import torch

    from lewm_ros.checkpoint import load_checkpoint
    from lewm_ros.planning import LatentPlanner
    from lewm_ros.planning.goal_metric import goal_metric_from_meta

    if not (args.checkpoint and args.data):
        raise SystemExit('--compare-bfloat16 needs --checkpoint and --data')
    model, meta = load_checkpoint(args.checkpoint, config.device)
    metric = goal_metric_from_meta(meta, model.config.embed_dim)
    bounds = (meta.get('action_low'), meta.get('action_high'), metric)
    planners = {
        'float32': LatentPlanner(model, config.replace(dtype='float32'), *bounds),
        'float32_seed2': LatentPlanner(model, config.replace(dtype='float32', seed=config.seed + 1), *bounds),
        'bfloat16': LatentPlanner(model, config.replace(dtype='bfloat16'), *bounds),
    }
    reference = planners['float32']
    span = np.asarray(bounds[1], np.float32) - np.asarray(bounds[0], np.float32) if all(bounds[:2]) else 2.0
    rows = {
        name: {'cost_gap': [], 'first_block_diff': [], 'ms': []} for name in ('float32_seed2', 'bfloat16')
    }
    mc = model.config
    for frames, blocks, goal in real_scenes(args.data, args.plans, mc.history, mc.frameskip, 25, args.seed):
        results = {}
        for name, planner in planners.items():
            planner.reset()
            results[name] = planner.plan(frames, blocks, goal)
        plans = torch.stack([results[n].sequence.float() for n in planners], dim=1).to(reference.dtype)
        costs = reference.score(frames, blocks, goal, plans)[0].float().cpu().numpy()  # float32 judge
        for j, name in enumerate(planners):
            if name in rows:
                rows[name]['cost_gap'].append(float((costs[j] - costs[0]) / max(costs[0], 1e-12)))
                diff = (
                    (results[name].action_block - results['float32'].action_block).abs().float().cpu().numpy()
                )
                rows[name]['first_block_diff'].append(float((diff / span).mean()))
                rows[name]['ms'].append(results[name].timing['total_ms'])
    summary = {'benchmark': 'plan-compare-bfloat16', 'checkpoint': args.checkpoint, 'data': args.data,
               'scenes': args.plans, 'samples': config.samples, 'iterations': config.iterations}  # fmt: skip
    for name, values in rows.items():
        summary[name] = {
            'median_cost_gap': float(np.median(values['cost_gap'])),
            'share_worse_by_5pct': float(np.mean(np.asarray(values['cost_gap']) > 0.05)),
            'mean_first_block_diff_of_range': float(np.mean(values['first_block_diff'])),
            'median_ms': float(np.median(values['ms'])),
        }
    if args.json:
        print(json.dumps(summary))
    else:
        for name, label in (('float32_seed2', 'float32, another seed'), ('bfloat16', 'bfloat16 rollout')):
            v = summary[name]
            print(f'{label:>22}: cost vs float32 plan {100 * v["median_cost_gap"]:+.1f} % (median), '
                  f'{100 * v["share_worse_by_5pct"]:.0f} % of scenes worse by > 5 %, first block differs by '
                  f'{100 * v["mean_first_block_diff_of_range"]:.1f} % of the action range; '
                  f'{v["median_ms"]:.0f} ms/plan')  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    """Time ``--plans`` plans on random observations and report ms per plan."""
    import numpy as np
    import torch

    from lewm_ros.checkpoint import read_metadata
    from lewm_ros.device import resolve_device
    from lewm_ros.model import LeWM, ModelConfig
    from lewm_ros.planning import LatentPlanner, settings
    from lewm_ros.planning.controller import ControllerConfig, GoalController
    from lewm_ros.planning.planner import needs_controller

    for name in ('samples', 'iters', 'horizon', 'envs', 'plans'):
        if (getattr(args, name) or 1) < 1:
            raise SystemExit(f'--{name.replace("_", "-")} must be at least 1')
    if args.threads < 0:
        raise SystemExit('--threads must be >= 0 (0: the planner chooses)')
    device = resolve_device(args.device)
    chosen = {'solver': args.solver, 'samples': args.samples, 'iterations': args.iters,
              'elites': args.elites, 'horizon': args.horizon, 'proposal': args.proposal}
    explicit = {k: v for k, v in chosen.items() if v is not None}
    explicit.update(dtype=args.dtype, rollout=args.rollout, compile=args.compile,
                    cuda_graphs=args.cuda_graphs, device=str(device), threads=args.threads, seed=args.seed)
    try:  # a checkpoint plans with its own settings; random weights are timed with the paper's CEM
        meta = read_metadata(args.checkpoint) if args.checkpoint else {}
        base = None if args.checkpoint else settings.resolve({}, 'paper').config
        preset = args.planner_preset or (None if args.checkpoint else 'paper')
        config = settings.resolve(meta, preset, explicit, 'flag', base=base).config
    except ValueError as err:
        raise SystemExit(f'lewm bench plan: {err}') from err
    torch.manual_seed(args.seed)
    if args.compare_bfloat16:
        return compare_bfloat16(args, config)
    if args.checkpoint:
        planner = LatentPlanner.from_checkpoint(args.checkpoint, config)
        weights = f'checkpoint {args.checkpoint}'
    else:
        cfg = ModelConfig.from_preset(args.preset, action_dim=args.action_dim)
        model = LeWM(cfg).to(device).eval()
        controller = None
        if needs_controller(config):  # the size `lewm train-controller` trains by default
            controller = GoalController(ControllerConfig(cfg.embed_dim, cfg.action_dim, cfg.frameskip))
        planner = LatentPlanner(model, config, [-1.0] * cfg.action_dim, [1.0] * cfg.action_dim,
                                controller=controller)
        weights = 'random weights: timing only'
    mc = planner.model.config
    frames_per_plan = args.history_frames or mc.history
    if not 1 <= frames_per_plan <= mc.history:
        raise SystemExit(f"--history-frames must be in 1..{mc.history} (the model's trained history)")
    rng = np.random.default_rng(args.seed)
    S, E, T = mc.image_size, args.envs, frames_per_plan
    frames = rng.integers(0, 256, (E, T, S, S, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (E, T - 1, mc.frameskip, mc.action_dim)).astype(np.float32)
    goal = rng.integers(0, 256, (E, S, S, 3), dtype=np.uint8)
    encode_one_ms = None
    if args.from_embeddings:  # the node encodes each frame once, on arrival, and plans from embeddings
        pixels = torch.from_numpy(frames[:1, -1:]).to(device)  # one frame of one env
        timed = _timed(lambda: planner.model.encode(pixels), args.plans + args.warmup)
        encode_one_ms = statistics.median(timed)
        with torch.no_grad():
            frames = planner.model.encode(torch.from_numpy(frames).to(device)).float()
            goal = planner.encode_goal(goal)

    for _ in range(args.warmup):
        planner.plan(frames, actions if T > 1 else None, goal)
    totals, parts = [], {'encode_ms': [], 'rollout_ms': [], 'solver_ms': []}
    for _ in range(args.plans):
        start = time.perf_counter()
        result = planner.plan(frames, actions if T > 1 else None, goal)
        totals.append((time.perf_counter() - start) * 1e3)
        for key in parts:
            parts[key].append(result.timing[key])
    summary = {
        'benchmark': 'plan',
        'unit': 'ms/plan',
        'median': statistics.median(totals),
        'min': min(totals),
        'max': max(totals),
        **{key: statistics.median(values) for key, values in parts.items()},
        'encode_one_frame_ms': encode_one_ms,
        'decision_ms': None if encode_one_ms is None else encode_one_ms + statistics.median(totals),
        'weights': weights,
        'preset': args.preset,
        'checkpoint': args.checkpoint,
        'solver': config.solver,
        'proposal': config.proposal,
        'samples': config.samples,
        'iterations': config.iterations,
        'elites': config.elites,
        'horizon': config.horizon,
        'goal_cost': config.goal_cost,
        'goal_metric': config.goal_metric,
        'envs': E,
        'history_frames': T,
        'rollout': args.rollout,
        'dtype': str(planner.rollout_dtype).replace('torch.', ''),
        'compile': bool(args.compile or args.cuda_graphs),
        'device': str(device),
        'threads': torch.get_num_threads(),
        'plans': args.plans,
        'parameters': planner.model.num_parameters(),
        'torch': torch.__version__,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        source = args.preset or args.checkpoint
        search = ('controller (one forward pass)' if config.solver == 'controller' else
                  f'{config.solver} {config.samples} x {config.iterations}'
                  + (' from the controller' if config.proposal == 'controller' else ''))
        print(
            f'plan {source} ({weights}): {search}, '
            f'H={config.horizon}, '
            f'{E} env(s), {T} frame(s) of history, {args.rollout} rollout, {summary["dtype"]}, on {device} '
            f'({summary["threads"]} threads)\n'
            f'  median {summary["median"]:.1f} ms/plan (min {summary["min"]:.1f}, max {summary["max"]:.1f}); '
            f'encode {summary["encode_ms"]:.1f}, rollout {summary["rollout_ms"]:.1f}, '
            f'solver {summary["solver_ms"]:.1f} ms'
            + ('' if encode_one_ms is None else
               f'\n  per decision as in the node: {summary["decision_ms"]:.1f} ms (encode the new frame '
               f'{encode_one_ms:.1f} ms + plan from embeddings)')
        )
    return 0


def _timed(fn, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn`` (no gradients), the first dropped as warm-up."""
    import torch

    times = []
    with torch.no_grad():
        for _ in range(max(2, repeats)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return times[1:]
