"""The LeWM model as plain torch modules (no transformers/timm dependency)."""

from lewm_ros.model.config import ModelConfig, load_preset, preset_path
from lewm_ros.model.image import normalize_pixels, resize_pixels
from lewm_ros.model.lewm import LeWM
from lewm_ros.model.predictor import Predictor

__all__ = [
    'LeWM',
    'ModelConfig',
    'Predictor',
    'load_preset',
    'normalize_pixels',
    'preset_path',
    'resize_pixels',
]
