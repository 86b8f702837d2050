"""End to end: collect -> train (micro, seconds) -> calibrate -> eval -> eval-surprise, plus bench plan.

The checkpoint is far too small and short-trained to plan well; these tests check that each
command runs on real MuJoCo episodes, real HDF5 files and a real checkpoint, and writes what it
promises. The statistics helpers are checked against hand-computed values.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mujoco')
h5py = pytest.importorskip('h5py')

from lewm_ros.checkpoint import build_metadata, load_checkpoint, read_metadata, save_checkpoint  # noqa: E402
from lewm_ros.model import LeWM, ModelConfig  # noqa: E402
from lewm_ros.planning import LatentPlanner, PlannerConfig  # noqa: E402
from lewm_ros.sim.two_room import SUCCESS_RADIUS  # noqa: E402
from training.cli import build_parser, main  # noqa: E402
from training.evaluation.eval_surprise import auroc  # noqa: E402
from training.evaluation.evaluate import planner_settings_from_args, wilson_interval  # noqa: E402
from training.evaluation.probe import probe_targets, ridge_r2  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
EPISODES, STEPS, FRAMESKIP = 6, 60, 5  # TwoRoom records with frameskip 5


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TwoRoom episode file and a micro checkpoint trained on it for a few steps."""
    root = tmp_path_factory.mktemp('eval')
    data = root / 'tworoom.h5'
    assert main(['collect', '--env', 'lewm/TwoRoom-v0', '--episodes', str(EPISODES), '--out', str(data),
                 '--img-size', '32', '--steps', str(STEPS), '--noise', '0.1']) == 0  # fmt: skip
    assert main(['train', '--config', 'micro', '--data', str(data), '--out', str(root / 'run'),
                 '--device', 'cpu', '--set', 'optim.max_steps=20',
                 '--set', 'train.log_every=10']) == 0  # fmt: skip
    return root


def recorded_episodes(path: Path) -> list[dict[str, np.ndarray]]:
    """Every episode of an episode file, read with plain h5py (not the reader under test)."""
    with h5py.File(path, 'r') as f:
        columns = {name: f[name][:] for name in ('pixels', 'actions', 'state')}
        bounds = zip(f['episode_offsets'][:], f['episode_lengths'][:], strict=True)
        return [{k: v[start : start + n] for k, v in columns.items()} for start, n in bounds]


@torch.no_grad()
def surprise_by_definition(model: LeWM, frames: np.ndarray, blocks: np.ndarray) -> list[float]:
    """s_t = ||predict(z[t-W..t-1], blocks)[last] - z_t||^2 / D for t >= 1, one window at a time."""
    W = model.config.history
    z = model.encode(torch.from_numpy(frames)[None])[0]
    acts = torch.from_numpy(blocks.reshape(1, len(blocks), -1)).float()
    a = model.embed_actions(model.normalize_actions(acts))[0]
    scores = []
    for t in range(1, len(z)):
        first = max(0, t - W)
        predicted = model.predict(z[None, first:t], a[None, first:t])[0, -1]
        scores.append(float((predicted - z[t]).square().mean()))
    return scores


