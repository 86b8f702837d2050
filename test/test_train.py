"""End-to-end training on real HDF5 files: learning, collapse without SIGReg, resume, CLI, bench, info."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lewm_ros.checkpoint import load_checkpoint
from training.cli import main as lewm
from training.data.squares import write_squares_file
from training.fit.train_config import load_train_config
from training.fit.trainer import Trainer, lr_factor

REPO = Path(__file__).resolve().parent.parent


def micro(tmp_path: Path, data: Path, name: str, *overrides: str) -> dict:
    # one thread: the tests share a small machine, and 2 OpenMP threads on a busy 2-core box crawl
    base = [
        f'data.path={data}',
        f'train.out_dir={tmp_path / name}',
        'train.threads=1',
        'train.progress=false',
    ]
    return load_train_config('micro', base + list(overrides))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def series(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


@pytest.fixture(scope='module')
def squares(tmp_path_factory):
    return write_squares_file(
        tmp_path_factory.mktemp('data') / 'squares.h5', episodes=40, length=40, nan_action_episodes=2
    )


def test_tiny_model_overfits_a_tiny_dataset(tmp_path):
    data = write_squares_file(tmp_path / 'few.h5', episodes=4, length=30)
    config = micro(
        tmp_path, data, 'overfit', 'optim.max_steps=120', 'train.log_every=10', 'data.val_fraction=0.25'
    )
    final = Trainer(config).run()
    rows = metrics(tmp_path / 'overfit')
    losses = series(rows, 'train/loss')
    assert losses[-1] <= 0.5 * losses[0], losses
    assert series(rows, 'train/pred')[-1] <= 0.5 * series(rows, 'train/pred')[0]
    model, meta = load_checkpoint(final)
    assert meta['provenance']['steps'] == 120 and meta['provenance']['dataset']['path'] == str(data.resolve())
    assert meta['frameskip'] == 2 and meta['action_low'] == [-1.0, -1.0]
    assert meta['train_config']['optim']['max_steps'] == 120 and meta['surprise'] is None
    assert (tmp_path / 'overfit' / 'health.png').is_file()
    assert any(p.name.startswith('events.out.tfevents') for p in (tmp_path / 'overfit' / 'tb').iterdir())


def health(tmp_path: Path, data: Path, lam: float, steps: int) -> tuple[list[float], list[float]]:
    """Validation effective rank and embedding std (at steps 0, steps/2, steps) of one run."""
    name = f'lambda{lam}'
    config = micro(
        tmp_path, data, name, f'loss.sigreg_lambda={lam}', f'optim.max_steps={steps}', 'data.batch_size=64',
        f'train.val_every={steps // 2}', f'train.log_every={steps}', 'train.ckpt_every=0',
    )  # fmt: skip
    Trainer(config).run()
    rows = metrics(tmp_path / name)
    return series(rows, 'val/effective_rank'), series(rows, 'val/embedding_std')


def check_collapse(tmp_path: Path, data: Path, steps: int, rank_ratio: float) -> None:
    rank0, std0 = health(tmp_path, data, 0.0, steps)
    rank, std = health(tmp_path, data, load_train_config('micro')['loss']['sigreg_lambda'], steps)
    assert rank0[0] == rank[0]  # same start: same seed, same data
    # no regulariser and no stop-gradient: the embeddings shrink onto a few directions
    assert rank0[-1] < 0.5 * rank0[0] and std0[-1] < 0.75 * std0[0], (rank0, std0)
    # with SIGReg they spread out instead
    assert rank[-1] > rank_ratio * rank0[-1] and std[-1] > 2 * std0[-1], (rank, rank0, std, std0)


def test_embeddings_collapse_without_sigreg_and_not_with_it(tmp_path, squares):
    check_collapse(tmp_path, squares, steps=160, rank_ratio=1.15)


@pytest.mark.slow
def test_embeddings_collapse_without_sigreg_long_run(tmp_path, squares):
    check_collapse(tmp_path, squares, steps=800, rank_ratio=1.5)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, squares):
    common = ('optim.max_steps=30', 'train.ckpt_every=15', 'train.keep_checkpoints=true', 'train.log_every=5')
    whole = Trainer(micro(tmp_path, squares, 'whole', *common)).run()
    resumed = Trainer(
        micro(tmp_path, squares, 'resumed', *common), resume=tmp_path / 'whole' / 'step-00000015'
    ).run()
    a, _ = load_checkpoint(whole)
    b, meta = load_checkpoint(resumed)
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert meta['provenance']['steps'] == 30


def test_validation_batches_are_spread_over_the_validation_episodes(tmp_path, squares):
    trainer = Trainer(micro(tmp_path, squares, 'val', 'data.val_fraction=0.25'))
    trainer._setup_device()
    trainer._setup_data()
    starts = trainer.data.val.starts
    first = [int(starts[i]) for i in next(iter(trainer._val_loader(16, seed=0).batch_sampler))]
    assert len(first) == 16
    # not one episode's neighbouring clips: near-duplicates, which SIGReg would read as a collapse
    assert max(first) - min(first) > 0.5 * (starts.max() - starts.min()), first
    again = [int(starts[i]) for i in next(iter(trainer._val_loader(16, seed=0).batch_sampler))]
    assert again == first  # the same batches at every validation: the curve compares like with like


def test_training_precision_auto_is_bf16_only_where_the_cpu_has_it_natively():
    from test_planner import cpuinfo_says_native_bf16

    from training.fit.precision import resolve_precision

    cpu = torch.device('cpu')
    assert resolve_precision('auto', cpu) == ('bf16' if cpuinfo_says_native_bf16() else 'fp32')
    assert resolve_precision('bf16', cpu) == 'bf16' and resolve_precision('fp32', cpu) == 'fp32'
    assert resolve_precision('auto', torch.device('mps')) == 'fp32'
    with pytest.raises(ValueError, match='precision must be one of'):
        resolve_precision('fp16', cpu)


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_cli_train_info_and_config_errors(tmp_path, squares, capsys):
    out = tmp_path / 'cli'
    rc = lewm([
        'train', '--config', 'micro', '--data', str(squares), '--out', str(out), '--set', 'optim.max_steps=4',
        '--set', 'train.threads=1', '--set', 'train.progress=false',
    ])  # fmt: skip
    assert rc == 0 and (out / 'final' / 'model.safetensors').is_file()
    assert lewm(['info', str(out / 'final')]) == 0
    text = capsys.readouterr().out
    assert 'lewm/Squares-v0' in text and 'not calibrated' in text and 'frameskip 2' in text
    assert lewm(['train', '--config', 'micro', '--set', 'optim.lrr=1']) == 2
    assert "unknown key(s) ['lrr'] in section 'optim'" in capsys.readouterr().out
    assert lewm(['train', '--config', 'micro', '--data', str(tmp_path / 'none.h5')]) == 2
    assert 'does not exist' in capsys.readouterr().out
    assert lewm(['info', str(tmp_path / 'none')]) == 1
    # --resume without --config continues with the run's own configuration
    assert (
        lewm(
            ['train', '--resume', str(out / 'last'), '--set', 'optim.max_steps=6', '--set', 'train.threads=1']
        )
        == 0
    )
    assert load_checkpoint(out / 'final')[1]['provenance']['steps'] == 6


def test_bench_train_prints_json_without_training_extras():
    code = (
        'import sys, json; from training.cli import main; '
        "rc = main(['bench', 'train', '--preset', 'micro', '--batch', '4', '--steps', '2', '--warmup', '1', "
        "'--threads', '1', '--json', '--precision', 'fp32']); "
        "heavy = [m for m in ('h5py', 'rclpy', 'mujoco', 'matplotlib') if m in sys.modules]; "
        "print(json.dumps({'rc': rc, 'heavy': heavy}))"
    )
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    result, status = json.loads(lines[0]), json.loads(lines[-1])
    assert status == {'rc': 0, 'heavy': []}
    assert (
        result['unit'] == 'clips/s'
        and result['min'] <= result['median'] <= result['max']
        and result['min'] > 0
    )


def test_batchnorm_recalibration_matches_the_batches_and_touches_no_rng():
    from lewm_ros.model import LeWM, ModelConfig, normalize_pixels
    from training.fit.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    model = LeWM(ModelConfig.from_preset('micro', action_dim=2, frameskip=2, predictor_dropout=0.1)).train()
    gen = torch.Generator().manual_seed(1)
    batches = [
        {'pixels': torch.randint(0, 256, (6, 4, 32, 32, 3), dtype=torch.uint8, generator=gen),
         'actions': torch.randn(6, 3, 4, generator=gen)}
        for _ in range(3)
    ]  # fmt: skip
    rng = torch.get_rng_state()
    assert recalibrate_batchnorm(model, batches, torch.device('cpu')) == 3
    assert torch.equal(rng, torch.get_rng_state()) and model.training
    assert model.projector.norm.momentum == 0.1
    # the encoder projector's BatchNorm now holds the mean of its inputs over all 3 batches
    with torch.no_grad():
        model.eval()
        frames = [normalize_pixels(b['pixels'].reshape(-1, 32, 32, 3)) for b in batches]
        inputs = torch.cat([model.projector.fc1(model.encoder(f)) for f in frames])
    torch.testing.assert_close(model.projector.norm.running_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)


def test_rank_shares_are_disjoint_and_together_make_the_one_process_batch():
    from training.fit.trainer import EpochBatches

    size, batch, seed = 50, 8, 3
    one = EpochBatches(size, batch, seed)
    ranks = [EpochBatches(size, batch // 2, seed, rank=r, world=2) for r in range(2)]
    for epoch, start in ((0, 0), (1, 0), (1, 2)):  # a resumed epoch starts at a later batch
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch, start)
        assert len(one) == len(ranks[0]) == len(ranks[1]) == size // batch - start
        seen: list[set[int]] = [set(), set()]
        for whole, first, second in zip(one, *ranks, strict=True):
            assert len(first) == len(second) == batch // 2
            assert sorted(first + second) == sorted(whole)  # the global batch of step b is one process's
            seen[0].update(first)
            seen[1].update(second)
        assert not seen[0] & seen[1]
    one.set_epoch(0)
    assert list(one) != list(iter(EpochBatches(size, batch, seed + 1)))  # the order depends on the seed


def run_files(run_dir: Path) -> list[str]:
    """The files a run wrote, relative to its folder; TensorBoard's event files by kind only."""
    files = [str(p.relative_to(run_dir)) for p in sorted(run_dir.rglob('*')) if p.is_file()]
    return [f.split('.out.tfevents')[0] if f.startswith('tb/') else f for f in files]


