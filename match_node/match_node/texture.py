"""How much texture a frame has for a detector, and when to switch to detector-free matching.

The measure comes from the extractor's own output, which the pipeline computes anyway: the
number of confident keypoints and how much of the image they cover (the share of cells of a
coarse grid holding at least one). Walls, floors, fog and night give few confident keypoints,
or keypoints bunched in one corner; both starve a detector-based matcher and its pose.

`MatcherSwitch` turns the measure into a decision with hysteresis: it switches to the
detector-free matcher after `switch_frames` consecutive textureless frames and back after as
many textured ones, with separate low and high thresholds, so it does not flap on frames near
a single threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Texture:
    confident: int       # keypoints with a score above the confidence threshold
    coverage: float      # share of grid cells holding at least one confident keypoint

    def is_low(self, min_keypoints: int, min_coverage: float) -> bool:
        return self.confident < min_keypoints or self.coverage < min_coverage

    def is_high(self, min_keypoints: int, min_coverage: float) -> bool:
        return self.confident >= min_keypoints and self.coverage >= min_coverage


def measure_texture(keypoints: np.ndarray, scores: np.ndarray, image_size: tuple[int, int],
                    score_threshold: float = 0.2, grid: tuple[int, int] = (16, 12)) -> Texture:
    """Texture of a frame from its keypoints (N x 2 pixels) and their detection scores.

    The grid is 16 x 12 cells whatever the resolution (40 px cells at 640x480), so coverage
    means the same at any image size.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    confident = keypoints[scores > score_threshold]
    if len(confident) == 0:
        return Texture(0, 0.0)
    w, h = image_size
    columns = np.clip((confident[:, 0] / w * grid[0]).astype(int), 0, grid[0] - 1)
    rows = np.clip((confident[:, 1] / h * grid[1]).astype(int), 0, grid[1] - 1)
    occupied = np.unique(rows * grid[0] + columns).size
    return Texture(len(confident), occupied / (grid[0] * grid[1]))


class MatcherSwitch:
    """Chooses between a detector-based matcher and a detector-free one, with hysteresis."""

    def __init__(self, detector_based: str = "lightglue", detector_free: str = "loftr",
                 low_keypoints: int = 150, low_coverage: float = 0.30,
                 high_keypoints: int = 250, high_coverage: float = 0.40,
                 switch_frames: int = 2) -> None:
        if high_keypoints < low_keypoints or high_coverage < low_coverage:
            raise ValueError("the 'textured again' thresholds must not be below the "
                             "'textureless' ones (that would make the switch flap)")
        self.detector_based, self.detector_free = detector_based, detector_free
        self.low = (low_keypoints, low_coverage)
        self.high = (high_keypoints, high_coverage)
        self.switch_frames = max(1, switch_frames)
        self.current = detector_based
        self._streak = 0
        self.switches = 0

    def update(self, texture: Texture) -> str:
        """Feed one frame's texture; return the matcher to use for it."""
        if self.current == self.detector_based:
            leaving = texture.is_low(*self.low)
        else:
            leaving = texture.is_high(*self.high)
        self._streak = self._streak + 1 if leaving else 0
        if self._streak >= self.switch_frames:
            self.current = (self.detector_free if self.current == self.detector_based
                            else self.detector_based)
            self._streak = 0
            self.switches += 1
        return self.current