def test_calibrate_stores_the_threshold_in_the_checkpoint(workdir: Path, capsys) -> None:
    ckpt = workdir / 'run' / 'final'
    assert read_metadata(ckpt)['surprise'] is None and read_metadata(ckpt)['goal_metric'] is None
    data = str(workdir / 'tworoom.h5')
    assert main(['calibrate', '--checkpoint', str(ckpt), '--data', data, '--device', 'cpu', '--dry-run',
                 '--json', '--closed-loop', '0']) == 0  # fmt: skip
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry['written'] is False and read_metadata(ckpt)['surprise'] is None
    assert read_metadata(ckpt)['goal_metric'] is None
    assert main(['calibrate', '--checkpoint', str(ckpt), '--data', data, '--device', 'cpu',
                 '--quantile', '0.99', '--closed-loop', '0']) == 0  # fmt: skip
    stored = read_metadata(ckpt)['surprise']
    assert set(stored['parts']) == {'recorded'} and stored['parts']['recorded']['n'] == stored['n']
    # every phase of every episode: frames phase, phase + 5, ... <= 60, each but the first scored
    frames = STEPS + 1
    expected_n = EPISODES * sum(len(range(p, frames, FRAMESKIP)) - 1 for p in range(FRAMESKIP))
    assert stored['n'] == expected_n
    assert stored['quantile'] == 0.99 and stored['history'] == 3
    # the threshold is the 0.99 quantile of the scores recomputed here, window by window
    model, _ = load_checkpoint(ckpt)
    scores = []
    for episode in recorded_episodes(workdir / 'tworoom.h5'):
        for phase in range(FRAMESKIP):
            idx = np.arange(phase, len(episode['pixels']), FRAMESKIP)
            blocks = np.stack([episode['actions'][i : i + FRAMESKIP] for i in idx[:-1]])
            scores += surprise_by_definition(model, episode['pixels'][idx], blocks)
    assert len(scores) == expected_n
    assert stored['threshold'] == pytest.approx(np.quantile(scores, 0.99), rel=1e-5)
    assert stored['mean'] == pytest.approx(np.mean(scores), rel=1e-5)
    assert stored['std'] == pytest.approx(np.std(scores), rel=1e-4)
    # the dry run measured the same frames; only its quantile (the default 0.995) differs
    assert dry['n'] == expected_n and dry['quantile'] == 0.995
    assert dry['threshold'] == pytest.approx(np.quantile(scores, 0.995), rel=1e-5)
    assert (dry['mean'], dry['std'], dry['history']) == (stored['mean'], stored['std'], stored['history'])
    # the goal metric: one-step changes of the same sequences, a symmetric D x D whitening matrix
    meta = read_metadata(ckpt)
    metric = meta['goal_metric']
    assert metric['kind'] == 'step_whitening' and metric['steps'] == expected_n
    W = np.array(metric['matrix'])
    assert W.shape == (meta['embed_dim'], meta['embed_dim']) and np.allclose(W, W.T, atol=1e-5)
    assert dry['goal_metric']['steps'] == expected_n and 'matrix' not in dry['goal_metric']
    planner = LatentPlanner.from_checkpoint(ckpt, PlannerConfig(goal_metric='whitened', device='cpu'))
    np.testing.assert_allclose(planner.metric.numpy(), W, atol=1e-6)
    capsys.readouterr()
    assert main(['info', str(ckpt)]) == 0
    assert f'step_whitening from {expected_n} one-step changes' in capsys.readouterr().out


