"""Real-time plumbing without ROS: the one-slot frame buffer and rolling statistics.

The node's image callback puts each message into a LatestSlot and returns at once; a worker
thread takes the newest frame when it is free. A frame replaced before the worker took it is
stale: it is dropped and counted, so the node never queues old frames behind new ones.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
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


@dataclass
class FrameEvent:
    time: float                  # monotonic seconds
    kind: str                    # "published", "dropped" or "error"
    latency_ms: float = float("nan")
    missed: bool = False         # over the latency budget
    exit_layer: int = 0


class FrameStats:
    """Statistics over the most recent frame events, for diagnostics.

    Latency percentiles, publish rate, budget misses and the exit-layer histogram cover the
    published frames among the last `window` events; drop and error rates cover all of them.
    """

    def __init__(self, window: int = 300) -> None:
        self._events: deque[FrameEvent] = deque(maxlen=window)
        self._lock = threading.Lock()

    def published(self, latency_ms: float, missed: bool, exit_layer: int,
                  now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "published",
                             latency_ms, missed, exit_layer))

    def dropped(self, now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "dropped"))

    def error(self, now: float | None = None) -> None:
        self._add(FrameEvent(time.monotonic() if now is None else now, "error"))

    def _add(self, event: FrameEvent) -> None:
        with self._lock:
            self._events.append(event)

    def summary(self, num_layers: int = 9) -> dict[str, Any]:
        with self._lock:
            events = list(self._events)
        published = [e for e in events if e.kind == "published"]
        latencies = np.array([e.latency_ms for e in published])
        times = [e.time for e in published]
        rate = ((len(times) - 1) / (times[-1] - times[0])
                if len(times) >= 2 and times[-1] > times[0] else 0.0)
        histogram = np.bincount([e.exit_layer for e in published], minlength=num_layers + 1)

        def pct(q: float) -> float:
            return float(np.percentile(latencies, q)) if len(latencies) else float("nan")

        count = max(len(events), 1)
        return {
            "rate_hz": rate,
            "latency_p50_ms": pct(50), "latency_p95_ms": pct(95), "latency_p99_ms": pct(99),
            "budget_miss_rate": (sum(e.missed for e in published) / len(published)
                                 if published else 0.0),
            "drop_rate": sum(e.kind == "dropped" for e in events) / count,
            "error_rate": sum(e.kind == "error" for e in events) / count,
            "exit_layer_histogram": histogram[1:].tolist(),  # frames that exited at layer 1..N
            "window_frames": len(events),
        }
