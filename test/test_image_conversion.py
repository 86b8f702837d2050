"""Image and CompressedImage conversion: every encoding, the cheap crop-and-resize path, bad messages."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lewm_ros.image_conversion import (
    ImageConversionError,
    compressed_msg_to_square,
    image_msg_to_rgb,
    image_msg_to_square,
    resize_square,
    rgb_to_compressed_fields,
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
    np.testing.assert_array_equal(image_msg_to_rgb(msg(np.ascontiguousarray(stored), encoding)), RGB)


def test_row_padding_is_skipped() -> None:
    np.testing.assert_array_equal(image_msg_to_rgb(msg(RGB, 'rgb8', step_pad=3)), RGB)


def test_mono8_is_grey_rgb() -> None:
    grey = RGB[..., 0].copy()
    out = image_msg_to_rgb(msg(grey[..., None], 'mono8'))
    assert out.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_float_image_scaled_and_big_endian_read() -> None:
    values = (RGB / 255.0).astype('>f4')
    out = image_msg_to_rgb(msg(values, '32FC3', bigendian=True))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize('bad,reason', [
    (msg(RGB, 'yuv422'), 'unsupported encoding'),
    (SimpleNamespace(height=0, width=5, encoding='rgb8', is_bigendian=0, step=15, data=b''), 'empty'),
    (SimpleNamespace(height=6, width=5, encoding='rgb8', is_bigendian=0, step=15, data=b'\0' * 89), 'bytes'),
    (SimpleNamespace(height=6, width=5, encoding='rgb8', is_bigendian=0, step=10, data=b'\0' * 60), 'step'),
    (msg(np.full((4, 4, 1), np.nan, np.float32), '32FC1'), 'NaN'),
    (msg(np.array([[[0.5], [np.inf]], [[0.5], [0.5]]], np.float32), '32FC1'), 'inf'),
    (msg(np.array([[[0.5], [0.5]], [[-np.inf], [0.5]]], np.float32), '32FC1'), 'inf'),
    (msg(np.array([[[0.5, 0.5, np.inf]]], np.float32), '32FC3'), 'inf'),
    (msg(np.array([[[0.5, -np.inf, 0.5]]], '>f4'), '32FC3', bigendian=True), 'inf'),
], ids=['unknown-encoding', 'empty', 'size', 'step', 'nan', '+inf', '-inf', '+inf-rgb', '-inf-big-endian'])
def test_malformed_messages_raise_with_reason(bad: SimpleNamespace, reason: str) -> None:
    with pytest.raises(ImageConversionError, match=reason):
        image_msg_to_rgb(bad)
    with pytest.raises(ImageConversionError, match=reason):  # the node's path
        image_msg_to_square(bad, 4)


def test_rgb_fields_round_trip() -> None:
    np.testing.assert_array_equal(image_msg_to_rgb(SimpleNamespace(**rgb_to_image_fields(RGB))), RGB)


def test_resize_square_crops_centre_and_keeps_constant_colour() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, 8:56] = (200, 100, 50)  # the centre square is uniform
    out = resize_square(frame, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([200, 100, 50], np.uint8), (16, 16, 3)))


BIG = np.random.default_rng(2).integers(0, 256, (48, 70, 3), dtype=np.uint8)  # not square, not a multiple


@pytest.mark.parametrize('encoding,stored', [
    ('rgb8', BIG),
    ('bgr8', BIG[..., ::-1]),
    ('rgba8', np.dstack([BIG, np.full(BIG.shape[:2], 7, np.uint8)])),
    ('bgra8', np.dstack([BIG[..., ::-1], np.full(BIG.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize('size', [16, 48, 64])
def test_square_path_equals_full_conversion_then_resize(encoding: str, stored: np.ndarray, size: int) -> None:
    """The cheap path (crop a view, resize, reorder channels last) gives the pixels of the plain one."""
    message = msg(np.ascontiguousarray(stored), encoding, step_pad=5)
    np.testing.assert_array_equal(image_msg_to_square(message, size), resize_square(BIG, size))


def test_square_path_reads_grey_and_float_images() -> None:
    grey = BIG[..., :1].copy()
    out = image_msg_to_square(msg(grey, 'mono8'), 16)
    np.testing.assert_array_equal(out, resize_square(np.repeat(grey, 3, axis=2), 16))
    values = (BIG / 255.0).astype('>f4')
    np.testing.assert_array_equal(image_msg_to_square(msg(values, '32FC3', bigendian=True), 16),
                                  resize_square(BIG, 16))


def test_square_path_reads_a_writable_message_buffer_in_place() -> None:
    """rclpy hands array.array buffers: the frame is read without copying the message first."""
    import array

    fields = rgb_to_image_fields(BIG)
    fields['data'] = array.array('B', fields['data'])
    np.testing.assert_array_equal(image_msg_to_square(SimpleNamespace(**fields), 32), resize_square(BIG, 32))


def test_png_is_lossless_and_jpeg_close() -> None:
    smooth = np.kron(BIG[:6, :9], np.ones((8, 8, 1), np.uint8))  # 48 x 72 blocks: jpeg-friendly
    raw = resize_square(smooth, 16)
    png = SimpleNamespace(**rgb_to_compressed_fields(smooth, 'png'))
    np.testing.assert_array_equal(compressed_msg_to_square(png, 16), raw)
    jpeg = SimpleNamespace(**rgb_to_compressed_fields(smooth, 'jpeg', quality=95))
    assert np.abs(compressed_msg_to_square(jpeg, 16).astype(int) - raw).mean() < 3.0


def test_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_result() -> None:
    """A 1280 x 960 jpeg decoded at a reduced scale for a 64 px model: within jpeg noise of a full decode."""
    smooth = np.kron(np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8),
                     np.ones((80, 80, 1), np.uint8))
    jpeg = SimpleNamespace(**rgb_to_compressed_fields(smooth, 'jpeg', quality=95))
    assert np.abs(compressed_msg_to_square(jpeg, 64).astype(int) - resize_square(smooth, 64)).mean() < 3.0


TRUNCATED_PNG = rgb_to_compressed_fields(BIG, 'png')['data'][:60]


@pytest.mark.parametrize('data,reason', [(b'', 'empty'), (b'not an image at all', 'cannot decode'),
                                         (TRUNCATED_PNG, 'cannot decode')])
def test_bad_compressed_images_raise_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageConversionError, match=reason):
        compressed_msg_to_square(SimpleNamespace(format='png', data=data), 16)
