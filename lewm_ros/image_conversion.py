"""Turn ``sensor_msgs/Image`` messages into RGB uint8 arrays the model can eat, and back.

Pure numpy/torch: the functions take any object with the Image fields (height, width, encoding,
step, is_bigendian, data), so they are tested without a ROS graph. ``cv_bridge`` is used when it
is importable (it knows more encodings); the numpy path covers the common camera encodings and is
what runs in a plain venv. Every malformed message raises ``ImageConversionError`` with a reason
the node logs before dropping the frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# encoding -> (channels, dtype, index order that yields RGB from the stored channels)
_ENCODINGS: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {
    'rgb8': (3, np.dtype(np.uint8), (0, 1, 2)),
    'bgr8': (3, np.dtype(np.uint8), (2, 1, 0)),
    'rgba8': (4, np.dtype(np.uint8), (0, 1, 2)),
    'bgra8': (4, np.dtype(np.uint8), (2, 1, 0)),
    'mono8': (1, np.dtype(np.uint8), (0, 0, 0)),
    '32FC1': (1, np.dtype(np.float32), (0, 0, 0)),
    '32FC3': (3, np.dtype(np.float32), (0, 1, 2)),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


class ImageConversionError(ValueError):
    """The message cannot be turned into an image; the text says why (for the node's log)."""


def _cv_bridge() -> Any | None:
    try:
        from cv_bridge import CvBridge  # ROS 2's cv_bridge; absent from plain venvs
    except Exception:  # noqa: BLE001 - ImportError or a broken binary build: fall back to numpy
        return None
    return CvBridge()


_BRIDGE = _cv_bridge()


def image_msg_to_rgb(msg: Any, use_cv_bridge: bool = True) -> np.ndarray:
    """Return the image in ``msg`` as a contiguous (H, W, 3) uint8 RGB array.

    Float images (32FC1/32FC3) are read as intensities in [0, 1]; NaN or inf in them is an error,
    not a black pixel, because a world model fed garbage plans garbage.
    """
    height, width, encoding = int(msg.height), int(msg.width), str(msg.encoding)
    if height <= 0 or width <= 0 or len(msg.data) == 0:
        raise ImageConversionError(f'empty image ({width}x{height}, {len(msg.data)} bytes)')
    if encoding not in _ENCODINGS:
        if use_cv_bridge and _BRIDGE is not None:
            try:
                return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding='rgb8'))
            except Exception as err:  # noqa: BLE001 - cv_bridge raises several types
                raise ImageConversionError(f'cv_bridge cannot convert encoding {encoding!r}: {err}') from err
        raise ImageConversionError(
            f'unsupported encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    channels, dtype, order = _ENCODINGS[encoding]
    row_bytes = width * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(f'step {step} is smaller than one row of {width} {encoding} pixels '
                                   f'({row_bytes} bytes)')
    if len(msg.data) != step * height:
        raise ImageConversionError(f'data has {len(msg.data)} bytes but step x height = {step} x {height} '
                                   f'= {step * height}')
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    pixels = raw.copy().view(dtype.newbyteorder('>' if msg.is_bigendian else '<'))
    pixels = pixels.reshape(height, width, channels)[..., list(order)]
    if dtype.kind == 'f':
        if not np.isfinite(pixels).all():
            raise ImageConversionError(f'{encoding} image contains NaN or inf values')
        pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def rgb_to_image_fields(rgb: np.ndarray) -> dict[str, Any]:
    """Fields of an rgb8 ``sensor_msgs/Image`` holding ``rgb`` (H, W, 3) uint8: ``Image(**fields)``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {rgb.shape}')
    height, width, _ = rgb.shape
    return {'height': height, 'width': width, 'encoding': 'rgb8', 'is_bigendian': 0, 'step': width * 3,
            'data': rgb.tobytes()}


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to (size, size, 3) uint8 with area-like antialiasing.

    The model was trained on square frames; cropping (not stretching) keeps object shapes.
    """
    height, width, _ = rgb.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    tensor = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
