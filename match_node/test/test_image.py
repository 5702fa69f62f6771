"""Decoding of sensor_msgs/Image fields and compressed images, without ROS."""
import cv2
import numpy as np
import pytest
import torch

from match_node.engine.image import ImageError, check_image, decode_compressed, decode_raw, prepare

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


def padded(rows: np.ndarray, step: int) -> bytes:
    """Row-major bytes with each row padded to `step` bytes, as cameras often send."""
    flat = rows.reshape(rows.shape[0], -1).view(np.uint8)
    out = np.zeros((rows.shape[0], step), np.uint8)
    out[:, :flat.shape[1]] = flat
    return out.tobytes()


def test_rgb8_and_bgr8_with_row_padding():
    assert np.array_equal(decode_raw(padded(RGB, 20), 6, 5, "rgb8", 20), RGB)
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    assert np.array_equal(decode_raw(padded(bgr, 16), 6, 5, "bgr8", 16), RGB)


def test_rgba_bgra_drop_alpha():
    bgra = np.concatenate([RGB[..., ::-1], np.full((6, 5, 1), 7, np.uint8)], 2)
    assert np.array_equal(decode_raw(bgra.tobytes(), 6, 5, "bgra8", 20), RGB)


def test_mono16_big_and_little_endian():
    values = np.array([[0, 65535], [257, 32768]], dtype=np.uint16)
    little = decode_raw(values.astype("<u2").tobytes(), 2, 2, "mono16", 4, False)
    big = decode_raw(values.astype(">u2").tobytes(), 2, 2, "mono16", 4, True)
    assert np.allclose(little, values / 65535.0) and np.allclose(big, little)
    assert little.dtype == np.float32


def test_mono8_padded():
    gray = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    assert np.array_equal(decode_raw(padded(gray, 8), 4, 3, "mono8", 8), gray)


def test_bayer_and_yuv_give_rgb():
    assert decode_raw(np.zeros(16 * 8, np.uint8).tobytes(), 8, 16, "bayer_rggb8", 16).shape == (8, 16, 3)
    assert decode_raw(np.zeros(16 * 8 * 2, np.uint8).tobytes(), 8, 16, "yuv422", 32).shape == (8, 16, 3)


@pytest.mark.parametrize("args,fragment", [
    ((b"", 4, 4, "64FC1", 32), "unsupported image encoding '64FC1'"),
    ((b"", 0, 4, "mono8", 4), "empty image"),
    ((b"\0" * 10, 4, 4, "mono8", 4), "needs 16"),
    ((b"\0" * 48, 4, 4, "rgb8", 8), "smaller than one row"),
])
def test_bad_raw_images(args, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_raw(*args)


def test_nan_float_image_refused():
    data = np.full((2, 2), np.nan, np.float32).tobytes()
    with pytest.raises(ImageError, match="NaN"):
        decode_raw(data, 2, 2, "32FC1", 8)


def test_compressed_png_and_jpeg():
    ok, png = cv2.imencode(".png", np.ascontiguousarray(RGB[..., ::-1]))
    assert np.array_equal(decode_compressed(png.tobytes()), RGB)
    ok, jpg = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    assert decode_compressed(jpg.tobytes()).shape == (16, 16)
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_compressed(b"garbage bytes")
    with pytest.raises(ImageError, match="no data"):
        decode_compressed(b"")


@pytest.mark.parametrize("shape", [(1, 1), (4, 100), (0, 0, 3), (10, 10, 2)])
def test_unusable_shapes(shape):
    with pytest.raises(ImageError):
        check_image(np.zeros(shape, np.uint8))


def test_prepare_resizes_and_maps_back_to_original_pixels():
    image = np.zeros((400, 600, 3), np.uint8)
    prepared = prepare(image, torch.device("cpu"), max_side=300)
    assert tuple(prepared.tensor.shape) == (1, 3, 200, 300)
    assert prepared.original_size == (600, 400)
    # Pixel centres align: working pixel (0, 0) covers original pixels 0..1, centre 0.5.
    back = prepared.to_original(torch.tensor([[0.0, 0.0], [299.0, 199.0]]))
    assert torch.allclose(back, torch.tensor([[0.5, 0.5], [598.5, 398.5]]))
    gray = prepare(np.zeros((20, 30), np.uint8), torch.device("cpu"))
    assert tuple(gray.tensor.shape) == (1, 3, 20, 30)
