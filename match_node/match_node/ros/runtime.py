"""Real-time plumbing without ROS: the one-slot frame buffer, rolling statistics, health.

The node's image callback puts each message into a LatestSlot and returns at once; a worker
thread takes the newest frame when it is free. A frame replaced before the worker took it is
superseded: it is skipped and counted, so the node never queues old frames behind new ones.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Mapping, TypeVar

import numpy as np

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item: put() replaces (and counts) an item nobody took yet."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._closed = False
        self.replaced = 0

    def put(self, item: T) -> bool:
        """Store `item`; return True if it replaced an untaken (now dropped) item."""
        with self._condition:
            replaced = self._has_item
            if replaced:
                self.replaced += 1
            self._item, self._has_item = item, True
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for an item and remove it; None on timeout or when closed."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._has_item or self._closed, timeout):
                return None
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


# Levels of diagnostic_msgs/DiagnosticStatus, so the health logic needs no ROS import.
OK, WARN, ERROR = 0, 1, 2


@dataclass
class FrameEvent:
    time: float                  # monotonic seconds
    kind: str                    # "published", "superseded", "dropped" or "error"
    latency_ms: float = float("nan")
    missed: bool = False         # over the latency budget
    exit_layer: int = 0


class FrameStats:
    """Statistics over the most recent frame events, for diagnostics.

    A frame ends in one of four ways:
      published   matched and published;
      superseded  replaced in the one-slot buffer by a newer frame before the worker was
                  free: by design whenever the input is faster than the node, not a fault;
      dropped     taken but refused: invalid image, stamp policy, stereo image without partner;
      error       taken and failed (an exception, e.g. out of memory).
    Superseded frames are kept apart so that a node running at its own speed behind a fast
    camera is not reported as failing. Latency percentiles, budget misses and the exit-layer
    histogram cover the published frames among the last `window` frames taken; the failure
    shares cover those taken frames; the superseded share covers the last `window` frames
    received; the rate covers the last `rate_frames` published frames.
    """

    def __init__(self, window: int = 300, rate_frames: int = 30) -> None:
        self._taken: deque[FrameEvent] = deque(maxlen=window)
        self._received: deque[bool] = deque(maxlen=window)  # True: superseded
        self._rate_frames = max(2, rate_frames)
        self._lock = threading.Lock()

    def published(self, latency_ms: float, missed: bool, exit_layer: int,
                  now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "published",
                             latency_ms, missed, exit_layer))

    def superseded(self) -> None:
        # No time needed: superseded frames enter only the superseded share.
        with self._lock:
            self._received.append(True)

    def dropped(self, now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "dropped"))

    def error(self, now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "error"))

    def _add(self, event: FrameEvent) -> None:
        with self._lock:
            self._taken.append(event)
            self._received.append(False)

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
        invalid = sum(e.kind == "dropped" for e in taken) / count
        errors = sum(e.kind == "error" for e in taken) / count
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


def assess_health(summary: Mapping[str, Any], thresholds: Mapping[str, float], *,
                  budget_ms: float = 0.0, received: int = 0, last_error: str = "",
                  worker_stopped: str | None = None,
                  warnings: Iterable[str] = ()) -> tuple[int, str]:
    """The node's diagnostic level (OK, WARN, ERROR) and message from its statistics.

    `thresholds` holds the diagnostics_* parameters and expected_rate_hz. Superseded frames
    never raise the level by themselves: they are how the node keeps up with a faster camera.
    What does: a stopped worker, budget misses, frames taken that failed, errors, and a publish
    rate below a share of `expected_rate_hz` (when set and measurable), and any `warnings`
    (e.g. the CUDA device fell back to the CPU).
    """
    problems: list[tuple[int, str]] = []
    if worker_stopped is not None:
        problems.append((ERROR, f"worker stopped: {worker_stopped}" if worker_stopped
                         else "worker stopped"))
    miss = summary["budget_miss_rate"]
    if budget_ms > 0 and miss >= thresholds["diagnostics_miss_warn"]:
        level = ERROR if miss >= thresholds["diagnostics_miss_error"] else WARN
        problems.append((level, f"{miss:.0%} of frames over the {budget_ms:.0f} ms budget"))
    failed = summary["failure_rate"]
    if failed >= thresholds["diagnostics_drop_warn"]:
        level = ERROR if failed >= thresholds["diagnostics_drop_error"] else WARN
        problems.append((level, f"{failed:.0%} of frames taken failed (invalid input, "
                                f"unusable stamp or pairing, errors)"))
    if summary["error_rate"] > 0:
        problems.append((WARN, f"errors: {last_error}"))
    expected = thresholds.get("expected_rate_hz", 0.0)
    # The rate is measurable from the second published frame on.
    if expected > 0 and summary.get("window_published", 0) >= 2:
        rate = summary["rate_hz"]
        if rate < thresholds["diagnostics_rate_warn"] * expected:
            level = ERROR if rate < thresholds["diagnostics_rate_error"] * expected else WARN
            problems.append((level, f"publishing {rate:.2f} Hz, expected {expected:g} Hz"))
    problems += [(WARN, text) for text in warnings if text]
    if problems:
        return max(level for level, _ in problems), "; ".join(text for _, text in problems)
    if received == 0:
        return OK, "waiting for images"
    superseded = summary["superseded_rate"]
    if superseded > 0:
        return OK, f"matching; {superseded:.0%} of frames superseded (input faster than the node)"
    return OK, "matching"
