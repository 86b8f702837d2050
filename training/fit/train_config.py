"""Training configuration: preset YAML + ``--set section.key=value`` overrides, checked against defaults.

Only pyyaml is needed here, so ``lewm bench`` can read presets without the training extras.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lewm_ros.model.config import ModelConfig, load_preset, preset_path

DEFAULTS: dict[str, dict[str, Any]] = {
    'model': {},  # ModelConfig fields; missing ones take the paper's values
    'data': {
        'path': None,
        'history': 3,
        'frameskip': None,
        'val_fraction': 0.05,
        'batch_size': 64,
        'num_workers': 0,
        'cache_in_memory': 'auto',
        'max_cache_gb': 8.0,
    },
    'optim': {
        'lr': 5e-5,
        'weight_decay': 1e-3,
        'betas': [0.9, 0.999],
        'warmup_steps': 1000,
        'epochs': 10,
        'max_steps': None,
        'grad_clip': 1.0,
        'min_lr_ratio': 0.0,
    },
    'loss': {'sigreg_lambda': 0.09, 'num_projections': 1024, 'knots': 17, 't_max': 3.0},
    'train': {
        'precision': 'auto',
        'log_every': 50,
        'ckpt_every': 1000,
        'keep_checkpoints': False,
        'val_every': None,
        'val_batches': 50,
        'bn_batches': 20,
        'out_dir': None,
        'seed': 0,
        'device': 'auto',
        'compile': False,
        'threads': None,
        'progress': True,
    },
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (['a', 'b'], value parsed as YAML, so ``1e-3``, ``null``, ``[1, 2]`` work)."""
    key, sep, raw = text.partition('=')
    if not sep or not key.strip():
        raise ValueError(f'--set expects section.key=value, got {text!r}')
    return key.strip().split('.'), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with each ``section.key=value`` override applied."""
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f'--set {text!r}: {k!r} is not a section')
        node[keys[-1]] = value
    return config


def complete(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults in and reject unknown sections or keys (a typo must not be silently ignored)."""
    unknown_sections = sorted(set(config) - set(DEFAULTS) - {'name'})
    if unknown_sections:
        raise ValueError(f'unknown config section(s) {unknown_sections}; known: {sorted(DEFAULTS)}')
    out: dict[str, Any] = {'name': config.get('name')}
    for section, defaults in DEFAULTS.items():
        given = config.get(section) or {}
        if not isinstance(given, dict):
            raise ValueError(f'config section {section!r} must be a mapping, got {given!r}')
        if section == 'model':
            ModelConfig.from_dict(given)  # raises on unknown keys
            out[section] = dict(given)
            continue
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f'unknown key(s) {unknown} in section {section!r}; known: {sorted(defaults)}')
        out[section] = {**defaults, **given}
    if out['train']['precision'] not in ('auto', 'bf16', 'fp32'):
        raise ValueError(f'train.precision must be auto, bf16 or fp32, got {out["train"]["precision"]!r}')
    if int(out['data']['batch_size']) < 2:
        raise ValueError('data.batch_size must be >= 2 (BatchNorm and SIGReg need a batch)')
    return out


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The complete training config of a preset (name or YAML path) with overrides applied."""
    raw = load_preset(name_or_path)
    raw.setdefault('name', Path(preset_path(name_or_path)).stem)
    return complete(apply_overrides(raw, overrides or []))
