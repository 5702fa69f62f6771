"""Real-time plumbing of the node, without ROS: the one-slot frame buffer and the health.

The node's image callback puts each message into a LatestSlot and returns at once; a worker
thread takes the newest frame when it is free. A frame replaced before the worker took it is
superseded: it is skipped and counted, so the node never queues old frames behind new ones.
`assess_health` judges the frame runner's statistics (engine/framelog.py's FrameStats).
"""
from __future__ import annotations

import threading
from typing import Any, Generic, Iterable, Mapping, TypeVar

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
