"""Model sizes as one dataclass, loadable from the named presets in ``config/train/<name>.yaml``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from lewm_ros.paths import config_path


@dataclass
class ModelConfig:
    """Every number that fixes the shapes of a LeWM model.

    Defaults are the paper's model (ViT-tiny at 224 px, ~18 M parameters). ``history``,
    ``frameskip`` and ``action_dim`` belong to the data, but they fix tensor shapes (positional
    embedding, action-encoder input) so they are part of the model's identity too.
    """

    image_size: int = 224
    patch_size: int = 14
    encoder_width: int = 192
    encoder_depth: int = 12
    encoder_heads: int = 3
    encoder_mlp_dim: int = 768
    embed_dim: int = 192
    projector_hidden: int = 2048
    action_dim: int = 2
    frameskip: int = 5
    history: int = 3
    action_hidden: int = 768
    predictor_depth: int = 6
    predictor_heads: int = 16
    predictor_head_dim: int = 64
    predictor_mlp_dim: int = 2048
    predictor_dropout: float = 0.1

    # Upper limits, checked before anything is built: a typo or a damaged meta.json must give an
    # error, not a 20 GB allocation. Each is at least 4x the paper's value (config/train/paper.yaml);
    # raise one here to train a model beyond them.
    MAX_SIZES: ClassVar[dict[str, int]] = {
        'image_size': 1024,
        'patch_size': 64,
        'encoder_width': 2048,
        'encoder_depth': 64,
        'encoder_heads': 64,
        'encoder_mlp_dim': 8192,
        'embed_dim': 2048,
        'projector_hidden': 16384,
        'action_dim': 64,
        'frameskip': 100,
        'history': 64,
        'action_hidden': 8192,
        'predictor_depth': 64,
        'predictor_heads': 64,
        'predictor_head_dim': 256,
        'predictor_mlp_dim': 16384,
    }
    MAX_PATCHES: ClassVar[int] = 4096  # (image_size / patch_size)^2; the paper's is 256

    def __post_init__(self) -> None:
        problems = []
        for name in self.MAX_SIZES:  # every integer size
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f'{name} must be a positive integer, got {value!r}')
            elif value > self.MAX_SIZES[name]:
                problems.append(
                    f'{name} is {value}, above the limit of {self.MAX_SIZES[name]} '
                    '(ModelConfig.MAX_SIZES in lewm_ros/model/config.py)'
                )
        if not problems:
            if self.image_size % self.patch_size:
                problems.append(
                    f'image_size {self.image_size} is not a multiple of patch_size {self.patch_size}'
                )
            if self.encoder_width % self.encoder_heads:
                problems.append(
                    f'encoder_width {self.encoder_width} is not divisible by '
                    f'encoder_heads {self.encoder_heads}'
                )
            if self.num_patches > self.MAX_PATCHES:
                problems.append(
                    f'image_size {self.image_size} / patch_size {self.patch_size} makes {self.num_patches} '
                    f'patches, above the limit of {self.MAX_PATCHES} (ModelConfig.MAX_PATCHES)'
                )
        dropout = self.predictor_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            problems.append(f'predictor_dropout must be in [0, 1), got {self.predictor_dropout!r}')
        if problems:
            raise ValueError('invalid model config: ' + '; '.join(problems))

    @property
    def action_input_dim(self) -> int:
        """Width of one frameskip-concatenated action block (``frameskip * action_dim``)."""
        return self.frameskip * self.action_dim

    @property
    def num_patches(self) -> int:
        """Number of image patches the encoder sees (CLS not counted)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error so a typo in a YAML file is caught."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown model config key(s) {unknown}; known keys: {sorted(known)}')
        return cls(**values)

    @classmethod
    def from_preset(cls, name_or_path: str | Path, **overrides: Any) -> ModelConfig:
        """Model config of a training preset (its ``model:`` section plus ``data.history/frameskip``).

        ``name_or_path`` is a preset name (``paper``, ``tiny``) or a YAML file path. ``overrides``
        replace single fields, e.g. ``action_dim=2``.
        """
        preset = load_preset(name_or_path)
        values = dict(preset.get('model') or {})
        data = preset.get('data') or {}
        for key in ('history', 'frameskip'):
            if data.get(key) is not None and key not in values:
                values[key] = data[key]
        values.update(overrides)
        return cls.from_dict(values)


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``paper``) or a YAML path to an existing file."""
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml') or candidate.exists():
        if not candidate.is_file():
            raise FileNotFoundError(f'training config {candidate} does not exist')
        return candidate
    path = config_path('train', f'{name_or_path}.yaml')
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob('*.yaml')) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f'no preset named {name_or_path!r} (looked for {path}); available: {available}'
        )
    return path


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """The whole preset YAML (model, data, optim, loss, train sections) as a dict."""
    path = preset_path(name_or_path)
    with open(path, encoding='utf-8') as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f'{path} must hold a YAML mapping with model/data/optim/loss/train sections')
    return values
