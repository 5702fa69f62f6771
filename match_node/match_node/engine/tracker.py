"""Persistent track ids across consecutive frames.

A keypoint matched to a keypoint of the previous frame that already carries a track id
inherits it; otherwise the match opens a new track with a fresh id. Ids start at 1 (0 means
"no track") and are never reused within a Tracker's lifetime, even across resets, so a VO
back end can key landmarks by id without collisions.
"""
from __future__ import annotations

import numpy as np


class Tracker:
    def __init__(self) -> None:
        self._next_id = 1
        self._ids = np.zeros(0, dtype=np.uint64)  # track id per keypoint of the last frame
        self.space: str | None = None  # whose keypoints the ids refer to (e.g. a matcher)

    @property
    def next_id(self) -> int:
        return self._next_id

    def start(self, num_keypoints: int, space: str | None = None) -> None:
        """Begin tracking at a frame with no history (first frame or after a reset), whose
        keypoints come from `space`."""
        self._ids = np.zeros(num_keypoints, dtype=np.uint64)
        self.space = space

    def reset(self) -> None:
        """Forget the last frame: the next match starts new tracks (ids are never reused)."""
        self._ids = np.zeros(0, dtype=np.uint64)
        self.space = None

    def update(self, num_keypoints: int, indices0: np.ndarray, indices1: np.ndarray) -> np.ndarray:
        """Advance to a new frame with `num_keypoints` keypoints, given the matches
        (previous index, current index); return the track id of each match."""
        indices0 = np.asarray(indices0, dtype=np.int64)
        indices1 = np.asarray(indices1, dtype=np.int64)
        if indices0.size and (indices0.max() >= self._ids.size or indices0.min() < 0):
            raise IndexError("match index outside the previous frame's keypoints")
        if indices1.size and (indices1.max() >= num_keypoints or indices1.min() < 0):
            raise IndexError("match index outside the current frame's keypoints")
        ids = self._ids[indices0].copy()
        fresh = ids == 0
        count = int(fresh.sum())
        ids[fresh] = np.arange(self._next_id, self._next_id + count, dtype=np.uint64)
        self._next_id += count
        current = np.zeros(num_keypoints, dtype=np.uint64)
        current[indices1] = ids
        self._ids = current
        return ids

    def claim(self, indices: np.ndarray) -> np.ndarray:
        """Track ids of keypoints of the current frame (e.g. matched in stereo): their own id
        when tracked, else a fresh one that the next frame's matches will inherit."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.max() >= self._ids.size or indices.min() < 0):
            raise IndexError("index outside the current frame's keypoints")
        ids = self._ids[indices]
        fresh = ids == 0
        ids[fresh] = self.fresh(int(fresh.sum()))
        self._ids[indices] = ids
        return ids

    def fresh(self, count: int) -> np.ndarray:
        """`count` new ids that belong to no keypoint of the tracked frames."""
        ids = np.arange(self._next_id, self._next_id + count, dtype=np.uint64)
        self._next_id += count
        return ids
