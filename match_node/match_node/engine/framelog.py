"""One record per frame (`FrameLog`) and the rolling statistics over them (`FrameStats`).

The frame runner (runner.py) fills one FrameLog for every frame a front end hands it, whatever
became of it; the node's diagnostics summarise them with FrameStats, the offline runner writes
its per-frame lines and its JSON summary from them. No ROS imports.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# What became of a frame (FrameLog.status).
TAKEN = "taken"            # still in progress
MATCHED = "matched"        # matched to its predecessor and published
FIRST = "first"            # the first frame of the stream: nothing to match it to
RESTARTED = "restarted"    # tracking restarted at it (stamp jump, size change, ...)
DROPPED = "dropped"        # taken but refused (FrameLog.reason says why)
SUPERSEDED = "superseded"  # replaced in the node's one-slot buffer before it was taken
ERROR = "error"            # failed with an exception (e.g. out of memory)


@dataclass
class Published:
    """One message published for a frame (a stereo frame publishes two)."""
    time: float          # monotonic seconds when it was out
    latency_ms: float    # from taking the frame to the message being out
    missed: bool         # over the latency budget
    exit_layer: int


@dataclass
class FrameLog:
    """What happened to one frame: the one statistics record of the node's diagnostics, the
    offline summary and the per-frame log lines.

    `matches` to `timings` describe the frame's match to its predecessor (sequential, or the
    left camera's temporal one in stereo) when it was published; `precision` and
    `median_error_px` are filled by a caller that has ground truth.
    """
    status: str                       # one of the statuses above
    frame_index: int = -1             # the stream's index for the frame (-1: not known)
    stamp_ns: int = 0
    frame_id: str = ""
    reason: str = ""                  # DROPPED: "invalid", "stamp" or "unpaired"
    note: str = ""                    # why it was dropped or restarted, or what was odd
    ended: float = float("nan")       # monotonic seconds when its outcome was known
    published: list[Published] = field(default_factory=list)
    matches: int | None = None
    keypoints: int | None = None      # the current image's keypoints
    exit_layer: int | None = None
    exit_reason: int | None = None
    timings: dict[str, float] = field(default_factory=dict)  # preprocess, extract, match, total
    precision: float | None = None
    median_error_px: float | None = None


@dataclass
class _Event:
    time: float                  # monotonic seconds
    kind: str                    # "published", DROPPED or ERROR
    latency_ms: float = float("nan")
    missed: bool = False
    exit_layer: int = 0


class FrameStats:
    """Statistics over the most recent frames, for diagnostics.

    A frame taken ends published, dropped (invalid image, stamp policy, stereo image without
    partner) or in an error; a frame the node never took was superseded: replaced in the
    one-slot buffer by a newer frame before the worker was free, by design whenever the input
    is faster than the node, not a fault. Superseded frames are kept apart so that a node
    running at its own speed behind a fast camera is not reported as failing. A frame at
    which tracking restarted and nothing was published leaves no trace here.

    Latency percentiles, budget misses and the exit-layer histogram cover the published
    messages among the last `window` outcomes (one per message, drop or error); the failure
    shares cover those outcomes; the superseded share covers the last `window` frames
    received; the rate covers the last `rate_frames` messages published.
    """

    def __init__(self, window: int = 300, rate_frames: int = 30) -> None:
        self._taken: deque[_Event] = deque(maxlen=window)
        self._received: deque[bool] = deque(maxlen=window)  # True: superseded
        self._rate_frames = max(2, rate_frames)
        self._lock = threading.Lock()

    def add(self, record: FrameLog) -> None:
        """Count a finished frame."""
        with self._lock:
            if record.status == SUPERSEDED:
                self._received.append(True)
                return
            events = [_Event(p.time, "published", p.latency_ms, p.missed, p.exit_layer)
                      for p in record.published]
            if record.status in (DROPPED, ERROR):
                ended = time.monotonic() if math.isnan(record.ended) else record.ended
                events.append(_Event(ended, record.status))
            self._taken.extend(events)
            self._received.extend([False] * len(events))

    def summary(self, num_layers: int = 9, now: float | None = None) -> dict[str, Any]:
        """Rates and percentiles at monotonic time `now` (default: the current time)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            taken = list(self._taken)
            received = list(self._received)
        published = [e for e in taken if e.kind == "published"]
        latencies = np.array([e.latency_ms for e in published])
        histogram = np.bincount([e.exit_layer for e in published], minlength=num_layers + 1)

        def pct(q: float) -> float:
            return float(np.percentile(latencies, q)) if len(latencies) else float("nan")

        count = max(len(taken), 1)
        invalid = sum(e.kind == DROPPED for e in taken) / count
        errors = sum(e.kind == ERROR for e in taken) / count
        return {
            "rate_hz": publish_rate([e.time for e in published[-self._rate_frames:]], now),
            "latency_p50_ms": pct(50), "latency_p95_ms": pct(95), "latency_p99_ms": pct(99),
            "budget_miss_rate": (sum(e.missed for e in published) / len(published)
                                 if published else 0.0),
            "superseded_rate": sum(received) / max(len(received), 1),
            "invalid_rate": invalid,
            "error_rate": errors,
            "failure_rate": invalid + errors,
            "exit_layer_histogram": histogram[1:].tolist(),  # frames that exited at layer 1..N
            "window_frames": len(taken),
            "window_published": len(published),
        }


def publish_rate(times: list[float], now: float) -> float:
    """Frames per second over `times` (ascending), decaying once publishing stalls.

    The rate over the frames alone would stay at its last value forever when the input or
    the node stops; the time since the last frame counts once it exceeds the mean interval,
    so a stalled stream's rate falls towards 0. Fewer than two frames: 0 (not measurable).
    """
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    span = times[-1] - times[0]
    interval = span / (len(times) - 1)
    overdue = max(0.0, (now - times[-1]) - interval)
    return (len(times) - 1) / (span + overdue)
