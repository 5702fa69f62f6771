"""Image decoding and preprocessing: raw or compressed bytes to arrays, arrays to tensors.

No ROS imports: the ROS layer hands over the fields of sensor_msgs/Image (or the bytes of a
CompressedImage) and gets back a numpy image, so decoding is tested without ROS.

Every decoded image is either HxW (grayscale) or HxWx3 RGB, uint8 or float32 in [0, 1].
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


class ImageError(ValueError):
    """An image cannot be used; the message says why (logged and counted by the node)."""


# encoding -> (numpy dtype, channels, conversion to RGB or gray)
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_ENCODINGS: dict[str, tuple[str, int]] = {
    "mono8": ("u1", 1), "8UC1": ("u1", 1),
    "mono16": ("u2", 1), "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
    "rgb8": ("u1", 3), "bgr8": ("u1", 3), "8UC3": ("u1", 3),
    "rgba8": ("u1", 4), "bgra8": ("u1", 4), "8UC4": ("u1", 4),
    "rgb16": ("u2", 3), "bgr16": ("u2", 3), "16UC3": ("u2", 3),
    "uyvy": ("u1", 2), "yuv422": ("u1", 2), "yuyv": ("u1", 2), "yuv422_yuy2": ("u1", 2),
    **{name: ("u1", 1) for name in _BAYER},
}
SUPPORTED_ENCODINGS = tuple(sorted(_ENCODINGS))


def decode_raw(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
               encoding: str, step: int, is_bigendian: bool = False) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into an HxW gray or HxWx3 RGB array.

    Honours `step` (row padding) and `is_bigendian`. 16-bit images are scaled to [0, 1]
    float32 over their full range; 32FC1 is taken as already in [0, 1] and clipped.
    """
    if encoding not in _ENCODINGS:
        raise ImageError(f"unsupported image encoding '{encoding}'; supported: "
                         + ", ".join(SUPPORTED_ENCODINGS))
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    kind, channels = _ENCODINGS[encoding]
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError(f"step {step} is smaller than one row ({row_bytes} bytes) for "
                         f"{width}x{height} {encoding}")
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.view(np.uint8).reshape(-1)
    if buffer.size < step * (height - 1) + row_bytes:
        raise ImageError(f"image data has {buffer.size} bytes, {width}x{height} {encoding} "
                         f"with step {step} needs {step * height}")
    rows = np.lib.stride_tricks.as_strided(buffer, shape=(height, row_bytes),
                                           strides=(step, 1))
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)

    if encoding in _BAYER:
        return cv2.cvtColor(pixels[..., 0], _BAYER[encoding])
    if channels == 2:  # packed YUV 4:2:2
        code = cv2.COLOR_YUV2RGB_UYVY if encoding in ("uyvy", "yuv422") else cv2.COLOR_YUV2RGB_YUY2
        return cv2.cvtColor(pixels, code)
    if kind == "u2":
        pixels = pixels.astype(np.float32) / 65535.0
    elif kind == "f4":
        if not np.isfinite(pixels).all():
            raise ImageError(f"{encoding} image contains NaN or infinite values")
        pixels = np.clip(pixels, 0.0, 1.0)
    if channels == 1:
        return pixels[..., 0]
    if encoding.startswith("bgr"):
        pixels = pixels[..., 2::-1]
    return np.ascontiguousarray(pixels[..., :3])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): the frame header gives the size.
# 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                       0xCF})
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


def compressed_image_size(data: bytes | bytearray | memoryview | np.ndarray
                          ) -> tuple[str, int, int] | None:
    """(format, width, height) of PNG or JPEG bytes, read from the header without decoding.

    Returns None for other formats. Raises ImageError for a PNG or JPEG whose header is
    truncated or malformed (the decoder would fail on it, or allocate what it claims).
    """
    view = memoryview(np.ascontiguousarray(_as_bytes(data)))
    if view[:8].tobytes() == _PNG_SIGNATURE:
        return _png_size(view)
    if view[:2].tobytes() == b"\xff\xd8":
        return _jpeg_size(view)
    return None


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _png_size(view: memoryview) -> tuple[str, int, int]:
    # The first chunk must be IHDR: length 13, type, width, height (big-endian), 5 more
    # bytes, CRC. libpng checks the CRC too; checking it here catches garbage early.
    if len(view) < 33:
        raise ImageError(f"truncated PNG header ({len(view)} bytes, IHDR needs 33)")
    header = view[8:33].tobytes()
    if header[:8] != b"\x00\x00\x00\x0dIHDR":
        raise ImageError("malformed PNG: the first chunk is not a 13-byte IHDR")
    if zlib.crc32(header[4:21]) != int.from_bytes(header[21:25], "big"):
        raise ImageError("malformed PNG: IHDR checksum mismatch (corrupt header)")
    width, height = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    if width == 0 or height == 0 or width >= 1 << 31 or height >= 1 << 31:
        raise ImageError(f"malformed PNG: header gives a size of {width}x{height}")
    return "PNG", width, height


