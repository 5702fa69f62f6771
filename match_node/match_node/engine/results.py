"""What the engine returns: one frame's features and the matches of a pair (numpy arrays,
pixels of the original images), and what happened to a frame pushed into a stream."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Features:
    """Keypoints and descriptors of one frame, kept on the device for the next pair."""
    keypoints: torch.Tensor      # N x 2, pixels of the original image
    descriptors: torch.Tensor    # N x D
    scores: torch.Tensor         # N
    image_size: tuple[int, int]  # original (width, height)
    preprocess_ms: float = 0.0
    extract_ms: float = 0.0
    working_size: tuple[int, int] = (0, 0)  # (width, height) the extractor ran at
    keypoint_cap: int = 0
    scale_ori: torch.Tensor | None = None  # N x 2 (scale px, orientation rad): SIFT only
    # The direct path's frame (direct.DirectFrame: its high-passed image, whose corners are
    # `keypoints`); None for every other extractor.
    direct: Any = None

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass
class LoftrFeatures:
    """LoFTR's per-image features (backbone maps), cached for the next pair like Features."""
    maps: dict[str, torch.Tensor]   # "coarse" (position-encoded) and "fine"
    image_size: tuple[int, int]     # original (width, height)
    scale: tuple[float, float]      # working / original
    num_cells: int                  # coarse cells: the "keypoints" of a LoFTR frame
    preprocess_ms: float = 0.0
    extract_ms: float = 0.0


@dataclass
class MatchResult:
    """Matches between a reference image (0) and a current image (1), as numpy arrays."""
    keypoints0: np.ndarray       # K x 2 float32, original pixels of image 0
    keypoints1: np.ndarray       # K x 2 float32, original pixels of image 1
    scores: np.ndarray           # K float32 match confidence in [0, 1]
    indices0: np.ndarray         # K int64 keypoint index in image 0
    indices1: np.ndarray         # K int64 keypoint index in image 1
    num_keypoints0: int
    num_keypoints1: int
    image_size0: tuple[int, int]
    image_size1: tuple[int, int]
    exit_layer: int
    num_layers: int
    exit_reason: int
    kept0: int
    kept1: int
    timings: dict[str, float]    # preprocess_ms, extract_ms, match_ms, total_ms
    extractor: str
    matcher: str
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    refined: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    guard_fired: bool = False           # the exit guard refused a collapsed early exit
    layer_points: list[tuple[int, int]] = field(default_factory=list)
    latency_budget_ms: float = 0.0
    keypoint_cap: int = 0               # cap used for image 1's extraction
    extraction_scale: float = 1.0       # image 1's working size / original size
    off_dropped: int = 0                # matches refine_outliers 'drop' removed (found off)
    epipolar_dropped: int = 0           # a textureless path's matches its epipolar check removed

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def found(self) -> int:
        """Matches the matcher found, before refinement dropped those it found off: what
        says whether a path found the scene's correspondences (matcher 'auto')."""
        return len(self) + self.off_dropped


def filter_result(result: MatchResult, keep: np.ndarray) -> MatchResult:
    """`result` restricted to the matches in `keep` (a boolean mask), in place."""
    for name in ("keypoints0", "keypoints1", "scores", "indices0", "indices1"):
        setattr(result, name, getattr(result, name)[keep])
    if len(result.track_ids) == len(keep):
        result.track_ids = result.track_ids[keep]
    if len(result.refined) == len(keep):
        result.refined = result.refined[keep]
    return result


@dataclass
class StreamEvent:
    """Outcome of one frame pushed into a SequentialMatcher."""
    result: MatchResult | None   # matches to the previous frame; None if nothing to publish
    reference_stamp: int | None  # stamp (ns) of the reference frame of `result`
    frame_index: int
    dropped: bool = False        # the frame was discarded (it is not the new reference)
    restarted: bool = False      # tracking restarts at this frame (it is not matched)
    tracks_reset: bool = False   # `result`'s reference frame was a restart of tracking
    note: str | None = None      # why it was dropped or restarted, for the log
