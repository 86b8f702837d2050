"""Camera messages -> the square RGB uint8 frames a model eats, cheaply; and RGB arrays -> messages.

Pure numpy/torch: the functions take any object with the message fields (``sensor_msgs/Image``:
height, width, encoding, step, is_bigendian, data; ``sensor_msgs/CompressedImage``: format,
data), so they are tested without a ROS graph, and the offline tools that import recordings use
the very same code as the planner node: training and deployment see identical pixels.

Cost matters: a 30 Hz 640 x 480 camera must not eat the control loop. ``image_msg_to_square``
never copies the whole image: it views the message's buffer, crops the centre square as a view,
and lets torch's uint8 channels-last antialiased resize (a vectorised kernel) read it directly;
channels are reordered only on the small result. 640 x 480 -> 64 px costs ~0.1 ms, 4K ~2 ms.
Every malformed message raises ``ImageConversionError`` with a reason the node logs before
dropping the frame.
"""

from __future__ import annotations

import io
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
COMPRESSED_FORMATS = ('jpeg', 'png')
# A compressed frame may claim any size in a few bytes (a 60 KB PNG can hold 8000 x 8000 pixels
# that take a second and gigabytes to decode): larger than 4096 x 4096 is refused before decoding.
MAX_COMPRESSED_PIXELS = 4096 * 4096


class ImageConversionError(ValueError):
    """The message cannot be turned into an image; the text says why (for the node's log)."""


def _pixels_view(msg: Any) -> np.ndarray:
    """The message's pixels (H, W, C) in their stored channel order, as a view where possible.

    Float images come back as uint8 intensities (x 255), after a check for NaN and inf: a world
    model fed garbage plans garbage, so a bad float image is an error, not a black pixel.
    """
    height, width, encoding = int(msg.height), int(msg.width), str(msg.encoding)
    if height <= 0 or width <= 0 or len(msg.data) == 0:
        raise ImageConversionError(f'empty image ({width}x{height}, {len(msg.data)} bytes)')
    if encoding not in _ENCODINGS:
        raise ImageConversionError(
            f'unsupported encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    channels, dtype, _ = _ENCODINGS[encoding]
    row_bytes = width * channels * dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(f'step {step} is smaller than one row of {width} {encoding} pixels '
                                   f'({row_bytes} bytes)')
    if len(msg.data) != step * height:
        raise ImageConversionError(f'data has {len(msg.data)} bytes but step x height = {step} x {height} '
                                   f'= {step * height}')
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(height, step)[:, :row_bytes]
    if dtype.kind != 'f':
        return rows.reshape(height, width, channels)
    values = np.ascontiguousarray(rows).view(dtype.newbyteorder('>' if msg.is_bigendian else '<'))
    if not np.isfinite(values).all():
        raise ImageConversionError(f'{encoding} image contains NaN or inf values')
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8).reshape(height, width, channels)


def _to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    order = list(_ENCODINGS[encoding][2])
    return np.ascontiguousarray(pixels[..., order], dtype=np.uint8)


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """The whole image in a ``sensor_msgs/Image`` as a contiguous (H, W, 3) uint8 RGB array."""
    return _to_rgb(_pixels_view(msg), str(msg.encoding))


def image_msg_to_square(msg: Any, size: int) -> np.ndarray:
    """The centre square of a ``sensor_msgs/Image``, resized to (size, size, 3) RGB uint8.

    The same pixels as ``resize_square(image_msg_to_rgb(msg), size)``, without converting the
    parts of the image that the crop and the resize throw away.
    """
    pixels = _pixels_view(msg)
    return _to_rgb(resize_square(pixels, size), str(msg.encoding))


def compressed_msg_to_square(msg: Any, size: int) -> np.ndarray:
    """The centre square of a ``sensor_msgs/CompressedImage`` (jpeg or png), as (size, size, 3) RGB.

    JPEG is decoded at a reduced scale when the frame is much larger than needed (DCT scaling:
    decoding a 1080p frame for a 64 px model costs a fraction of a full decode), keeping at least
    twice the model's size so the final antialiased resize still has detail to average.
    """
    try:
        from PIL import Image as PILImage
    except ImportError as err:  # pragma: no cover - Pillow ships with the package's dependencies
        raise ImageConversionError('camera_transport compressed needs Pillow (python3-pil)') from err
    data = bytes(msg.data)
    if not data:
        raise ImageConversionError('empty compressed image')
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            if image.format not in ('JPEG', 'PNG'):
                raise ImageConversionError(f'compressed image is {image.format}, expected jpeg or png '
                                           f'(format field {str(msg.format)!r})')
            if image.width * image.height > MAX_COMPRESSED_PIXELS:
                raise ImageConversionError(f'compressed image of {image.width}x{image.height} pixels is '
                                           f'larger than {MAX_COMPRESSED_PIXELS} pixels: not decoded')
            image.draft('RGB', (2 * size, 2 * size))  # JPEG only: the smallest scale >= 2 x size
            rgb = np.asarray(image.convert('RGB'))
    except ImageConversionError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt data
        raise ImageConversionError(f'cannot decode compressed image ({str(msg.format)!r}): {err}') from err
    return resize_square(rgb, size)


def rgb_to_image_fields(rgb: np.ndarray) -> dict[str, Any]:
    """Fields of an rgb8 ``sensor_msgs/Image`` holding ``rgb`` (H, W, 3) uint8: ``Image(**fields)``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) RGB array, got shape {rgb.shape}')
    height, width, _ = rgb.shape
    return {'height': height, 'width': width, 'encoding': 'rgb8', 'is_bigendian': 0, 'step': width * 3,
            'data': rgb.tobytes()}


def rgb_to_compressed_fields(rgb: np.ndarray, fmt: str = 'png', quality: int = 90) -> dict[str, Any]:
    """Fields of a ``sensor_msgs/CompressedImage`` holding ``rgb`` encoded as ``fmt`` (jpeg or png)."""
    from PIL import Image as PILImage

    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f'format must be one of {COMPRESSED_FORMATS}, got {fmt!r}')
    out = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
        out, format=fmt.upper(), **({'quality': quality} if fmt == 'jpeg' else {}))
    return {'format': fmt, 'data': out.getvalue()}


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H, W, C) uint8 to a square and resize it to (size, size, C) with antialiasing.

    The model was trained on square frames; cropping (not stretching) keeps object shapes. The
    crop is a view and the resize reads it in place (torch's uint8 channels-last kernel).
    """
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(square)
    if not square.flags.writeable:  # torch wants a writable buffer; it never writes to the input
        square = square.copy()
    tensor = torch.from_numpy(square).permute(2, 0, 1)[None]  # (1, C, side, side) channels-last view
    resized = F.interpolate(tensor, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())