def _jpeg_size(view: memoryview) -> tuple[str, int, int]:
    # Walk the marker segments after SOI up to the first start-of-frame. Segments are skipped
    # by their length, so a thumbnail inside an APP1 (EXIF) segment is never mistaken for
    # the frame; image data (SOS) before any frame header means the file is malformed.
    size, pos = len(view), 2
    while True:
        if pos >= size:
            raise ImageError(f"truncated JPEG: no frame header in {size} bytes")
        if view[pos] != 0xFF:
            raise ImageError(f"malformed JPEG: no marker at byte {pos}")
        while pos < size and view[pos] == 0xFF:  # a marker may be preceded by fill bytes
            pos += 1
        if pos >= size:
            raise ImageError(f"truncated JPEG: no frame header in {size} bytes")
        marker = view[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xDA, 0xD9) or marker == 0x00:  # SOS, EOI or a stuffed zero
            raise ImageError(f"malformed JPEG: marker 0x{marker:02X} before the frame header")
        if pos + 2 > size:
            raise ImageError(f"truncated JPEG: segment 0x{marker:02X} at byte {pos - 2} is cut")
        length = (view[pos] << 8) | view[pos + 1]
        if length < 2:
            raise ImageError(f"malformed JPEG: segment 0x{marker:02X} has length {length}")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 7 > size:
                raise ImageError("truncated JPEG: frame header is cut")
            height = (view[pos + 3] << 8) | view[pos + 4]
            width = (view[pos + 5] << 8) | view[pos + 6]
            if width == 0 or height == 0:  # height 0 defers it to a DNL marker (unsupported)
                raise ImageError(f"malformed JPEG: frame header gives a size of "
                                 f"{width}x{height}")
            return "JPEG", width, height
        pos += length


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray,
                      max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG bytes (sensor_msgs/CompressedImage) to an RGB or gray array.

    With `max_pixels`, the size is read from the PNG or JPEG header first and a larger image
    is refused before decoding: a small file can declare a huge image (a 1.2 MB PNG of
    20000x20000 decodes to 1.2 GB). Other formats are refused then, since their size is not
    known before decoding. Without it (trusted files) any format OpenCV reads is decoded.
    """
    buffer = _as_bytes(data)
    if buffer.size == 0:
        raise ImageError("compressed image has no data")
    if max_pixels is not None:
        header = compressed_image_size(buffer)
        if header is None:
            raise ImageError(
                f"compressed image is neither PNG nor JPEG (first bytes "
                f"{buffer[:8].tobytes().hex(' ')}); only those are decoded, as their size is "
                "checked against max_input_pixels before decoding")
        kind, width, height = header
        if width * height > max_pixels:
            raise ImageError(f"{kind} image of {width}x{height} ({width * height} pixels) "
                             f"exceeds max_input_pixels={max_pixels}; dropped before decoding")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("compressed image could not be decoded (not a JPEG/PNG?)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    return image


def checked_stamp_ns(sec: int, nanosec: int) -> int:
    """Nanoseconds of a header stamp (builtin_interfaces/Time sec, nanosec); ImageError when
    it is malformed (nanosec outside 0..999999999, or sec negative), so the frame is dropped
    and counted as invalid instead of entering the stream at a wrong time."""
    if not 0 <= nanosec < 1_000_000_000:
        raise ImageError(f"malformed header stamp: nanosec {nanosec} is outside "
                         f"0..999999999 (sec {sec})")
    if sec < 0:
        raise ImageError(f"malformed header stamp: sec {sec} is negative")
    return sec * 1_000_000_000 + nanosec


def check_image(image: np.ndarray) -> None:
    """Raise ImageError unless `image` is a usable HxW or HxWx{1,3,4} array."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    # The extractor needs room for a 3x3 descriptor patch inside its NMS border.
    if h < 8 or w < 8:
        raise ImageError(f"image of {w}x{h} pixels is too small to match (minimum 8x8)")
    if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ImageError(f"unsupported image dtype {image.dtype}")


@dataclass
class Prepared:
    """An image ready for the extractor, and how to map its pixels back to the original."""
    tensor: torch.Tensor         # 1x3xhxw float in [0, 1] on the device
    original_size: tuple[int, int]   # (width, height) as received
    scale: tuple[float, float]   # working / original, per axis

    def to_original(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Map working-image pixel coordinates to the original image (pixel centres align)."""
        if self.scale == (1.0, 1.0):
            return keypoints
        scale = keypoints.new_tensor(self.scale)
        return (keypoints + 0.5) / scale - 0.5


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size the extractor runs at: downscaled so the longer side is at most `max_side`."""
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


def prepare(image: np.ndarray, device: torch.device, max_side: int = 0) -> Prepared:
    """Upload an image, convert to RGB float [0, 1] and downscale it on the device."""
    check_image(image)
    h, w = image.shape[:2]
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    if image.dtype == np.uint8:
        tensor = tensor.float().div_(255.0)
    elif image.dtype == np.uint16:
        tensor = tensor.float().div_(65535.0)
    else:
        tensor = tensor.float().clamp_(0.0, 1.0)
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    if tensor.shape[1] == 4:
        tensor = tensor[:, :3]
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    new_w, new_h = working_size(w, h, max_side)
    if (new_w, new_h) != (w, h):
        tensor = F.interpolate(tensor, size=(new_h, new_w), mode="bilinear",
                               align_corners=False, antialias=True)
    return Prepared(tensor.contiguous(), (w, h), (new_w / w, new_h / h))
