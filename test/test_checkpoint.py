"""Checkpoints on disk: bit-exact round trip, safetensors compatibility, clear errors when damaged."""

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lewm_ros import safetensors_io
from lewm_ros.checkpoint import (
    CheckpointError,
    build_metadata,
    expected_shapes,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    update_metadata,
)
from lewm_ros.model import LeWM, ModelConfig


def make_model() -> LeWM:
    torch.manual_seed(0)
    model = LeWM(
        ModelConfig.from_preset('micro', action_dim=2, frameskip=5),
        action_mean=[0.1, -0.2],
        action_std=[0.7, 1.3],
    )
    # non-trivial BatchNorm statistics and AdaLN layers, so the round trip covers buffers too
    pixels = torch.randint(0, 256, (8, 4, 32, 32, 3), dtype=torch.uint8)
    model.train()
    with torch.no_grad():
        model(pixels, torch.randn(8, 3, 10))
        for block in model.predictor.blocks:
            block.ada.weight.normal_(0, 0.1)
    return model.eval()


def saved(tmp_path) -> tuple[LeWM, object]:
    model = make_model()
    meta = build_metadata(
        model,
        action_low=[-1, -1],
        action_high=[1, 1],
        env_id='test/Squares-v0',
        provenance={'dataset': {'path': 'x.h5', 'sha256': 'abc'}, 'steps': 5},
        train_config={'optim': {'lr': 1e-3}},
    )
    path = save_checkpoint(tmp_path / 'ckpt', model, meta)
    return model, path


def test_round_trip_is_bit_exact_and_keeps_metadata(tmp_path):
    model, path = saved(tmp_path)
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=gen)
    actions = torch.randn(3, 3, 10, generator=gen)
    with torch.no_grad():
        for a, b in zip(model(pixels, actions), loaded(pixels, actions), strict=True):
            assert torch.equal(a, b)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert (
        meta['image_size'] == 32
        and meta['history'] == 3
        and meta['frameskip'] == 5
        and meta['action_dim'] == 2
    )
    assert meta['action_low'] == [-1.0, -1.0] and meta['env_id'] == 'test/Squares-v0'
    assert meta['action_std'] == pytest.approx([0.7, 1.3])
    assert meta['surprise'] is None and meta['provenance']['steps'] == 5
    assert 'torch_version' in meta['provenance']
    # a file path inside the directory works too
    assert load_checkpoint(path / 'meta.json')[1]['env_id'] == 'test/Squares-v0'


def test_update_metadata_writes_the_surprise_slot(tmp_path):
    _, path = saved(tmp_path)
    calibration = {'threshold': 0.5, 'quantile': 0.99, 'mean': 0.1, 'std': 0.05, 'n': 1000}
    update_metadata(path, 'surprise', calibration)
    assert read_metadata(path)['surprise'] == calibration
    assert load_checkpoint(path)[1]['surprise'] == calibration  # weights untouched, hash still valid


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    model, path = saved(tmp_path)
    (path / 'train_state.json').write_text('{}')
    with torch.no_grad():
        model.action_std.fill_(3.0)
    save_checkpoint(path, model)
    assert load_checkpoint(path)[1]['action_std'] == [3.0, 3.0]
    assert (path / 'train_state.json').is_file()  # other files in the directory survive
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']


def test_our_files_load_with_the_safetensors_package_and_theirs_with_ours(tmp_path):
    gen = torch.Generator().manual_seed(2)
    tensors = {
        'f32': torch.randn(3, 5, generator=gen),
        'bf16': torch.randn(4, 2, generator=gen).bfloat16(),
        'f16': torch.randn(7, generator=gen).half(),
        'i64': torch.arange(6).reshape(2, 3),
        'u8': torch.randint(0, 255, (5,), dtype=torch.uint8, generator=gen),
        'flag': torch.tensor([True, False, True]),
        'scalar': torch.tensor(2.5),
        'empty': torch.zeros(0, 4),
    }
    safetensors_io.save_file(tensors, tmp_path / 'ours.safetensors', {'note': 'ours'})
    theirs_loaded = safetensors.torch.load_file(tmp_path / 'ours.safetensors')
    safetensors.torch.save_file(tensors, tmp_path / 'theirs.safetensors', {'note': 'theirs'})
    ours_loaded = safetensors_io.load_file(tmp_path / 'theirs.safetensors')
    for loaded in (theirs_loaded, ours_loaded):
        assert set(loaded) == set(tensors)
        for name, tensor in tensors.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert safetensors_io.read_metadata(tmp_path / 'theirs.safetensors') == {'note': 'theirs'}
    # a whole checkpoint's weights read with the reference implementation
    model, path = saved(tmp_path)
    reference = safetensors.torch.load_file(path / 'model.safetensors')
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'nowhere')
    _, path = saved(tmp_path)
    (path / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match='model.safetensors is missing'):
        load_checkpoint(path)
    (path / 'meta.json').unlink()
    with pytest.raises(CheckpointError, match='meta.json is missing'):
        load_checkpoint(path)


