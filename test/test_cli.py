"""The ``lewm`` command: runs without the editable-install hook, reports bad input and Ctrl-C in a line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from ros_test_utils import reap

from lewm_ros.checkpoint import load_checkpoint
from training.cli import main as lewm
from training.data.squares import write_squares_file

REPO = Path(__file__).resolve().parents[1]


def test_help_works_in_a_bare_interpreter_without_the_editable_install_hook():
    # -I -S: no site module, so no .pth file runs (the editable hook imports importlib.util, which
    # hid a missing import); the worktree and the venv's packages are put on sys.path by hand.
    paths = [str(REPO), sysconfig.get_paths()['purelib']]
    code = (
        f'import sys; sys.path[:0] = {paths!r}\n'
        "assert 'importlib.util' not in sys.modules\n"
        'from training.cli import main\n'
        'for argv in (["--help"], ["info", "--help"]):\n'
        '    try:\n'
        '        main(argv)\n'
        '    except SystemExit as exit:\n'
        '        assert exit.code == 0, exit.code\n'
    )
    result = subprocess.run([sys.executable, '-I', '-S', '-c', code], capture_output=True, text=True,
                            timeout=60, cwd='/')
    assert result.returncode == 0, result.stderr
    assert 'collect' in result.stdout and 'eval-surprise' in result.stdout and '--no-verify' in result.stdout


@pytest.fixture(scope='module')
def bad_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('bad')
    (root / 'not_a_checkpoint').mkdir()
    (root / 'not_a_checkpoint' / 'notes.txt').write_text('hello\n')
    corrupt = root / 'corrupt_meta'
    corrupt.mkdir()
    (corrupt / 'meta.json').write_text('{"format": "lewm-checkpoint", "format_version": 1, "model_con')
    (corrupt / 'model.safetensors').write_bytes(b'\0' * 64)
    return {'missing': root / 'nowhere', 'not_a_checkpoint': root / 'not_a_checkpoint',
            'corrupt_meta': corrupt}


EXPECTED = {  # kind of bad checkpoint -> what the error line says
    'missing': 'does not exist', 'not_a_checkpoint': 'meta.json is missing', 'corrupt_meta': 'not valid JSON',
}
COMMANDS = {
    'info': ['info', '{ckpt}'],
    'info --no-verify': ['info', '--no-verify', '{ckpt}'],
    'probe': ['probe', '--checkpoint', '{ckpt}', '--data', 'data.h5'],
    'calibrate': ['calibrate', '--checkpoint', '{ckpt}', '--data', 'data.h5'],
    'eval': ['eval', '--checkpoint', '{ckpt}', '--episodes', '1'],
    'eval-surprise': ['eval-surprise', '--checkpoint', '{ckpt}', '--episodes', '1'],
    'bench plan': ['bench', 'plan', '--checkpoint', '{ckpt}'],
    'demo': ['demo', '--checkpoint', '{ckpt}', '--episodes', '1'],
    'train --resume': ['train', '--resume', '{ckpt}'],
}


@pytest.mark.parametrize('kind', sorted(EXPECTED))
@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_every_command_taking_a_checkpoint_reports_a_bad_one_in_one_line(
    bad_checkpoints, capsys, command, kind
):
    argv = [part.format(ckpt=bad_checkpoints[kind]) for part in COMMANDS[command]]
    assert lewm(argv) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    prefix = f'lewm {command.split(" --")[0]}: error: '
    errors = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1 and EXPECTED[kind] in errors[0], output
    assert str(bad_checkpoints[kind]) in errors[0] and 'Traceback' not in output


def test_eval_with_a_missing_checkpoint_exits_with_one_line_and_no_traceback(tmp_path):
    missing = tmp_path / 'no_such_checkpoint'
    result = subprocess.run([sys.executable, '-m', 'training.cli', 'eval', '--checkpoint', str(missing)],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f'lewm eval: error: checkpoint {missing} does not exist'
    assert 'Traceback' not in result.stdout + result.stderr


def test_ctrl_c_in_train_saves_a_resumable_last_checkpoint_and_says_how_to_resume(tmp_path):
    data = write_squares_file(tmp_path / 'squares.h5', episodes=8, length=30)
    out = tmp_path / 'run'
    settings = ['--set', 'train.threads=1', '--set', 'train.progress=false', '--set', 'train.log_every=2']
    command = [sys.executable, '-m', 'training.cli', 'train', '--config', 'micro', '--data', str(data),
               '--out', str(out), '--set', 'optim.max_steps=100000', *settings]  # far more than it gets to
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, 'PYTHONPATH': str(REPO)})
    metrics = out / 'metrics.jsonl'
    deadline = time.monotonic() + 120
    try:
        # wait (with a timeout) until training steps have been logged, then interrupt
        while not (metrics.is_file() and 'train/loss' in metrics.read_text()):
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        reap(process)
    assert process.returncode == 130, stderr
    assert 'Traceback' not in stdout + stderr, stderr
    hint = re.search(r'lewm train: interrupted after step (\d+), saved to (\S+); continue with '
                     r'`lewm train --resume (\S+)`', stderr)
    assert hint and Path(hint[2]) == out / 'last' == Path(hint[3]), stderr
    step = int(hint[1])
    assert step >= 2
    _, meta = load_checkpoint(out / 'last')
    assert meta['provenance']['steps'] == step
    assert json.loads((out / 'last' / 'train_state.json').read_text())['counters']['step'] == step
    assert not (out / 'final').exists()
    # the command the message gives continues the run (here only 2 steps further)
    assert lewm(['train', '--resume', hint[3], '--set', f'optim.max_steps={step + 2}', *settings]) == 0
    assert load_checkpoint(out / 'final')[1]['provenance']['steps'] == step + 2


@pytest.mark.parametrize('name', ['tworoom', 'reacher', 'pusht', 'cube'])
def test_each_shipped_model_was_built_by_its_recipe(name, tmp_path):
    """`lewm demo --retrain` and `lewm suite` run config/recipes/<name>-cpu.yaml: it must match what ships."""
    from training.cli import build_parser
    from training.suite.recipe import TaskPaths, load_recipe, training_stages

    recipe = load_recipe(name, 'cpu')
    parsed = {}
    for stage in training_stages(recipe, TaskPaths(tmp_path)):
        # argparse exits on an unknown flag
        parsed[stage.name] = build_parser(list(stage.argv)).parse_args(list(stage.argv))
    shipped = load_checkpoint(Path(__file__).resolve().parent.parent / 'models' / name)[1]
    # the shipped controller was trained by the recipe's command, on the world model's own data
    controller = shipped['controller']['trained']
    assert controller['steps'] == parsed['train-controller'].steps
    assert shipped['controller']['config']['history'] == parsed['train-controller'].history
    assert controller['dataset']['hash'] == shipped['provenance']['dataset']['hash']
    assert shipped['env_id'] == recipe['env_id'] and shipped['image_size'] == recipe['img_size']
    steps = next(p for p in parsed['train'].overrides if p.startswith('optim.max_steps='))
    assert shipped['provenance']['steps'] == int(steps.split('=')[1])
    assert shipped['provenance']['dataset']['drops']['episodes'] == recipe['data']['episodes']
    # tuned, calibrated at the recipe's quantile
    assert shipped['planner']['source'] == 'lewm tune'
    assert shipped['surprise']['quantile'] == recipe['surprise_quantile']
