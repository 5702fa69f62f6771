"""SuperPoint keypoint detector and descriptor (DeTone et al., CVPRW 2018), loading the official
Magic Leap checkpoint `superpoint_v1.pth` unchanged.

The network: a VGG-style encoder (four stages of two 3x3 convolutions, max-pooled by 2 between
stages, so the maps are at 1/8 resolution), a detector head giving 65 logits per 8x8 cell (64
pixel positions and a "no keypoint" dustbin), and a descriptor head giving a 256-d map per
cell. Keypoints are the local maxima of the full-resolution score map; descriptors are the
normalised descriptor map interpolated at them.

The checkpoint carries Magic Leap's non-commercial licence: this project never ships or
downloads it (see weights.CHECKPOINTS["superpoint"]).

Input: RGB (or gray) images in [0, 1], Bx3xHxW of any size. Keypoints are returned in pixels of
the input image with integer values at pixel centres (as the official LightGlue wrapper).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .nms import simple_nms

CELL = 8  # the encoder downsamples by 8; one detector cell covers 8x8 pixels

# ITU-R 601 luma: the grayscale of OpenCV's IMREAD_GRAYSCALE that the official demos feed.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
    """Bilinearly interpolate a dense descriptor map at keypoints; unit-norm results.

    keypoints: N x 2 pixels (x, y); descriptors: C x h x w at 1/8 resolution. Returns N x C.
    The pixel -> cell mapping is the official one, which the checkpoint's users (SuperGlue,
    LightGlue) were trained with: pixel 3.5 (the centre of the first cell) maps to cell 0 and
    the last pixel column/row (8w - 1) maps to the last cell's centre, i.e.
    cell = (x - 3.5) * (w - 1) / (8w - 4.5), not the geometric (x - 3.5) / 8.
    """
    c, h, w = descriptors.shape
    if keypoints.shape[0] == 0:
        return descriptors.new_zeros((0, c))
    half = CELL / 2 - 0.5
    span = keypoints.new_tensor([CELL * w - CELL / 2 - 0.5, CELL * h - CELL / 2 - 0.5])
    grid = (keypoints - half) / span * 2 - 1           # [-1, 1] across cell centres
    sampled = F.grid_sample(descriptors[None], grid.to(descriptors.dtype).view(1, 1, -1, 2),
                            mode="bilinear", align_corners=True)
    return F.normalize(sampled.view(c, -1).t(), p=2, dim=1)


class SuperPoint(nn.Module):
    default_conf: dict[str, Any] = {
        "max_num_keypoints": 1024,    # <= 0: no cap
        "detection_threshold": 0.005,  # keep maxima whose score exceeds it (official 0.005)
        "nms_radius": 4,
        "remove_borders": 4,           # no keypoints within this many pixels of the edge
    }
    descriptor_dim = 256

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown SuperPoint options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        if self.conf["nms_radius"] < 0 or self.conf["remove_borders"] < 0:
            raise ValueError("nms_radius and remove_borders must be >= 0")

        def conv(name: str, cin: int, cout: int, k: int) -> None:
            setattr(self, name, nn.Conv2d(cin, cout, k, padding=k // 2))

        # Encoder widths 64-64-128-128; the names are the checkpoint's.
        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        conv("conv1a", 1, c1, 3)
        conv("conv1b", c1, c1, 3)
        conv("conv2a", c1, c2, 3)
        conv("conv2b", c2, c2, 3)
        conv("conv3a", c2, c3, 3)
        conv("conv3b", c3, c3, 3)
        conv("conv4a", c3, c4, 3)
        conv("conv4b", c4, c4, 3)
        conv("convPa", c4, c5, 3)
        conv("convPb", c5, CELL * CELL + 1, 1)   # 64 positions + dustbin
        conv("convDa", c4, c5, 3)
        conv("convDb", c5, self.descriptor_dim, 1)

    # --- dense maps -------------------------------------------------------------------------
    @staticmethod
    def to_gray(image: torch.Tensor) -> torch.Tensor:
        """Bx1xHxW gray from a Bx3xHxW RGB image (a 1-channel image is returned as is)."""
        if image.shape[1] == 1:
            return image
        if image.shape[1] != 3:
            raise ValueError(f"expected a 1- or 3-channel image, got {image.shape[1]} channels")
        r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
        return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b

    def encode(self, gray: torch.Tensor) -> torch.Tensor:
        """Encoder features (B x 128 x H/8 x W/8) of a gray image whose sides are multiples of 8."""
        x = gray
        for stage, (a, b) in enumerate(((self.conv1a, self.conv1b), (self.conv2a, self.conv2b),
                                        (self.conv3a, self.conv3b), (self.conv4a, self.conv4b))):
            if stage > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            x = F.relu(b(F.relu(a(x))))
        return x

    def dense_maps(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The score map (B x H x W, before NMS, for the input image) and the unit-norm
        descriptor map (B x 256 x ceil(H/8) x ceil(W/8), of the padded image).

        The official network needs sides that are multiples of 8 (it silently drops the
        remainder rows and columns). Here the image is padded at the bottom and right by
        replicating the edge, so the cells stay aligned with the top-left corner as in the
        official code (identical results for multiples of 8), and the score map is cropped
        back to the input size.
        """
        gray = self.to_gray(image)
        h, w = gray.shape[-2:]
        pad_h, pad_w = (-h) % CELL, (-w) % CELL
        if pad_h or pad_w:
            gray = F.pad(gray, (0, pad_w, 0, pad_h), mode="replicate")
        x = self.encode(gray)
        logits = self.convPb(F.relu(self.convPa(x)))
        # Softmax over the 65 bins per cell, then drop the dustbin: channel i*8 + j of a cell
        # is pixel (row i, column j) inside it, which is exactly depth-to-space.
        probs = torch.softmax(logits, dim=1)[:, :-1]
        scores = F.pixel_shuffle(probs, CELL)[:, 0, :h, :w]
        descriptors = F.normalize(self.convDb(F.relu(self.convDa(x))), p=2, dim=1)
        return scores, descriptors

    # --- detection --------------------------------------------------------------------------
    def detect(self, scores: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keypoints (N x 2 pixels as x, y; sorted by score, descending) and their scores per
        image from a B x H x W score map: NMS, threshold, border removal, top-k."""
        b, h, w = scores.shape
        peaks = simple_nms(scores, self.conf["nms_radius"])
        border = self.conf["remove_borders"]
        if border:
            inside = torch.zeros_like(peaks, dtype=torch.bool)
            inside[:, border:h - border, border:w - border] = True
            # -1 rather than 0 so that a threshold of 0 still excludes the border.
            peaks = torch.where(inside, peaks, peaks.new_tensor(-1.0))
        cap = self.conf["max_num_keypoints"]
        flat = peaks.view(b, -1)
        keypoints, keypoint_scores = [], []
        for i in range(b):
            idx = (flat[i] > self.conf["detection_threshold"]).nonzero()[:, 0]
            values = flat[i, idx]
            order = values.sort(descending=True, stable=True).indices
            if cap > 0:
                order = order[:cap]
            idx, values = idx[order], values[order]
            xy = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], 1)
            keypoints.append(xy.to(scores.dtype))
            keypoint_scores.append(values)
        return keypoints, keypoint_scores

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Detect and describe. image: Bx3xHxW RGB (or Bx1xHxW gray) in [0, 1].

        Returns lists (one entry per image) of keypoints (N x 2 pixels), keypoint_scores (N)
        and descriptors (N x 256, unit norm).
        """
        scores, dense = self.dense_maps(image)
        keypoints, keypoint_scores = self.detect(scores)
        descriptors = [sample_descriptors(k, d) for k, d in zip(keypoints, dense)]
        return {"keypoints": keypoints, "keypoint_scores": keypoint_scores,
                "descriptors": descriptors}
