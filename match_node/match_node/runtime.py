"""Real-time plumbing without ROS: the one-slot frame buffer and rolling statistics.

The node's image callback puts each message into a LatestSlot and returns at once; a worker
thread takes the newest frame when it is free. A frame replaced before the worker took it is
stale: it is dropped and counted, so the node never queues old frames behind new ones.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Generic, TypeVar

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


class RollingStats:
    """Latency percentiles and frame rate over the last `window` frames."""

    def __init__(self, window: int = 300) -> None:
        self._latencies: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)

    def add(self, latency_ms: float, now: float | None = None) -> None:
        self._latencies.append(latency_ms)
        self._times.append(time.monotonic() if now is None else now)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self._latencies, q)) if self._latencies else float("nan")

    def rate_hz(self) -> float:
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def summary(self) -> dict[str, Any]:
        return {"rate_hz": self.rate_hz(), "p50_ms": self.percentile(50),
                "p95_ms": self.percentile(95), "p99_ms": self.percentile(99),
                "frames": len(self._latencies)}