def test_truncated_and_corrupt_files_are_reported(tmp_path):
    _, path = saved(tmp_path)
    weights = path / 'model.safetensors'
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated'):
        load_checkpoint(path, verify_hash=False)
    with pytest.raises(CheckpointError, match='sha256'):
        load_checkpoint(path)
    weights.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match='too short'):
        load_checkpoint(path, verify_hash=False)
    weights.write_bytes(data[:8] + b'#' * 16 + data[24:])
    with pytest.raises(CheckpointError, match='not valid JSON'):
        load_checkpoint(path, verify_hash=False)
    meta = path / 'meta.json'
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(CheckpointError, match='not valid JSON'):
        load_checkpoint(path)


def test_a_pickle_is_never_executed(tmp_path):
    _, path = saved(tmp_path)

    class Boom:
        def __reduce__(self):
            return (exec, (f"open(__import__('os').path.join({str(tmp_path)!r}, 'pwned'), 'w')",))

    (path / 'model.safetensors').write_bytes(pickle.dumps({'w': Boom()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify_hash=False)
    assert not (tmp_path / 'pwned').exists()


def test_mismatched_checkpoints_are_reported(tmp_path):
    _, path = saved(tmp_path)
    meta_path = path / 'meta.json'
    original = json.loads(meta_path.read_text())

    def write(meta):
        meta_path.write_text(json.dumps(meta))

    meta = json.loads(json.dumps(original))
    meta['model_config']['projector_hidden'] = 32
    write(meta)
    with pytest.raises(
        CheckpointError, match=r"tensor 'projector.fc1.weight' has shape \(64, 48\).*\(32, 48\)"
    ):
        load_checkpoint(path)
    meta = json.loads(json.dumps(original))
    meta['model_config']['predictor_depth'] = 3
    write(meta)
    with pytest.raises(CheckpointError, match=r'missing tensors \[.predictor.blocks.2'):
        load_checkpoint(path)
    meta = json.loads(json.dumps(original))
    meta['action_dim'] = 3
    write(meta)
    with pytest.raises(CheckpointError, match='action_dim is 3 but model_config says 2'):
        load_checkpoint(path)
    meta = json.loads(json.dumps(original))
    meta['format_version'] = 99
    write(meta)
    with pytest.raises(CheckpointError, match='format_version 99'):
        load_checkpoint(path)
    meta = json.loads(json.dumps(original))
    meta['model_config']['colour'] = 'red'
    write(meta)
    with pytest.raises(CheckpointError, match='unknown model config key'):
        load_checkpoint(path)


def rewrite_meta(path, **changes) -> None:
    """Edit meta.json like a person (or a damaged disk) would; ``model_config__KEY`` edits the config."""
    meta_path = path / 'meta.json'
    meta = json.loads(meta_path.read_text())
    for key, value in changes.items():
        if key.startswith('model_config__'):
            meta['model_config'][key.removeprefix('model_config__')] = value
        else:
            meta[key] = value
    meta_path.write_text(json.dumps(meta))


# Run in a fresh process so that its peak memory is the checkpoint loader's alone. The address space
# is capped, so that a loader which does allocate fails here instead of exhausting the machine.
ABSURD_CONFIG_SCRIPT = r'''
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from lewm_ros.checkpoint import CheckpointError, load_checkpoint
from training.cli import main
path = sys.argv[1]
results = {}
for case in json.loads(sys.argv[2]):
    meta = json.load(open(path + '/meta.json'))
    meta['model_config'].update(case)
    json.dump(meta, open(path + '/meta.json', 'w'))
    start = time.perf_counter()
    try:
        load_checkpoint(path)
        message = 'loaded'
    except CheckpointError as err:
        message = str(err)
    results[json.dumps(case)] = [message, time.perf_counter() - start]
sys.stderr.flush()
rc = main(['info', path])  # the command that was OOM-killed
print(json.dumps({'results': results, 'info_rc': rc,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def test_an_absurd_model_config_is_refused_before_anything_is_allocated(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    _, path = saved(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    # 40000 wide: ~19 GB of weights; the second is within the size limits but, at width 2048,
    # 48 blocks and MLP 8192, still ~10 GB and nothing like the 70 k-parameter weights on disk
    cases = [{'encoder_width': 40000}, {'encoder_width': 2048, 'encoder_mlp_dim': 8192, 'encoder_depth': 48}]
    result = subprocess.run(
        [sys.executable, '-c', ABSURD_CONFIG_SCRIPT, str(path), json.dumps(cases)], cwd=repo,
        capture_output=True, text=True, timeout=120, env={**os.environ, 'PYTHONPATH': str(repo)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (width, width_s), (big, big_s) = report['results'].values()
    assert 'encoder_width is 40000, above the limit' in width, width
    assert "does not fit the model described in meta.json: missing tensors ['encoder.blocks.10." in big, big
    assert width_s < 5 and big_s < 5, report
    assert report['info_rc'] == 1 and 'lewm info: error: ' in result.stderr
    assert 'Traceback' not in result.stderr
    assert report['peak_rss_mb'] < 1500, report


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'action_low': [float('nan'), -1.0]}, 'action_low must hold finite numbers'),
        ({'action_high': [1.0, float('inf')]}, 'action_high must hold finite numbers'),
        ({'action_low': [-1.0]}, r'action_low must be a list of 2 numbers'),
        ({'action_high': [1.0, 1.0, 1.0]}, r'action_high must be a list of 2 numbers'),
        ({'action_low': 'low'}, r'action_low must be a list of 2 numbers'),
        ({'action_high': [1.0, True]}, 'action_high must hold finite numbers'),
        ({'action_low': [-1.0, 1.0]}, r'action_low \[-1.0, 1.0\] is not below .* in dimension\(s\) \[1\]'),
        ({'action_low': [2.0, 3.0]}, r'dimension\(s\) \[0, 1\]'),
    ],
)
def test_unusable_action_bounds_are_refused(tmp_path, changes, message):
    _, path = saved(tmp_path)
    rewrite_meta(path, **changes)  # json writes NaN and Infinity, and reads them back
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_checkpoint_without_bounds_or_with_one_side_loads(tmp_path):
    _, path = saved(tmp_path)
    rewrite_meta(path, action_low=None, action_high=None)
    meta = load_checkpoint(path)[1]
    assert meta['action_low'] is None and meta['action_high'] is None
    rewrite_meta(path, action_high=[0.5, 0.5])
    assert load_checkpoint(path)[1]['action_high'] == [0.5, 0.5]


def test_non_finite_weights_and_a_non_positive_action_std_are_refused(tmp_path):
    model = make_model()
    with torch.no_grad():
        model.projector.fc1.weight[0, 0] = float('nan')
    path = save_checkpoint(tmp_path / 'nan', model)
    with pytest.raises(CheckpointError, match="tensor 'projector.fc1.weight' holds NaN"):
        load_checkpoint(path)
    model = make_model()
    with torch.no_grad():
        model.action_std[1] = 0.0
    path = save_checkpoint(tmp_path / 'zero_std', model)
    with pytest.raises(CheckpointError, match="'action_std' must be positive"):
        load_checkpoint(path)


def test_model_sizes_above_the_limits_are_refused_by_name():
    paper = ModelConfig.from_preset('paper')
    for key, limit in ModelConfig.MAX_SIZES.items():
        assert getattr(paper, key) * 4 <= limit, key  # headroom over the paper's model
    with pytest.raises(ValueError, match='predictor_depth is 1000, above the limit'):
        ModelConfig.from_preset('paper', predictor_depth=1000)
    with pytest.raises(ValueError, match='16384 patches, above the limit'):
        ModelConfig.from_preset('paper', image_size=896, patch_size=7)
    with pytest.raises(ValueError, match='predictor_dropout'):
        ModelConfig.from_preset('paper', predictor_dropout=float('nan'))


@pytest.mark.parametrize('preset', ['micro', 'tiny', 'paper'])
def test_the_shapes_checked_before_loading_are_those_of_the_real_model(preset):
    cfg = ModelConfig.from_preset(preset, action_dim=3)
    real = {name: tuple(t.shape) for name, t in LeWM(cfg).state_dict().items()}
    assert expected_shapes(cfg) == real


REPO = Path(__file__).resolve().parent.parent
SHIPPED = {'tworoom': 'lewm/TwoRoom-v0', 'reacher': 'lewm/Reacher-v0'}


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_the_shipped_models_load_and_match_their_recorded_hash(name):
    path = REPO / 'models' / name
    meta = json.loads((path / 'meta.json').read_text())
    weights = (path / 'model.safetensors').read_bytes()
    assert not weights.startswith(b'version https://git-lfs'), 'an LFS pointer, not the weights'
    assert hashlib.sha256(weights).hexdigest() == meta['weights']['sha256']
    model, loaded = load_checkpoint(path)  # verifies the hash itself, and every shape
    assert loaded['env_id'] == SHIPPED[name]
    # what `lewm demo` and the planner node read from it: settings, threshold and goal metric
    assert loaded['planner']['settings'] and loaded['surprise']['threshold'] > 0
    assert loaded['goal_metric']['kind'] == 'step_whitening'
    size = model.config.image_size
    with torch.no_grad():
        z = model.encode(torch.zeros(1, 1, size, size, 3, dtype=torch.uint8))
    assert z.shape == (1, 1, model.config.embed_dim) and torch.isfinite(z).all()


def other_model() -> LeWM:
    model = make_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    return model


def same_weights(path, model) -> bool:
    loaded, _ = load_checkpoint(path)
    return all(torch.equal(t, loaded.state_dict()[k]) for k, t in model.state_dict().items())


class CrashError(Exception):
    pass


class CrashAt:
    """Count the steps of a save (file writes, renames, the extra callback); fail the n-th one."""

    def __init__(self, n: int, real: dict) -> None:
        self.n, self.real, self.steps = n, real, []

    def step(self, kind: str, *args, **kwargs):
        self.steps.append(kind)
        if len(self.steps) == self.n:
            raise CrashError(kind)
        return self.real[kind](*args, **kwargs)


def test_a_save_stopped_at_any_step_leaves_the_old_or_no_checkpoint_under_the_name(tmp_path, monkeypatch):
    """Fail each file operation of save_checkpoint in turn: the final name never holds a mix."""
    import os

    from lewm_ros import checkpoint

    old, new = make_model(), other_model()
    real = {'replace': os.replace, 'save_file': safetensors_io.save_file, 'extra': lambda staging: None}
    for fresh in (True, False):
        for n in range(1, 10):
            path = tmp_path / f'{"fresh" if fresh else "over"}{n}' / 'ckpt'
            if not fresh:
                save_checkpoint(path, old)
            crash = CrashAt(n, real)
            monkeypatch.setattr(os, 'replace', lambda *a, c=crash, **k: c.step('replace', *a, **k))
            monkeypatch.setattr(checkpoint.safetensors_io, 'save_file',
                                lambda *a, c=crash, **k: c.step('save_file', *a, **k))  # fmt: skip
            try:
                save_checkpoint(path, new, extra=lambda staging, c=crash: c.step('extra', staging))
                finished = True
            except CrashError:
                finished = False
            finally:
                monkeypatch.undo()
            if finished:
                assert same_weights(path, new)
                break
            if path.exists():  # never the new weights with the old description, nor half a directory
                assert not fresh and same_weights(path, old), (n, crash.steps)
            visible = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith('.'))
            assert visible in ([], ['ckpt']), visible
        # each step was failed once before this run: weights, meta.json, the extra files, the renames
        assert finished and n == len(crash.steps) + 1 and crash.steps.count('replace') >= 2 + (not fresh)


KILLED_SAVE = r'''
import os, signal, sys, torch
sys.path.insert(0, sys.argv[2])
from test_checkpoint import other_model
from lewm_ros.checkpoint import save_checkpoint

def die(staging):  # weights and meta.json are written in the staging directory by now
    os.kill(os.getpid(), signal.SIGKILL)

save_checkpoint(sys.argv[1], other_model(), extra=die)
'''


def test_a_killed_save_keeps_the_previous_checkpoint_whole(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / 'ckpt'
    old = make_model()
    save_checkpoint(path, old)
    (path / 'train_state.json').write_text('{"step": 1}')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    run = subprocess.run([sys.executable, '-c', KILLED_SAVE, str(path), str(REPO / 'test')], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr
    assert same_weights(path, old) and (path / 'train_state.json').read_text() == '{"step": 1}'
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith('.')] == ['ckpt']
    # the staging directory the kill left behind does not stand in the way of the next save
    save_checkpoint(path, other_model())
    assert same_weights(path, other_model()) and (path / 'train_state.json').is_file()
