"""Image decoding and preprocessing: raw or compressed bytes to arrays, arrays to tensors.

No ROS imports: the ROS layer hands over the fields of sensor_msgs/Image (or the bytes of a
CompressedImage) and gets back a numpy image, so decoding is tested without ROS.

Every decoded image is either HxW (grayscale) or HxWx3 RGB, uint8 or float32 in [0, 1].
"""
from __future__ import annotations

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


def decode_compressed(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG bytes (sensor_msgs/CompressedImage) to an RGB or gray array."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buffer.size == 0:
        raise ImageError("compressed image has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("compressed image could not be decoded (not a JPEG/PNG?)")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    return image


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
