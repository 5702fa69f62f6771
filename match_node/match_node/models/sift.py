"""SIFT through OpenCV, with the scale and orientation LightGlue's SIFT variant takes as input.

The settings follow the official LightGlue SIFT extractor's OpenCV backend, the one whose
outputs `sift_lightglue.pth` users feed today: contrast threshold 0.0066667 (COLMAP's peak
threshold), edge threshold 10, four layers per octave, RootSIFT descriptors. OpenCV returns one
keypoint per dominant orientation, so a location can appear several times; like the official
code, duplicates keep the highest response and then the smallest |angle|, and an optional
non-maximum suppression (`nms_radius` > 0) thins the rest.

Conventions: keypoints are OpenCV's `pt` (pixel centres at integer coordinates, as every
extractor here), `scales` are OpenCV's `size` (diameter in pixels of the working image, as the
official code passes them, unnormalised) and `oris` the angle in radians.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def root_sift(descriptors: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root, L2-normalise, so
    the dot product of two descriptors is the Hellinger kernel of the SIFT histograms."""
    x = F.normalize(descriptors, p=1, dim=-1, eps=eps).clamp(min=eps).sqrt()
    return F.normalize(x, p=2, dim=-1, eps=eps)


def keep_unique_locations(points: np.ndarray, responses: np.ndarray, angles: np.ndarray,
                          image_size: tuple[int, int], nms_radius: int = 0) -> np.ndarray:
    """Indices to keep: one keypoint per pixel (highest response, then smallest |angle|), and
    with `nms_radius` > 0 only local maxima of the response within that radius."""
    width, height = image_size
    cols = np.clip(np.round(points[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(points[:, 1]).astype(int), 0, height - 1)
    pixel = rows * width + cols
    # Sort by pixel, then response descending, then |angle| ascending: the first of each
    # pixel's run is the one to keep. lexsort takes its last key as the primary one.
    order = np.lexsort((np.abs(angles), -responses, pixel))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel[order[1:]] != pixel[order[:-1]]
    keep = order[first]
    if nms_radius > 0 and len(keep):
        grid = torch.zeros(1, 1, height, width, dtype=torch.float64)
        grid[0, 0, rows[keep], cols[keep]] = torch.from_numpy(responses[keep].astype(np.float64))
        peaks = F.max_pool2d(grid, 2 * nms_radius + 1, stride=1, padding=nms_radius)
        is_peak = (grid == peaks)[0, 0, rows[keep], cols[keep]].numpy()
        keep = keep[is_peak]
    return np.sort(keep)


class SIFT(nn.Module):
    """OpenCV SIFT behind the extractor interface (no parameters; runs on the CPU)."""

    default_conf: dict[str, Any] = {
        "max_num_keypoints": 4096,        # <= 0: no cap
        "detection_threshold": 0.0066667,  # OpenCV contrastThreshold
        "edge_threshold": 10.0,
        # The official OpenCV backend passes its `num_octaves` (4) as nOctaveLayers.
        "num_octave_layers": 4,
        "nms_radius": 0,                  # 0: only one keypoint per pixel
        "rootsift": True,
    }
    descriptor_dim = 128

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown SIFT options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}

    def _detector(self) -> cv2.SIFT:
        # Created per call (microseconds) so that run-time changes of conf always apply.
        # nfeatures is left unlimited: OpenCV's own cap counts orientation duplicates, the
        # cap here is applied after removing them, by response.
        return cv2.SIFT_create(nfeatures=0, nOctaveLayers=int(self.conf["num_octave_layers"]),
                               contrastThreshold=float(self.conf["detection_threshold"]),
                               edgeThreshold=float(self.conf["edge_threshold"]))

    def detect_and_describe(self, gray: np.ndarray) -> dict[str, np.ndarray]:
        """SIFT on one uint8 gray image (numpy), before the cap and RootSIFT."""
        detections, descriptors = self._detector().detectAndCompute(gray, None)
        if not detections:
            return {"keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros(0, np.float32),
                    "scales": np.zeros(0, np.float32), "oris": np.zeros(0, np.float32),
                    "descriptors": np.zeros((0, 128), np.float32)}
        points = np.array([k.pt for k in detections], dtype=np.float32)
        responses = np.array([k.response for k in detections], dtype=np.float32)
        scales = np.array([k.size for k in detections], dtype=np.float32)
        angles = np.deg2rad(np.array([k.angle for k in detections], dtype=np.float32))
        keep = keep_unique_locations(points, responses, angles, (gray.shape[1], gray.shape[0]),
                                     int(self.conf["nms_radius"]))
        return {"keypoints": points[keep], "scores": responses[keep], "scales": scales[keep],
                "oris": angles[keep], "descriptors": descriptors[keep].astype(np.float32)}

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """image: Bx3xHxW or Bx1xHxW in [0, 1]. Returns lists of keypoints (Nx2), keypoint_scores
        (N, OpenCV response), descriptors (Nx128), scales (N, pixels) and oris (N, radians),
        sorted by response, highest first."""
        if image.shape[1] == 3:
            # ITU-R 601 luma, as cv2.cvtColor(RGB2GRAY) computes it.
            weights = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            image = (image * weights).sum(1, keepdim=True)
        batch = (image[:, 0].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
        device = image.device
        out: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "keypoints", "keypoint_scores", "descriptors", "scales", "oris")}
        cap = int(self.conf["max_num_keypoints"])
        for gray in batch:
            found = self.detect_and_describe(gray)
            order = np.argsort(-found["scores"], kind="stable")
            if cap > 0:
                order = order[:cap]
            descriptors = torch.from_numpy(found["descriptors"][order])
            if self.conf["rootsift"]:
                descriptors = root_sift(descriptors)
            for key, value in (("keypoints", found["keypoints"][order]),
                               ("keypoint_scores", found["scores"][order]),
                               ("scales", found["scales"][order]),
                               ("oris", found["oris"][order])):
                out[key].append(torch.from_numpy(np.ascontiguousarray(value)).to(device))
            out["descriptors"].append(descriptors.to(device))
        return out
