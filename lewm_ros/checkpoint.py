"""LeWM checkpoints: a directory with ``model.safetensors`` (weights) and ``meta.json`` (everything else).

Layout::

    NAME/
      model.safetensors   float32 weights + buffers (safetensors format, read without pickle)
      meta.json           format/version, model config, data conventions (image size, history,
                          frameskip, action bounds and normalisation), provenance, training config,
                          and the ``surprise`` calibration slot (null until ``lewm calibrate``)
      controller.safetensors  optional: a goal-conditioned controller on this model's embeddings
                          (``lewm train-controller``), described by ``meta['controller']``

Loading parses JSON and raw tensor bytes only; it never unpickles. Every failure raises
``CheckpointError`` with a message that names the file and what to do about it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lewm_ros import safetensors_io
from lewm_ros.model import LeWM, ModelConfig

FORMAT = 'lewm-checkpoint'
FORMAT_VERSION = 1
WEIGHTS_FILE = 'model.safetensors'
META_FILE = 'meta.json'
CONTROLLER_FILE = 'controller.safetensors'


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not fit the model; the message says what to fix."""


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory for ``path`` (the directory itself or a file inside it)."""
    path = Path(path)
    if path.name in (WEIGHTS_FILE, META_FILE):
        path = path.parent
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(4 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _floats(values: Sequence[float] | torch.Tensor | None) -> list[float] | None:
    if values is None:
        return None
    return [float(v) for v in torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()]


def build_metadata(
    model: LeWM,
    *,
    action_low: Sequence[float] | torch.Tensor | None = None,
    action_high: Sequence[float] | torch.Tensor | None = None,
    env_id: str | None = None,
    provenance: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    surprise: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``meta.json`` content for ``model``; ``weights`` is filled in by :func:`save_checkpoint`."""
    cfg = model.config
    for name, bound in (('action_low', action_low), ('action_high', action_high)):
        if bound is not None and len(_floats(bound)) != cfg.action_dim:
            raise ValueError(
                f'{name} has {len(_floats(bound))} values, the model has action_dim {cfg.action_dim}'
            )
    provenance = dict(provenance or {})
    provenance.setdefault('torch_version', torch.__version__)
    provenance.setdefault(
        'created', datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    )
    return {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'model_config': cfg.to_dict(),
        'image_size': cfg.image_size,
        'history': cfg.history,
        'frameskip': cfg.frameskip,
        'action_dim': cfg.action_dim,
        'embed_dim': cfg.embed_dim,
        'pixel_format': 'uint8 RGB (H, W, 3), ImageNet normalisation inside the model',
        'env_id': env_id,
        'action_low': _floats(action_low),
        'action_high': _floats(action_high),
        'action_mean': _floats(model.action_mean),
        'action_std': _floats(model.action_std),
        'num_parameters': model.num_parameters(),
        'provenance': provenance,
        'train_config': train_config,
        'surprise': surprise,
        'goal_metric': None,  # set by `lewm calibrate` (lewm_ros/planning/goal_metric.py)
    }


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(value, f, indent=2, sort_keys=False)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike,
    model: LeWM,
    meta: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` (and ``meta``, default :func:`build_metadata`) to the directory ``path``.

    The directory is assembled next to its final place and swapped in, so a crash never leaves
    a half-written checkpoint under the final name. Other files already in ``path`` are kept
    unless rewritten; ``extra(staging_dir)`` may add more files (e.g. a trainer's resume state)
    that then appear together with the weights.
    """
    path = Path(path)
    meta = dict(meta if meta is not None else build_metadata(model))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
    try:
        if path.is_dir():
            for item in path.iterdir():
                if item.name not in (WEIGHTS_FILE, META_FILE) and item.is_file():
                    shutil.copy2(item, staging / item.name)
        state = {
            k: v.detach().float() if v.is_floating_point() else v.detach()
            for k, v in model.state_dict().items()
        }
        safetensors_io.save_file(
            state, staging / WEIGHTS_FILE, {'format': FORMAT, 'format_version': str(FORMAT_VERSION)}
        )
        meta['weights'] = {
            'file': WEIGHTS_FILE,
            'sha256': file_sha256(staging / WEIGHTS_FILE),
            'dtype': 'float32',
        }
        _write_json_atomic(staging / META_FILE, meta)
        if extra is not None:
            extra(staging)
        if path.exists():
            old = path.with_name(f'.{path.name}.old')
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check ``meta.json`` of the checkpoint at ``path`` (no weights are read)."""
    root = checkpoint_dir(path)
    if not root.exists():
        raise CheckpointError(f'checkpoint {root} does not exist')
    if not root.is_dir():
        raise CheckpointError(
            f'{root} is a file; a LeWM checkpoint is a directory holding {WEIGHTS_FILE} and {META_FILE}'
        )
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f'{meta_path} is missing; {root} is not a complete LeWM checkpoint')
    try:
        meta = json.loads(meta_path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f'{meta_path} is not valid JSON ({err}); the file is truncated or corrupt'
        ) from err
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise CheckpointError(f'{meta_path} is not a LeWM checkpoint description (format is not {FORMAT!r})')
    version = meta.get('format_version')
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f'{meta_path} has format_version {version!r}; this lewm_ros reads version {FORMAT_VERSION}. '
            'Use the lewm_ros release that wrote it, or re-export the checkpoint.'
        )
    if not isinstance(meta.get('model_config'), dict):
        raise CheckpointError(f'{meta_path} has no model_config section')
    return meta


def update_metadata(path: str | os.PathLike, key: str, value: Any, **more: Any) -> dict[str, Any]:
    """Set ``meta[key] = value`` (and every ``name=value`` of ``more``) in a checkpoint's ``meta.json``.

    One atomic write, whatever the number of keys; returns the new meta. For results computed
    after training, e.g. the surprise calibration ``{threshold, quantile, mean, std, n}`` and the
    goal metric. The weights are not touched.
    """
    meta = read_metadata(path)
    meta.update({key: value, **more})
    _write_json_atomic(checkpoint_dir(path) / META_FILE, meta)
    return meta


def _model_config(meta: dict[str, Any], meta_path: Path) -> ModelConfig:
    """The model config of ``meta``, sizes checked (``ModelConfig.MAX_SIZES``) before anything is built."""
    try:
        cfg = ModelConfig.from_dict(meta['model_config'])
    except (TypeError, ValueError) as err:
        detail = str(err).removeprefix('invalid model config: ')
        raise CheckpointError(f'{meta_path}: model_config is invalid: {detail}') from err
    for key in ('image_size', 'history', 'frameskip', 'action_dim', 'embed_dim'):
        if key in meta and meta[key] != getattr(cfg, key):
            raise CheckpointError(
                f'{meta_path}: {key} is {meta[key]!r} but model_config says {getattr(cfg, key)!r}; '
                'the file was edited inconsistently'
            )
    return cfg


def _check_action_bounds(meta: dict[str, Any], action_dim: int, meta_path: Path) -> None:
    """``action_low``/``action_high``: absent (null), or ``action_dim`` finite numbers with low < high.

    The bounds become the robot's command limits: a NaN there would reach the actuators.
    """
    bounds = {}
    for key in ('action_low', 'action_high'):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != action_dim:
            raise CheckpointError(
                f'{meta_path}: {key} must be a list of {action_dim} numbers (the action_dim), got {value!r}'
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in value):
            raise CheckpointError(f'{meta_path}: {key} must hold finite numbers, got {value!r}')
        bounds[key] = value
    if len(bounds) == 2:
        pairs = zip(bounds['action_low'], bounds['action_high'], strict=True)
        inverted = [i for i, (lo, hi) in enumerate(pairs) if not lo < hi]
        if inverted:
            raise CheckpointError(
                f'{meta_path}: action_low {bounds["action_low"]} is not below action_high '
                f'{bounds["action_high"]} in dimension(s) {inverted}'
            )


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint of ``cfg`` holds, without allocating the model."""
    with torch.device('meta'):  # shapes only: no memory, whatever the config asks for
        model = LeWM(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_weight_shapes(weights_path: Path, cfg: ModelConfig) -> None:
    """Compare the tensors named in the safetensors header with those the model config needs."""
    try:
        stored = safetensors_io.read_shapes(weights_path)
    except safetensors_io.SafetensorsError as err:
        raise CheckpointError(str(err)) from err
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f'{weights_path} does not fit the model described in {META_FILE}: '
            f'missing tensors {missing[:8]}{" ..." if len(missing) > 8 else ""}, '
            f'unexpected tensors {unexpected[:8]}{" ..." if len(unexpected) > 8 else ""}'
        )
    for name, shape in expected.items():
        if stored[name] != shape:
            raise CheckpointError(
                f'{weights_path}: tensor {name!r} has shape {stored[name]} but the model config in '
                f'{META_FILE} needs {shape}; weights and meta.json come from different models'
            )


def inspect_checkpoint(
    path: str | os.PathLike, verify_hash: bool = True, check_weights: bool = True
) -> tuple[dict[str, Any], ModelConfig]:
    """Every check of :func:`load_checkpoint` that needs no tensor data; returns (meta, model config).

    ``meta.json`` (format, model config sizes, action bounds), then, with ``check_weights``, the
    tensor names and shapes in the weights file's header against the model (built on the meta
    device, so an absurd config costs no memory) and the recorded SHA-256. Raises ``CheckpointError``.
    """
    root = checkpoint_dir(path)
    meta = read_metadata(root)
    cfg = _model_config(meta, root / META_FILE)
    _check_action_bounds(meta, cfg.action_dim, root / META_FILE)
    if not check_weights:
        return meta, cfg
    weights_path = root / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f'{weights_path} is missing; {root} is not a complete LeWM checkpoint')
    _check_weight_shapes(weights_path, cfg)
    expected_hash = (meta.get('weights') or {}).get('sha256')
    if verify_hash and expected_hash and file_sha256(weights_path) != expected_hash:
        raise CheckpointError(
            f'{weights_path} does not match the sha256 recorded in {META_FILE}; the weights were corrupted '
            'or replaced. Restore the original file or save the checkpoint again.'
        )
    return meta, cfg


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = 'cpu', verify_hash: bool = True
) -> tuple[LeWM, dict[str, Any]]:
    """Load a checkpoint directory into a ``LeWM`` in eval mode on ``device``; returns (model, meta).

    Nothing is allocated before :func:`inspect_checkpoint` has passed; the loaded tensors must be
    finite (a NaN action statistic would turn every planned action into NaN).
    """
    root = checkpoint_dir(path)
    meta, cfg = inspect_checkpoint(root, verify_hash=verify_hash)
    weights_path = root / WEIGHTS_FILE
    try:
        state = safetensors_io.load_file(weights_path)
    except safetensors_io.SafetensorsError as err:
        raise CheckpointError(str(err)) from err
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f'{weights_path}: tensor {name!r} holds NaN or infinite values')
    if not bool((state['action_std'] > 0).all()):
        raise CheckpointError(
            f"{weights_path}: tensor 'action_std' must be positive, got {state['action_std'].tolist()}"
        )
    model = LeWM(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def save_controller(path: str | os.PathLike, controller: Any,
                    info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store ``controller`` (a ``GoalController``) in the checkpoint at ``path``; returns its meta block.

    The block records the world model's weight hash: a controller reads that model's embeddings
    and means nothing for another one, so :func:`load_controller` refuses it after a retrain.
    The weights are written under a temporary name and renamed; the meta block follows in one
    atomic write (a crash in between leaves a file whose hash the old block does not match).
    """
    root = checkpoint_dir(path)
    meta = read_metadata(root)
    world = (meta.get('weights') or {}).get('sha256') or file_sha256(root / WEIGHTS_FILE)
    tmp = root / (CONTROLLER_FILE + '.tmp')
    state = {k: v.detach().float().cpu().contiguous() for k, v in controller.state_dict().items()}
    safetensors_io.save_file(state, tmp, {'format': 'lewm-controller', 'format_version': '1'})
    digest = file_sha256(tmp)
    os.replace(tmp, root / CONTROLLER_FILE)
    block = {'file': CONTROLLER_FILE, 'sha256': digest, 'world_model_sha256': world,
             'config': controller.config.to_dict(), **(info or {})}
    update_metadata(root, 'controller', block)
    return block


def load_controller(path: str | os.PathLike, meta: dict[str, Any] | None = None,
                    device: str | torch.device = 'cpu') -> Any:
    """The ``GoalController`` stored in the checkpoint at ``path`` (eval mode, on ``device``).

    Raises ``CheckpointError`` when there is none (saying how to train one), when it was trained
    for other world-model weights, or when its file is damaged.
    """
    from lewm_ros.planning.controller import ControllerConfig, GoalController

    root = checkpoint_dir(path)
    meta = read_metadata(root) if meta is None else meta
    block = meta.get('controller')
    weights_path = root / CONTROLLER_FILE
    if not isinstance(block, dict) or not weights_path.is_file():
        raise CheckpointError(
            f'{root} has no controller ({CONTROLLER_FILE} and meta.json \'controller\'); train one with '
            f'`lewm train-controller --checkpoint {root} --data EPISODES.h5`, or plan with a sampling solver')
    world = (meta.get('weights') or {}).get('sha256') or file_sha256(root / WEIGHTS_FILE)
    if block.get('world_model_sha256') != world:
        raise CheckpointError(
            f'{weights_path} was trained for another world model (weights sha256 '
            f'{str(block.get("world_model_sha256"))[:12]}..., this checkpoint has {str(world)[:12]}...): '
            'its embeddings mean something else here. Retrain it with `lewm train-controller`.')
    if file_sha256(weights_path) != block.get('sha256'):
        raise CheckpointError(f"{weights_path} does not match the sha256 in meta.json 'controller'; the "
                              'file was damaged or replaced. Retrain it with `lewm train-controller`.')
    try:
        config = ControllerConfig.from_dict(dict(block.get('config') or {}))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{root / META_FILE}: 'controller.config' is invalid: {err}") from err
    model_cfg = meta.get('model_config') or {}
    for key in ('embed_dim', 'action_dim', 'frameskip'):
        if getattr(config, key) != meta.get(key, model_cfg.get(key)):
            raise CheckpointError(f"{root / META_FILE}: 'controller.config.{key}' is {getattr(config, key)}, "
                                  f'the world model has {meta.get(key, model_cfg.get(key))}')
    with torch.device('meta'):  # shapes first, from the header: an edited config costs no memory
        expected = {k: tuple(v.shape) for k, v in GoalController(config).state_dict().items()}
    try:
        stored = safetensors_io.read_shapes(weights_path)
    except safetensors_io.SafetensorsError as err:
        raise CheckpointError(str(err)) from err
    if stored != expected:
        raise CheckpointError(f"{weights_path} does not fit meta.json 'controller.config' (tensor names or "
                              'shapes differ); the two come from different controllers')
    controller = GoalController(config)
    try:
        state = safetensors_io.load_file(weights_path)
        controller.load_state_dict(state)
    except (safetensors_io.SafetensorsError, RuntimeError) as err:
        raise CheckpointError(f'{weights_path} does not fit its controller config: {err}') from err
    if not all(bool(torch.isfinite(t).all()) for t in state.values()):
        raise CheckpointError(f'{weights_path} holds NaN or infinite values')
    return controller.to(device).eval()
