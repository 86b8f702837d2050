"""What ``lewm train --resume`` needs beyond the weights: optimizer moments, counters, RNG state.

Stored next to the weights in the checkpoint directory as ``train_state.safetensors`` (tensors)
and ``train_state.json`` (everything else), so resuming never unpickles either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lewm_ros import safetensors_io
from lewm_ros.checkpoint import CheckpointError

STATE_TENSORS = 'train_state.safetensors'
STATE_JSON = 'train_state.json'


def save_train_state(directory: Path, optimizer: torch.optim.Optimizer, counters: dict[str, Any]) -> None:
    """Write the optimizer state, torch RNG states and ``counters`` (step, epoch, ...) into ``directory``."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {'rng.cpu': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng.cuda.{i}'] = s
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state['state'].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f'optimizer.{index}.{key}'] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    safetensors_io.save_file(tensors, directory / STATE_TENSORS)
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state['param_groups']
    ]
    doc = {'counters': counters, 'optimizer': {'param_groups': groups, 'scalars': scalars}}
    (directory / STATE_JSON).write_text(json.dumps(doc, indent=2) + '\n', encoding='utf-8')


def load_train_state(directory: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG states from ``directory``; returns the saved counters."""
    json_path, tensor_path = directory / STATE_JSON, directory / STATE_TENSORS
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise CheckpointError(
                f'{path} is missing: {directory} holds weights but no resume state. Resume from the '
                "run's `last` checkpoint, or start a new run initialised from scratch."
            )
    try:
        doc = json.loads(json_path.read_text(encoding='utf-8'))
        tensors = safetensors_io.load_file(tensor_path)
    except (json.JSONDecodeError, safetensors_io.SafetensorsError) as err:
        raise CheckpointError(f'resume state in {directory} is damaged: {err}') from err
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith('optimizer.'):
            _, index, key = name.split('.', 2)
            per_param.setdefault(int(index), {})[key] = value
    for index, values in doc['optimizer']['scalars'].items():
        per_param.setdefault(int(index), {}).update(values)
    groups = doc['optimizer']['param_groups']
    for g in groups:
        if isinstance(g.get('betas'), list):
            g['betas'] = tuple(g['betas'])
    expected = sum(len(g['params']) for g in optimizer.param_groups)
    saved = sum(len(g['params']) for g in groups)
    if expected != saved:
        raise CheckpointError(
            f'resume state in {directory} is for an optimizer over {saved} tensors, this model has {expected}'
        )
    optimizer.load_state_dict({'state': per_param, 'param_groups': groups})
    torch.set_rng_state(tensors['rng.cpu'])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith('rng.cuda.')]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return doc['counters']