def test_torchrun_two_cpu_processes_train_together_and_only_rank_0_writes(tmp_path, squares):
    settings = ['optim.max_steps=6', 'train.log_every=2', 'train.ckpt_every=3', 'train.threads=1',
                'train.progress=false', 'data.batch_size=16']  # fmt: skip
    torchrun = Path(sys.executable).parent / 'torchrun'
    command = [str(torchrun), '--standalone', '--nproc_per_node', '2', '-m', 'training.cli', 'train']
    command += ['--config', 'micro', '--data', str(squares), '--out', str(tmp_path / 'ddp')]
    command += [part for setting in settings for part in ('--set', setting)]
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    Trainer(micro(tmp_path, squares, 'one', *settings)).run()
    ddp, one = tmp_path / 'ddp', tmp_path / 'one'
    # rank 0 alone writes: the same files as one process, one event log, each metrics row once
    assert run_files(ddp) == run_files(one)
    assert len(list((ddp / 'tb').iterdir())) == 1
    assert [sorted(row) for row in metrics(ddp)] == [sorted(row) for row in metrics(one)]
    assert [row['step'] for row in metrics(ddp)] == [row['step'] for row in metrics(one)]
    _, meta = load_checkpoint(ddp / 'final')
    _, alone = load_checkpoint(one / 'final')
    assert meta['provenance']['world_size'] == 2 and alone['provenance']['world_size'] == 1
    assert meta['provenance']['steps'] == alone['provenance']['steps'] == 6
    assert meta['provenance']['dataset'] == alone['provenance']['dataset']  # the same clips, split alike
    assert load_checkpoint(ddp / 'last')[1]['provenance']['steps'] == 6