def test_eval_runs_closed_loop_and_reports_success_and_timing(workdir: Path) -> None:
    out, plot = workdir / 'eval.json', workdir / 'eval.png'
    assert main(['eval', '--checkpoint', str(workdir / 'run' / 'final'), '--episodes', '3', '--envs', '2',
                 '--samples', '16', '--iters', '2', '--horizon', '2', '--replan-every', '1', '--budget', '15',
                 '--device', 'cpu', '--json', str(out), '--plot', str(plot)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result['env_id'] == 'lewm/TwoRoom-v0' and result['episodes'] == 3
    assert len(result['success_per_episode']) == 3
    assert result['success_rate'] == sum(result['success_per_episode']) / 3
    for record, ok in zip(result['episode_states'], result['success_per_episode'], strict=True):
        assert len(record['start']) == len(record['goal']) == len(record['end']) == 4
        # an env stops where it succeeded, and a failed one never reached its goal
        reached = np.linalg.norm(np.subtract(record['end'][:2], record['goal'][:2])) < SUCCESS_RADIUS
        assert reached == ok, record
    lo, hi = result['success_ci95']
    assert 0 <= lo <= result['success_rate'] <= hi <= 1
    # 15 steps = 3 blocks, re-planning every block: 3 calls for the first batch of 2, 3 for the last
    assert result['plan_calls'] == 6
    assert result['plan_ms_median'] > 0 and result['plan_ms_p90'] >= result['plan_ms_median']
    assert result['planner']['samples'] == 16 and result['planner']['receding_horizon'] == 1
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_calibrate_holds_the_threshold_on_planner_driven_frames_too(workdir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(workdir / 'run' / 'final', ckpt)
    assert main(['tune', '--checkpoint', str(ckpt), '--store', 'samples=16', 'iterations=2', 'elites=4',
                 'horizon=2', 'receding_horizon=1']) == 0  # fmt: skip
    assert main(['calibrate', '--checkpoint', str(ckpt), '--data', str(workdir / 'tworoom.h5'), '--device',
                 'cpu', '--closed-loop', '3']) == 0  # fmt: skip
    stored = read_metadata(ckpt)['surprise']
    parts = stored['parts']
    assert set(parts) == {'recorded', 'closed_loop'} and parts['closed_loop']['n'] > 0
    # the higher of the two quantiles: it holds on both kinds of normal frames
    assert stored['threshold'] == max(part['threshold'] for part in parts.values())


def test_eval_surprise_reports_auroc_false_flags_and_traces(workdir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(workdir / 'run' / 'final', ckpt)
    # a median threshold, so that some normal frames lie above it and the false-flag rate is not 0
    assert main(['calibrate', '--checkpoint', str(ckpt), '--data', str(workdir / 'tworoom.h5'),
                 '--device', 'cpu', '--quantile', '0.5', '--closed-loop', '0']) == 0  # fmt: skip
    out, plot = tmp_path / 'surprise.json', tmp_path / 'surprise.png'
    assert main(['eval-surprise', '--checkpoint', str(ckpt), '--episodes', '2', '--steps', '20',
                 '--perturb-step', '10', '--device', 'cpu', '--json', str(out),
                 '--plot', str(plot)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result['event_frame'] == 2 and result['normal_frames'] == 2 * 4
    threshold = read_metadata(ckpt)['surprise']['threshold']
    assert result['threshold'] == threshold
    # every figure follows from the traces: the event frame's scores against all scored normal frames
    traces = result['traces']
    normal = [score for row in traces['normal'] for score in row[1:]]
    events = {v: [row[result['event_frame']] for row in traces[v]] for v in ('teleport', 'recolour')}
    assert len(normal) == 8 and None not in normal

    def pairwise_auroc(positives: list[float], negatives: list[float]) -> float:
        pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
        return sum(pairs) / len(pairs)

    assert result['auroc_teleport_vs_normal'] == pytest.approx(pairwise_auroc(events['teleport'], normal))
    assert result['auroc_recolour_vs_normal'] == pytest.approx(pairwise_auroc(events['recolour'], normal))
    assert result['auroc_teleport_vs_recolour'] == pytest.approx(
        pairwise_auroc(events['teleport'], events['recolour']))  # fmt: skip
    assert 0 < result['false_flag_rate'] < 1
    assert result['false_flag_rate'] == pytest.approx(np.mean(np.array(normal) > threshold))
    for variant in ('teleport', 'recolour'):
        flagged = np.array(events[variant]) > threshold
        assert result[f'{variant}_detection_rate'] == pytest.approx(np.mean(flagged))
        assert result[f'{variant}_median'] == pytest.approx(np.median(events[variant]))
    assert result['normal_median'] == pytest.approx(np.median(normal))
    # unless told otherwise, episodes are driven like the calibration data (expert, noise 0.1)
    assert result['policy'] == 'expert' and result['noise'] == pytest.approx(0.1)
    assert set(traces) == {'normal', 'teleport', 'recolour'}
    assert all(len(row) == 5 and row[0] is None for rows in traces.values() for row in rows)
    # before the event the three variants are the same episode: same frames, same scores
    for normal, teleport in zip(traces['normal'], traces['teleport'], strict=True):
        assert normal[1] == pytest.approx(teleport[1])
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_eval_surprise_rejects_a_perturbation_between_blocks(workdir: Path) -> None:
    with pytest.raises(SystemExit, match='multiple of the frameskip'):
        main(['eval-surprise', '--checkpoint', str(workdir / 'run' / 'final'), '--perturb-step', '7',
              '--device', 'cpu'])  # fmt: skip


def test_bench_plan_prints_one_json_object(capsys) -> None:
    assert main(['bench', 'plan', '--preset', 'micro', '--samples', '8', '--iters', '2', '--horizon', '2',
                 '--plans', '2', '--threads', '1', '--json']) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['min'] <= result['median'] <= result['max']
    assert 'random weights' in result['weights']
    assert result['samples'] == 8 and result['iterations'] == 2 and result['history_frames'] == 3
    assert {'encode_ms', 'rollout_ms', 'solver_ms'} <= set(result)


def test_bench_plan_compare_bfloat16_judges_bf16_and_another_seed_by_float32(workdir: Path, capsys) -> None:
    from lewm_ros.planning import settings as planner_settings
    from lewm_ros.planning.goal_metric import goal_metric_from_meta
    from training.bench.plan import real_scenes

    ckpt, data = workdir / 'run' / 'final', workdir / 'tworoom.h5'
    settings = ['--samples', '16', '--iters', '2', '--elites', '4', '--horizon', '2', '--threads', '1']
    assert main(['bench', 'plan', '--checkpoint', str(ckpt), '--compare-bfloat16', '--data', str(data),
                 '--plans', '1', '--json', *settings]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['benchmark'] == 'plan-compare-bfloat16' and result['scenes'] == 1
    assert (result['samples'], result['iterations']) == (16, 2)
    # the same comparison made here on that one scene: each plan's cost judged by the float32 rollout,
    # relative to the float32 plan's; the first blocks' difference as a share of the action range
    model, meta = load_checkpoint(ckpt)
    bounds = meta['action_low'], meta['action_high'], goal_metric_from_meta(meta, model.config.embed_dim)
    [(frames, blocks, goal)] = real_scenes(str(data), 1, model.config.history, model.config.frameskip, 25, 0)
    explicit = {'samples': 16, 'iterations': 2, 'elites': 4, 'horizon': 2, 'threads': 1, 'device': 'cpu'}
    config = planner_settings.resolve(meta, None, explicit, 'flag').config  # as the bench resolves its flags
    variants = {'float32': {'dtype': 'float32'}, 'float32_seed2': {'dtype': 'float32', 'seed': 1},
                'bfloat16': {'dtype': 'bfloat16'}}  # fmt: skip
    plans = {name: LatentPlanner(model, config.replace(**v), *bounds).plan(frames, blocks, goal)
             for name, v in variants.items()}  # fmt: skip
    judge = LatentPlanner(model, config.replace(dtype='float32'), *bounds)
    costs = judge.score(frames, blocks, goal, torch.stack([p.sequence for p in plans.values()], 1))[0]
    span = np.subtract(bounds[1], bounds[0])
    for j, name in enumerate(variants):
        if name == 'float32':
            continue
        gap = float((costs[j] - costs[0]) / costs[0])
        moved = (plans[name].action_block - plans['float32'].action_block).abs().numpy()
        diff = float(np.mean(moved / span))
        assert result[name]['median_cost_gap'] == pytest.approx(gap, rel=1e-4, abs=1e-7), name
        assert result[name]['mean_first_block_diff_of_range'] == pytest.approx(diff, rel=1e-4), name
        assert result[name]['share_worse_by_5pct'] == float(gap > 0.05)
        assert diff > 0, f'{name} planned exactly the float32 plan: it did not run as asked'


def test_eval_flags_override_the_planner_config_file(tmp_path: Path) -> None:
    settings = tmp_path / 'planner.yaml'
    settings.write_text('planner:\n  solver: icem\n  samples: 600\n  icem_white_fraction: 0.25\n')
    argv = ['eval', '--checkpoint', 'unused', '--planner-config', str(settings),
            '--icem-white-fraction', '0.5', '--goal-cost', 'mean']  # fmt: skip
    config = planner_settings_from_args(build_parser(argv).parse_args(argv), {}, 'cpu').config
    assert (config.solver, config.samples, config.icem_white_fraction) == ('icem', 600, 0.5)
    assert config.goal_cost == 'mean'
    assert config.elites == 30 and config.seed == 0 and config.device == 'cpu'


def test_eval_explains_a_planner_setting_the_checkpoint_cannot_serve(tmp_path: Path) -> None:
    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    ckpt = save_checkpoint(tmp_path / 'uncalibrated', model, build_metadata(model, env_id='lewm/TwoRoom-v0'))
    with pytest.raises(SystemExit, match='run `lewm calibrate'):
        main(['eval', '--checkpoint', str(ckpt), '--goal-metric', 'whitened', '--device', 'cpu'])


def test_auroc_and_wilson_interval_match_hand_computed_values() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    # pairs (pos > neg): 2>1, 2=2 (half), 5>1, 5>2, 5>3 ... over 3 x 3 pairs
    pos, neg = [2, 5, 0], [1, 2, 3]
    expected = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / 9
    assert auroc(pos, neg) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    brute = np.mean(a[:, None] > b[None, :])
    assert auroc(a, b) == pytest.approx(brute)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(43, 50)
    assert lo == pytest.approx(0.7385, abs=1e-3) and hi == pytest.approx(0.9303, abs=1e-3)
    assert math.isclose(sum(wilson_interval(25, 50)), 1.0)
    for n in range(1, 201):  # every rate lies inside its interval (100/100 once plotted a negative error bar)
        for k in (0, n // 3, n):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)


def test_ridge_probe_scores_what_is_encoded_and_what_is_not() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, 8))
    encoded = features @ rng.normal(size=8)  # a linear read-out of the features
    ignored = rng.normal(size=600)  # independent of them
    angle = np.arctan2(features[:, 0], features[:, 1]) + 2 * np.pi * rng.integers(-3, 4, 600)  # wrapped
    names, targets = probe_targets(np.c_[encoded, ignored, angle], [0, 1, 2], {2})
    assert names == ['state[0]', 'state[1]', 'cos state[2]', 'sin state[2]']
    r2 = ridge_r2(features, targets, train=np.arange(600) < 400)
    assert r2[0] > 0.99 and abs(r2[1]) < 0.1
    # cos/sin of the angle are nonlinear in the features but clearly readable; the wraps do not hurt
    assert r2[2] > 0.5 and r2[3] > 0.5


def test_probe_reports_r2_per_state_variable(workdir: Path, capsys) -> None:
    out, ckpt, data = workdir / 'probe.json', str(workdir / 'run' / 'final'), str(workdir / 'tworoom.h5')
    assert main(['probe', '--checkpoint', ckpt, '--data', data, '--dims', '0', '1', '--angle-dims', '1',
                 '--device', 'cpu', '--json', str(out)]) == 0  # fmt: skip
    assert 'sin state[1]' in capsys.readouterr().out
    r2 = json.loads(out.read_text())['r2']
    assert list(r2) == ['state[0]', 'cos state[1]', 'sin state[1]']
    # the same read-out, computed here: ridge (alpha 1e-3 per frame, intercept penalised too) from the
    # checkpoint's embeddings, fitted on the first 4 of the 6 episodes and scored on the other 2
    model, _ = load_checkpoint(ckpt)
    episodes = recorded_episodes(workdir / 'tworoom.h5')
    with torch.no_grad():
        z = np.concatenate([model.encode(torch.from_numpy(e['pixels'])[None])[0].numpy() for e in episodes])
    state = np.concatenate([e['state'] for e in episodes]).astype(np.float64)
    targets = np.c_[state[:, 0], np.cos(state[:, 1]), np.sin(state[:, 1])]
    fit = np.concatenate([np.full(len(e['pixels']), i < 4) for i, e in enumerate(episodes)])
    X = np.c_[z, np.ones(len(z))]
    penalty = np.sqrt(1e-3 * fit.sum()) * np.eye(X.shape[1])
    weights = np.linalg.lstsq(np.r_[X[fit], penalty], np.r_[targets[fit], np.zeros((len(penalty), 3))],
                              rcond=None)[0]  # fmt: skip
    residual = X[~fit] @ weights - targets[~fit]
    expected = 1 - (residual**2).mean(0) / targets[~fit].var(0)
    np.testing.assert_allclose(list(r2.values()), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(SystemExit, match='--dims'):
        main(['probe', '--checkpoint', ckpt, '--data', data, '--dims', '9', '--device', 'cpu'])
