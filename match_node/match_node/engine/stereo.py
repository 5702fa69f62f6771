"""Stereo: pairing left and right images by stamp, and matching them left to right.

`StereoSynchronizer` pairs the two image streams by stamp, exactly or within a slop, and drops
(and counts) what cannot be paired, never matching an image with the wrong partner.
`StereoMatcher` processes one synchronised pair: the left image goes through a
SequentialMatcher (temporal matches, left t-1 to left t, with track ids), the right image is
extracted once and matched to the left one. Stereo matches carry the track id of their left
keypoint, so a point seen in stereo keeps one id over time. For rectified pairs, an epipolar
filter keeps matches on the same row (within a tolerance) with positive disparity.
No ROS imports.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from .image import ImageError
from .pipeline import Pipeline
from .results import MatchResult, StreamEvent, filter_result
from .stream import SequentialMatcher

T = TypeVar("T")


def epipolar_mask(left_xy: np.ndarray, right_xy: np.ndarray, tolerance_px: float,
                  min_disparity: float = 0.0) -> np.ndarray:
    """Matches consistent with a rectified pair: same row within `tolerance_px`, and the
    right point left of the left point (disparity x_left - x_right > min_disparity)."""
    if len(left_xy) == 0:
        return np.zeros(0, dtype=bool)
    same_row = np.abs(left_xy[:, 1] - right_xy[:, 1]) <= tolerance_px
    return same_row & (left_xy[:, 0] - right_xy[:, 0] > min_disparity)


@dataclass
class SyncStats:
    paired: int = 0
    unpaired_left: int = 0     # left images dropped without a right partner
    unpaired_right: int = 0


class StereoSynchronizer(Generic[T]):
    """Pairs left and right messages by stamp (ns).

    With `slop_ns` = 0 stamps must be equal; otherwise the closest partner within the slop is
    taken. An image older than the newest emitted pair, or pushed out of the short queue,
    can never be paired any more and is dropped and counted. Pairs come out in stamp order.
    """

    def __init__(self, slop_ns: int = 0, queue_size: int = 10) -> None:
        self.slop_ns = int(slop_ns)
        self.queue_size = queue_size
        self._left: deque[tuple[int, T]] = deque()
        self._right: deque[tuple[int, T]] = deque()
        self._last_paired = -1
        self.stats = SyncStats()

    def add_left(self, stamp_ns: int, item: T) -> tuple[int, T, T] | None:
        return self._add(self._left, stamp_ns, item, is_left=True)

    def add_right(self, stamp_ns: int, item: T) -> tuple[int, T, T] | None:
        return self._add(self._right, stamp_ns, item, is_left=False)

    def _drop(self, is_left: bool, count: int = 1) -> None:
        if is_left:
            self.stats.unpaired_left += count
        else:
            self.stats.unpaired_right += count

    def _add(self, queue: deque, stamp_ns: int, item: T, is_left: bool):
        if stamp_ns <= self._last_paired:
            self._drop(is_left)  # late: its partner's time has passed
            return None
        queue.append((stamp_ns, item))
        if len(queue) > self.queue_size:
            queue.popleft()
            self._drop(is_left)
        return self._try_pair()

    def _try_pair(self) -> tuple[int, T, T] | None:
        best = None
        for i, (stamp_l, _) in enumerate(self._left):
            for j, (stamp_r, _) in enumerate(self._right):
                gap = abs(stamp_l - stamp_r)
                if gap <= self.slop_ns and (best is None or gap < best[0]):
                    best = (gap, i, j)
        if best is None:
            return None
        _, i, j = best
        stamp_l, left = self._left[i]
        stamp_r, right = self._right[j]
        # Everything older than the pair can no longer be paired in order: drop it.
        for _ in range(i):
            self._left.popleft()
        for _ in range(j):
            self._right.popleft()
        self._drop(True, i)
        self._drop(False, j)
        self._left.popleft()
        self._right.popleft()
        self._last_paired = max(stamp_l, stamp_r)
        self.stats.paired += 1
        return stamp_l, left, right


@dataclass
class StereoEvent:
    stereo: MatchResult | None       # left (reference, image 0) to right (current, image 1)
    temporal: StreamEvent            # left t-1 to left t (result None on the first frame)
    note: str | None = None


class StereoMatcher:
    """Left-right matching of synchronised pairs, plus left temporal matching."""

    def __init__(self, pipeline: Pipeline, temporal: bool = True,
                 epipolar_tolerance_px: float = 0.0, on_stamp_backwards: str = "reset") -> None:
        self.pipeline = pipeline
        self.temporal = temporal
        self.epipolar_tolerance_px = epipolar_tolerance_px
        self.stream = SequentialMatcher(pipeline, on_stamp_backwards)

    def push(self, left: np.ndarray, right: np.ndarray, stamp_ns: int,
             started_ms: float | None = None) -> StereoEvent:
        """Process one pair. Raises ImageError for unusable images, a left and a right image
        of different sizes included (the pair is then not pushed into the stream)."""
        if left.shape != right.shape:
            raise ImageError(f"left {left.shape[1]}x{left.shape[0]} and right "
                             f"{right.shape[1]}x{right.shape[0]} differ in size; dropped")
        clock = self.pipeline.budget.clock
        start = clock() if started_ms is None else started_ms
        if not self.temporal:
            self.stream.reset()  # every pair stands alone: no temporal matching
        temporal = self.stream.push(left, stamp_ns, started_ms=start)
        if temporal.dropped:
            return StereoEvent(None, temporal, temporal.note)
        stereo = self.stream.match_view(right, start)
        # Right keypoints are extracted once per pair, their time is this pair's.
        stereo.timings["total_ms"] = clock() - start
        if self.epipolar_tolerance_px > 0:
            filter_result(stereo, epipolar_mask(stereo.keypoints0, stereo.keypoints1,
                                                self.epipolar_tolerance_px))
        self.stream.track_view(stereo)  # after the filter: only kept matches claim ids
        return StereoEvent(stereo, temporal)
