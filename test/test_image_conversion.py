"""The numpy Image conversion path: every common encoding, and every malformed message rejected."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lewm_ros.image_conversion import (
    ImageConversionError,
    image_msg_to_rgb,
    resize_square,
    rgb_to_image_fields,
)

RGB = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)


def msg(pixels: np.ndarray, encoding: str, step_pad: int = 0, bigendian: bool = False) -> SimpleNamespace:
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1).view(np.uint8)
    data = np.concatenate([row, np.zeros((height, step_pad), np.uint8)], axis=1)
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                           step=data.shape[1], data=data.tobytes())


@pytest.mark.parametrize('encoding,stored', [
    ('rgb8', RGB),
    ('bgr8', RGB[..., ::-1]),
    ('rgba8', np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
def test_colour_encodings_give_rgb(encoding: str, stored: np.ndarray) -> None:
    np.testing.assert_array_equal(image_msg_to_rgb(msg(np.ascontiguousarray(stored), encoding), False), RGB)


def test_row_padding_is_skipped() -> None:
    np.testing.assert_array_equal(image_msg_to_rgb(msg(RGB, 'rgb8', step_pad=3), False), RGB)


def test_mono8_is_grey_rgb() -> None:
    grey = RGB[..., 0].copy()
    out = image_msg_to_rgb(msg(grey[..., None], 'mono8'), False)
    assert out.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_float_image_scaled_and_big_endian_read() -> None:
    values = (RGB / 255.0).astype('>f4')
    out = image_msg_to_rgb(msg(values, '32FC3', bigendian=True), False)
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize('bad,reason', [
    (msg(RGB, 'yuv422'), 'unsupported encoding'),
    (SimpleNamespace(height=0, width=5, encoding='rgb8', is_bigendian=0, step=15, data=b''), 'empty'),
    (SimpleNamespace(height=6, width=5, encoding='rgb8', is_bigendian=0, step=15, data=b'\0' * 89), 'bytes'),
    (SimpleNamespace(height=6, width=5, encoding='rgb8', is_bigendian=0, step=10, data=b'\0' * 60), 'step'),
    (msg(np.full((4, 4, 1), np.nan, np.float32), '32FC1'), 'NaN'),
])
def test_malformed_messages_raise_with_reason(bad: SimpleNamespace, reason: str) -> None:
    with pytest.raises(ImageConversionError, match=reason):
        image_msg_to_rgb(bad, use_cv_bridge=False)


def test_rgb_fields_round_trip() -> None:
    np.testing.assert_array_equal(image_msg_to_rgb(SimpleNamespace(**rgb_to_image_fields(RGB)), False), RGB)


def test_resize_square_crops_centre_and_keeps_constant_colour() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, 8:56] = (200, 100, 50)  # the centre square is uniform
    out = resize_square(frame, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([200, 100, 50], np.uint8), (16, 16, 3)))
