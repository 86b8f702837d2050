"""`lewm suite`: recipes are valid commands; each task runs end to end; reruns resume; tables are written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import build_parser
from training.suite.recipe import SCALES, TASKS, RecipeError, TaskPaths, load_recipe, stages

pytest.importorskip('mujoco', reason='the suite collects from the MuJoCo tasks')
pytest.importorskip('h5py', reason='the suite writes HDF5 episode files')

# the micro scale of the tests: --smoke (a few episodes and steps per stage) on the micro model at 32 px
MICRO = ['--smoke', '--override', 'img_size=32', '--override', 'train.config=micro',
         '--override', 'train.set=[]']
TRAINING_STAGES = ('collect', 'collect-calibration', 'train', 'probe', 'calibrate-metric', 'tune',
                   'calibrate-surprise', 'train-controller')
EVAL_STAGES = ('eval-seed0', 'eval-seed1', 'diagnose-seed0', 'diagnose-seed1')


def suite(*args: str | Path) -> subprocess.CompletedProcess:
    """``lewm suite ARGS`` in a child process, as a user runs it (its stages are children of that one)."""
    return subprocess.run([sys.executable, '-m', 'training.cli', 'suite', *map(str, args)],
                          capture_output=True, text=True, timeout=900, check=False)


def stamps(root: Path) -> dict[str, float]:
    """Stage name -> modification time of its stamp (a stage that runs again rewrites it)."""
    files = (p for p in (root / 'stages').glob('*.json') if '.started' not in p.name)
    return {p.stem: p.stat().st_mtime_ns for p in files}


@pytest.mark.parametrize('scale', SCALES)
@pytest.mark.parametrize('task', TASKS)
def test_each_recipe_is_a_sequence_of_valid_lewm_commands(task, scale, tmp_path):
    recipe = load_recipe(task, scale)
    plan = stages(recipe, TaskPaths(tmp_path / task))
    seeds = recipe['eval']['seeds']
    assert {s.name for s in plan} == {*TRAINING_STAGES, *(f'{what}-seed{s}' for s in seeds
                                                          for what in ('eval', 'diagnose'))}
    assert len(seeds) >= 2 and recipe['eval']['episodes'] * len(seeds) >= 100  # the floor
    for stage in plan:
        args = build_parser(list(stage.argv)).parse_args(list(stage.argv))  # argparse exits on a bad flag
        assert hasattr(args, '_module'), stage.command
    # the paper scale is the paper's model and image size; the CPU scale our presets
    train = next(s for s in plan if s.name == 'train').argv
    assert train[train.index('--config') + 1] == ('paper' if scale == 'paper' else 'tiny')
    assert recipe['img_size'] == (224 if scale == 'paper' else recipe['img_size'])
    assert 0 < recipe['paper_success'] <= 1


def test_a_recipe_typo_or_unknown_task_is_refused():
    with pytest.raises(RecipeError, match='unknown key'):
        load_recipe('pusht', 'cpu', ['eval.episode=3'])
    with pytest.raises(RecipeError, match='trains at 96 px but img_size records 32 px'):
        load_recipe('reacher', 'cpu', ['img_size=32'])
    with pytest.raises(RecipeError, match='unknown task'):
        load_recipe('pushT', 'cpu')
    result = suite('--tasks', 'nope', '--out', '/nonexistent')
    assert result.returncode != 0 and 'unknown task' in result.stdout + result.stderr


@pytest.fixture(scope='module')
def micro_suite(tmp_path_factory) -> Path:
    """All four tasks through every stage at the micro scale, in one suite run."""
    out = tmp_path_factory.mktemp('suite')
    result = suite('--tasks', 'all', *MICRO, '--out', out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_every_task_runs_end_to_end_and_the_table_is_written(micro_suite):
    results = json.loads((micro_suite / 'results.json').read_text())
    assert [row['task'] for row in results['rows']] == list(TASKS)
    for row in results['rows']:
        assert row['complete'] and row['episodes'] == 4 and [s['seed'] for s in row['seeds']] == [0, 1]
        lo, hi = row['success_ci95']
        assert 0 <= lo <= row['success_rate'] <= hi <= 1
        assert row['smoke'] and row['paper_success'] == load_recipe(row['task'], 'cpu')['paper_success']
        assert set(row['stage_wall_s']) == {*TRAINING_STAGES, 'eval', 'diagnose'}
        assert len(row['commands']) == 12 and row['commands'][0].startswith('lewm collect')
        # the analysis of what limits the task: the probe of its state, the failures split by cause
        assert set(row['probe_r2']) == set(load_recipe(row['task'], 'cpu')['probe']['names'])
        d = row['diagnosis']
        assert d['episodes'] == 4 and d['failures'] == 4 - row['successes']
        assert d['model_failures'] + d['search_failures'] + d['objective_failures'] == d['failures']
        checkpoint = micro_suite / row['task'] / 'run' / 'final'
        meta = json.loads((checkpoint / 'meta.json').read_text())
        # calibrated, tuned and with its controller: the checkpoint a task ships as
        assert meta['surprise']['threshold'] > 0 and meta['planner']['source'] == 'lewm tune'
        assert (checkpoint / 'controller.safetensors').is_file()
    table = (micro_suite / 'results.md').read_text()
    papers = (('TwoRoom', '87.0 %'), ('Reacher', '86.0 %'), ('Push-T', '96.0 %'), ('Cube', '74.0 %'))
    for label, paper in papers:
        assert f'| {label} (smoke) |' in table and paper in table
    assert (micro_suite / 'results.png').stat().st_size > 10_000


def test_a_rerun_skips_finished_stages_and_resumes_an_interrupted_one(micro_suite, tmp_path):
    out = tmp_path / 'suite'
    shutil.copytree(micro_suite / 'pusht', out / 'pusht')
    root = out / 'pusht'
    before = stamps(root)
    data_mtime = (root / 'train.h5').stat().st_mtime_ns

    # the same command again: nothing runs
    result = suite('--tasks', 'pusht', *MICRO, '--out', out)
    assert result.returncode == 0 and stamps(root) == before
    assert result.stdout.count('skipped') == len(before)

    # interrupted during tuning (its stamp missing, the attempt recorded): tuning and what follows run again,
    # the data and the model are kept
    (root / 'stages' / 'tune.json').unlink()
    dry = suite('--tasks', 'pusht', *MICRO, '--out', out, '--dry-run')  # says so, and touches nothing
    assert dry.returncode == 0 and dry.stdout.count('would run') == 6 and 'train: done earlier' in dry.stdout
    assert stamps(root) == {k: v for k, v in before.items() if k != 'tune'}
    result = suite('--tasks', 'pusht', *MICRO, '--out', out)
    assert result.returncode == 0, result.stdout[-2000:]
    after = stamps(root)
    redone = {name for name in after if after[name] != before[name]}
    assert redone == {'tune', 'calibrate-surprise', *EVAL_STAGES}
    assert (root / 'train.h5').stat().st_mtime_ns == data_mtime

    # a stage that fails leaves no stamp and fails the run; the next run starts at that stage
    before = stamps(root)
    result = suite('--tasks', 'pusht', *MICRO, '--override', 'eval.budget=0', '--out', out)
    assert result.returncode == 1 and 'eval-seed0 failed' in result.stdout
    assert 'eval-seed0' not in stamps(root)
    result = suite('--tasks', 'pusht', *MICRO, '--out', out)
    assert result.returncode == 0
    after = stamps(root)
    assert {name for name in after if after.get(name) != before.get(name)} == set(EVAL_STAGES)


def test_an_interrupted_training_continues_from_its_last_checkpoint(micro_suite, tmp_path):
    out = tmp_path / 'suite'
    shutil.copytree(micro_suite / 'tworoom', out / 'tworoom')
    root = out / 'tworoom'
    # as a Ctrl-C during training leaves it: the attempt recorded, no stamp, no final checkpoint
    train = json.loads((root / 'stages' / 'train.json').read_text())
    (root / 'stages' / 'train.started.json').write_text(json.dumps({'argv': train['argv']}))
    (root / 'stages' / 'train.json').unlink()
    shutil.rmtree(root / 'run' / 'final')
    result = suite('--tasks', 'tworoom', *MICRO, '--out', out, '--until', 'train')
    assert result.returncode == 0, result.stdout[-2000:]
    assert '--resume' in result.stdout and 'skipped' in result.stdout
    assert json.loads((root / 'stages' / 'train.json').read_text())['resumed'] is True
    assert (root / 'run' / 'final' / 'meta.json').is_file()


def test_an_output_folder_of_another_scale_is_refused(micro_suite, tmp_path):
    out = tmp_path / 'suite'
    shutil.copytree(micro_suite / 'cube', out / 'cube')
    result = suite('--tasks', 'cube', '--override', 'img_size=32', '--out', out)  # not --smoke
    assert result.returncode != 0 and 'give another --out' in result.stdout + result.stderr
