"""``lewm collect``: roll a policy in a MuJoCo task and write the episodes to an HDF5 episode file.

Episode ``i`` is collected with seed ``seed + i`` (env reset and policy noise), so a file is the same
whatever the number of worker processes, and a resumed run continues exactly where the killed one
stopped. The file is written as ``<out>.partial`` and renamed when complete (docs/data-format.md).

With the default ``--goals chain`` an episode runs its full length and, each time the expert
reaches its goal, the task draws a new one: every frame then shows purposeful motion instead of an
agent idling at its goal. ``episode_success`` records whether the episode's first goal was reached.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# settings that must match for --resume to continue a file
_RESUME_KEYS = (
    'env_id', 'policy', 'noise', 'expert_fraction', 'seed', 'episode_steps', 'goals', 'perturb',
    'perturb_step',
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lewm collect``."""
    parser.add_argument('--env', required=True,
                        help='task id: lewm/PushT-v0, lewm/TwoRoom-v0, lewm/Reacher-v0 or lewm/Cube-v0')
    parser.add_argument('--episodes', type=int, required=True, help='number of episodes in the file')
    parser.add_argument('--out', required=True, help='output HDF5 file (written as <out>.partial until done)')
    parser.add_argument('--policy', choices=('expert', 'random', 'mixed'), default='expert',
                        help='scripted expert (privileged state), uniform random actions, or mixed: each '
                             'episode expert (see --expert-fraction) or random')
    parser.add_argument('--noise', type=float, default=0.0,
                        help='std of Gaussian noise added to the expert actions ([-1, 1] units)')
    parser.add_argument('--expert-fraction', type=float, default=None,
                        help='with --policy mixed: share of episodes driven by the expert (default: '
                             'MixedPolicy.DEFAULT_EXPERT_FRACTION, 0.25)')
    parser.add_argument('--img-size', type=int, default=224, help='image size in pixels (64 for CPU presets)')
    parser.add_argument('--workers', type=int, default=1, help='worker processes, each with its own renderer')
    parser.add_argument('--seed', type=int, default=0, help='base seed; episode i uses seed + i')
    parser.add_argument('--steps', type=int, default=None,
                        help='env steps per episode (default: the task maximum, e.g. 200 for Push-T)')
    parser.add_argument('--goals', choices=('chain', 'single'), default='chain',
                        help='chain: draw a new goal each time one is reached; single: keep the first')
    parser.add_argument('--perturb', choices=('teleport', 'recolour'), default=None,
                        help='apply this violation-of-expectation event in every episode')
    parser.add_argument('--perturb-step', type=int, default=30, help='env step of the --perturb event')
    parser.add_argument('--no-state', action='store_true', help='do not record the state/proprio columns')
    parser.add_argument('--resume', action='store_true', help='continue an unfinished <out>.partial file')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output file')


# -- one episode (runs in the main process or in a worker) -------------------------------------------
_ENV = None


def _init_worker(env_id: str, img_size: int) -> None:
    global _ENV
    # Ctrl-C in a terminal reaches the whole process group: the main process stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lewm_ros.sim import make_env

    _ENV = make_env(env_id, img_size=img_size)


