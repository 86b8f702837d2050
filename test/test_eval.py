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

pytest.importorskip('mujoco')
pytest.importorskip('h5py')

from lewm_ros.checkpoint import build_metadata, read_metadata, save_checkpoint  # noqa: E402
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
    assert stored['mean'] <= stored['threshold'] and stored['std'] > 0
    same = {k: dry[k] for k in stored if k != 'parts'} | {'quantile': 0.99, 'threshold': stored['threshold']}
    assert {k: v for k, v in stored.items() if k != 'parts'} == same
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


def test_eval_surprise_reports_auroc_false_flags_and_traces(workdir: Path) -> None:
    ckpt = workdir / 'run' / 'final'
    if read_metadata(ckpt)['surprise'] is None:  # the test may run alone
        assert main(['calibrate', '--checkpoint', str(ckpt), '--data', str(workdir / 'tworoom.h5'),
                     '--device', 'cpu']) == 0  # fmt: skip
    out, plot = workdir / 'surprise.json', workdir / 'surprise.png'
    assert main(['eval-surprise', '--checkpoint', str(ckpt), '--episodes', '2', '--steps', '20',
                 '--perturb-step', '10', '--device', 'cpu', '--json', str(out),
                 '--plot', str(plot)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    for key in ('auroc_teleport_vs_normal', 'auroc_recolour_vs_normal', 'auroc_teleport_vs_recolour'):
        assert 0.0 <= result[key] <= 1.0
    assert result['event_frame'] == 2 and result['normal_frames'] == 2 * 4
    assert 0.0 <= result['false_flag_rate'] <= 1.0
    assert result['threshold'] == read_metadata(ckpt)['surprise']['threshold']
    # unless told otherwise, episodes are driven like the calibration data (expert, noise 0.1)
    assert result['policy'] == 'expert' and result['noise'] == pytest.approx(0.1)
    traces = result['traces']
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
    assert main(['probe', '--checkpoint', ckpt, '--data', data, '--dims', '0', '1', '--device', 'cpu',
                 '--json', str(out)]) == 0  # fmt: skip
    assert 'state[1]' in capsys.readouterr().out
    r2 = json.loads(out.read_text())['r2']
    assert set(r2) == {'state[0]', 'state[1]'} and all(v <= 1.0 for v in r2.values())
    with pytest.raises(SystemExit, match='--dims'):
        main(['probe', '--checkpoint', ckpt, '--data', data, '--dims', '9', '--device', 'cpu'])
