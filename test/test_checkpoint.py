"""Checkpoints on disk: bit-exact round trip, safetensors compatibility, clear errors when damaged."""

import json
import pickle

import pytest
import safetensors.torch
import torch

from lewm_ros import safetensors_io
from lewm_ros.checkpoint import (
    CheckpointError,
    build_metadata,
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