def collect_episode(env: Any, job: dict[str, Any], check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Roll one episode as ``job`` says; returns its columns and counts.

    ``check()`` is called before every step; it may raise to abandon the episode (Ctrl-C).
    """
    from lewm_ros.sim.experts import make_policy

    seed = job['seed']
    options = {'perturb': (job['perturb'], job['perturb_step'])} if job['perturb'] else None
    obs, info = env.reset(seed=seed, options=options)
    rng = np.random.default_rng([seed, 1])  # policy noise and new goals; independent of the env's stream
    policy = make_policy(env, job['policy'], noise=job['noise'], rng=rng,
                         expert_fraction=job['expert_fraction'])
    steps = job['steps']
    pixels = np.empty((steps + 1, *obs.shape), np.uint8)
    actions = np.empty((steps, env.action_dim), np.float32)
    state = np.empty((steps + 1, env.state_dim), np.float32)
    proprio = np.empty((steps + 1, len(info['proprio'])), np.float32)
    pixels[0], state[0], proprio[0] = obs, info['state'], info['proprio']
    first_success, goals_reached = False, 0
    for t in range(steps):
        if check is not None:
            check()
        action = policy.act(obs)
        obs, _, _, _, info = env.step(action)
        actions[t] = action
        pixels[t + 1], state[t + 1], proprio[t + 1] = obs, info['state'], info['proprio']
        if info['is_success']:
            first_success = first_success or goals_reached == 0
            goals_reached += 1
            if job['goals'] == 'chain':  # with 'single' the expert holds the goal to the end
                env.resample_goal(rng)
                policy.reset()
    return {'index': job['index'], 'pixels': pixels, 'actions': actions, 'state': state,
            'proprio': proprio, 'success': bool(first_success), 'goals_reached': goals_reached}


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    return collect_episode(_ENV, job)


def _pool_results(
    pool: Any, jobs: list[dict[str, Any]], check: Callable[[], None]
) -> Iterator[dict[str, Any]]:
    """The workers' episodes in job order, with ``check()`` called while waiting for each."""
    results = pool.imap(_run_job, jobs)  # in order, so the file does not depend on --workers
    for _ in jobs:
        while True:
            check()
            try:
                yield results.next(timeout=0.1)
                break
            except mp.TimeoutError:
                continue


# -- the command -------------------------------------------------------------------------------------
def _check_output(out: Path, resume: bool, overwrite: bool) -> None:
    from training.data.episodes import partial_path

    if out.exists() and not overwrite:
        raise SystemExit(f'{out} already exists; pass --overwrite to replace it or choose another --out')
    partial = partial_path(out)
    if partial.exists() and not (resume or overwrite):
        raise SystemExit(f'an unfinished {partial} exists (an interrupted run); pass --resume to continue it '
                         'or --overwrite to start again')
    if resume and not partial.exists():
        raise SystemExit(f'--resume: there is no {partial} to continue')
    if overwrite and not resume:
        partial.unlink(missing_ok=True)


def _stored_attrs(partial: Path) -> dict[str, Any]:
    """Metadata of an unfinished file, as plain Python values."""
    import h5py

    try:
        with h5py.File(partial, 'r') as f:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except OSError as err:  # HDF5 is not crash-safe: a kill in the middle of a write can break it
        raise SystemExit(f'{partial} is damaged ({err}); the run was killed while writing: delete it and '
                         'collect again (or use --overwrite)') from err


def run(args: argparse.Namespace) -> int:
    """Collect the episodes and write the file.

    Ctrl-C (or SIGTERM) stops at the next env step: the complete episodes stay in ``<out>.partial``
    (marked incomplete), the message says how to resume, and the exit code is 130 (143).
    """
    from training.interrupts import GracefulStop

    with GracefulStop() as stop:
        return _collect(args, stop)


def _collect(args: argparse.Namespace, stop: Any) -> int:
    from tqdm import tqdm

    from lewm_ros.sim import ENV_IDS, make_env
    from lewm_ros.sim.experts import MixedPolicy
    from training.data.episodes import EpisodeWriter, partial_path
    from training.interrupts import exit_code

    if args.expert_fraction is None:
        args.expert_fraction = MixedPolicy.DEFAULT_EXPERT_FRACTION

    if args.env not in ENV_IDS:
        raise SystemExit(f'unknown --env {args.env!r}; choose one of {", ".join(ENV_IDS)}')
    if args.episodes < 1 or args.workers < 1:
        raise SystemExit('--episodes and --workers must be at least 1')
    if not 0.0 <= args.expert_fraction <= 1.0:
        raise SystemExit(f'--expert-fraction must be in [0, 1], got {args.expert_fraction}')
    if args.noise < 0:
        raise SystemExit(f'--noise must be >= 0, got {args.noise}')
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f'--steps must be at least 1, got {args.steps}')
    out = Path(args.out)
    _check_output(out, args.resume, args.overwrite)

    try:
        env = make_env(args.env, img_size=args.img_size)  # for metadata; also the renderer when --workers 1
    except ValueError as err:
        raise SystemExit(f'--img-size: {err}') from err
    steps = int(args.steps or env.max_episode_steps)
    if args.perturb and not 1 <= args.perturb_step <= steps:
        raise SystemExit(f'--perturb-step must be in [1, {steps}] (the episode length), '
                         f'got {args.perturb_step}')
    attrs = {
        'env_id': args.env, 'frameskip': env.frameskip, 'control_rate_hz': float(env.control_rate_hz),
        'action_low': env.action_space.low, 'action_high': env.action_space.high,
        'policy': args.policy, 'noise': float(args.noise if args.policy != 'random' else 0.0),
        'expert_fraction': {'expert': 1.0, 'random': 0.0}.get(args.policy, float(args.expert_fraction)),
        'seed': int(args.seed), 'episode_steps': steps, 'goals': args.goals,
        'perturb': args.perturb or '', 'perturb_step': int(args.perturb_step if args.perturb else 0),
        'state_dim': env.state_dim, 'collector': 'lewm collect',
    }
    if args.resume:
        stored = _stored_attrs(partial_path(out))
        mismatched = {k: (stored[k], attrs[k]) for k in _RESUME_KEYS
                      if k in stored and str(stored[k]) != str(attrs[k])}
        if mismatched:
            raise SystemExit(f'--resume: {partial_path(out)} was collected with other settings '
                             f'(file vs now: {mismatched}); use the same options, or --overwrite')
    record_state = not args.no_state
    if stop.requested:  # interrupted while setting up: nothing is written yet
        env.close()
        stop.check()
    writer = EpisodeWriter(
        out, image_size=args.img_size, action_dim=env.action_dim,
        state_dim=env.state_dim if record_state else None,
        proprio_dim=len(env.proprio()) if record_state else None,
        attrs=attrs, resume=args.resume,
    )
    done = writer.num_episodes
    jobs = [{'index': i, 'seed': args.seed + i, 'policy': args.policy, 'noise': args.noise,
             'expert_fraction': args.expert_fraction, 'steps': steps,
             'goals': args.goals, 'perturb': args.perturb, 'perturb_step': args.perturb_step}
            for i in range(done, args.episodes)]
    if done:
        print(f'resuming {out}.partial: {done} episodes already there, {len(jobs)} to go', file=sys.stderr)

    frames = successes = goals = 0
    start_time = time.perf_counter()
    pool = None
    try:
        if args.workers > 1 and len(jobs) > 1:
            env.close()
            pool = mp.get_context('spawn').Pool(args.workers, initializer=_init_worker,
                                                initargs=(args.env, args.img_size))
            results = _pool_results(pool, jobs, stop.check)
        else:
            results = (collect_episode(env, job, stop.check) for job in jobs)
        with tqdm(total=args.episodes, initial=done, unit='ep', desc=f'collect {args.env}') as bar:
            for episode in results:
                writer.add_episode(episode['pixels'], episode['actions'],
                                   state=episode['state'] if record_state else None,
                                   proprio=episode['proprio'] if record_state else None,
                                   success=episode['success'])
                frames += len(episode['pixels'])
                successes += episode['success']
                goals += episode['goals_reached']
                elapsed = time.perf_counter() - start_time
                bar.set_postfix(fps=f'{frames / max(elapsed, 1e-9):.0f}',
                                success=f'{successes / (bar.n - done + 1):.2f}')
                bar.update(1)
                stop.check()
    except BaseException as err:
        writer.close(complete=False)
        print(f'interrupted: {writer.num_episodes} complete episodes are in {out}.partial; '
              'run the same command with --resume to continue', file=sys.stderr)
        if isinstance(err, KeyboardInterrupt):
            return exit_code(err)
        raise
    finally:
        if pool is not None:
            pool.terminate()
        env.close()
    writer.close(complete=True)
    if stop.requested:  # at the very end: the file is complete, but the user asked to stop
        print(f'interrupted after the last episode: {out} is complete', file=sys.stderr)
        return 128 + stop.signum
    elapsed = time.perf_counter() - start_time
    summary = {
        'out': str(out), 'env_id': args.env, 'policy': args.policy, 'noise': args.noise,
        'img_size': args.img_size, 'workers': args.workers, 'episodes_collected': len(jobs),
        'frames': frames, 'seconds': round(elapsed, 2), 'frames_per_s': round(frames / max(elapsed, 1e-9), 1),
        'first_goal_success_rate': round(successes / max(len(jobs), 1), 3),
        'goals_reached_per_episode': round(goals / max(len(jobs), 1), 2),
    }
    print(json.dumps(summary))
    return 0
