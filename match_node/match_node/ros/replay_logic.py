"""The replay tool's decisions and waits, without ROS (ros/replay.py is the program).

What it waits for before it starts (`not_ready`, `wait_until_ready`), the flow-control topic
of a bag's image topics (`default_wait_topic`) and whether the first frame of a pass is
acknowledged on it, the acknowledgements themselves (`Acks`, read from the CDR header stamp)
and the stop request that ends every wait (`Stop`, `Interrupted`). Only the standard library
and the bag tools: this runs and is tested where rclpy is not installed.
"""
from __future__ import annotations

import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..bags import rosbag as bags

POLL_S = 0.05  # granularity of every wait: how soon a stop request is seen


class Stop:
    """A stop request (Ctrl-C, SIGTERM). The signal handler only sets a flag: no exception is
    raised into whatever the main thread is doing, and a second signal changes nothing. Every
    wait of the replay polls it."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def handler(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.signal_name = signal.Signals(signum).name
        self.requested = True

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self.handler)

    def uninstall(self, exiting: bool) -> None:
        """Put the previous handlers back; when the process is `exiting`, ignore SIGINT
        instead: the interpreter resets Python-level handlers to the default while it
        finalises, and a late Ctrl-C (the second of two) would then kill the process with
        exit -2 after it had ended cleanly."""
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if exiting and signum == signal.SIGINT
                          else previous)

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False (early) when a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(POLL_S, remaining))
        return False


class Interrupted(Exception):
    """Raised by the replay's own waits (never by a signal handler) when a stop was requested."""


def header_stamp_ns(data: bytes) -> int:
    """header.stamp of a serialized message whose first field is a std_msgs/Header (Image,
    CompressedImage, CameraInfo, Correspondences), read from the CDR bytes directly."""
    if len(data) < 12:
        raise ValueError("message too short for a header")
    little = data[1] & 1  # encapsulation: 0x0001 CDR little-endian, 0x0000 big-endian
    sec, nanosec = struct.unpack("<iI" if little else ">iI", data[4:12])
    return sec * 1_000_000_000 + nanosec


def stereo_namespace(image_topics: Iterable[str]) -> str | None:
    """The rig namespace of a stereo pair of image topics (`/rig/left/image_raw` and
    `/rig/right/image_raw`, or their /compressed) -> '/rig'; None when they are not a pair."""
    cameras = sorted({t[: -len("/compressed")] if t.endswith("/compressed") else t
                      for t in image_topics})
    if len(cameras) != 2:
        return None
    sides = []
    for camera in cameras:
        parts = camera.rstrip("/").split("/")
        if len(parts) < 3 or parts[-2] not in ("left", "right"):
            return None
        sides.append(("/".join(parts[:-2]), parts[-2], parts[-1]))
    (ns_a, side_a, name_a), (ns_b, side_b, name_b) = sides
    if ns_a != ns_b or name_a != name_b or {side_a, side_b} != {"left", "right"}:
        return None
    return ns_a


def default_wait_topic(image_topics: Iterable[str]) -> str:
    """Flow control topic when none is given: the stereo node's `<rig>/correspondences/stereo`
    for a left/right pair (one message per pair), else the mono node's
    `<camera namespace>/correspondences` of the first image topic."""
    topics = sorted(image_topics)
    rig = stereo_namespace(topics)
    if rig is not None:
        return f"{rig}/correspondences/stereo"
    return bags.correspondences_topic_for(topics[0])


def first_frame_acked(wait_topic: str) -> bool:
    """Whether the first frame of a pass gives a message on `wait_topic`: the stereo node's
    stereo output does (each pair is matched on its own), a temporal output does not."""
    return wait_topic.rstrip("/").endswith("/correspondences/stereo")


def not_ready(image_subscribers: dict[str, int], wait_topic: str | None,
              wait_publishers: int, other_subscribers: dict[str, int]) -> list[str]:
    """What the replay still waits for before it starts, in words (empty: ready).

    image_subscribers: matched subscriptions of each image publisher; wait_topic and
    wait_publishers: the flow control / readiness topic (None: not waited for) and its
    publishers; other_subscribers: subscriptions, not counting this tool's own, of each
    --wait-for-subscriber topic.
    """
    out = [f"a subscriber on {t}" for t, n in sorted(image_subscribers.items()) if n <= 0]
    if wait_topic and wait_publishers <= 0:
        out.append(f"a publisher of {wait_topic}")
    out += [f"a subscriber on {t}" for t, n in sorted(other_subscribers.items())
            if n <= 0 and t not in image_subscribers]
    return out


def wait_until_ready(missing: Callable[[], list[str]], seconds: float, stop: Stop,
                     log: Callable[[str], None], settle_s: float = 0.5) -> list[str]:
    """Poll `missing()` until it is empty, at most `seconds`; returns what is still missing
    (empty: ready). Raises Interrupted on a stop request. After success, waits `settle_s`:
    discovery is asymmetric, the subscriber may not have matched this publisher yet, and
    best-effort samples sent in between are lost."""
    deadline = time.monotonic() + seconds
    first = missing()
    if first:
        log(f"waiting up to {seconds:g} s for {', '.join(first)}")
    now = first
    while now:
        if time.monotonic() >= deadline:
            return now
        if not stop.sleep(POLL_S):
            raise Interrupted
        now = missing()
    if first and not stop.sleep(settle_s):
        raise Interrupted
    return []


@dataclass
class Acks:
    """Stamps seen on the wait topic, for flow control."""
    stamps: set[int] = field(default_factory=set)
    condition: threading.Condition = field(default_factory=threading.Condition)

    def add(self, data: bytes) -> None:
        try:
            stamp = header_stamp_ns(data)
        except ValueError:
            return
        with self.condition:
            self.stamps.add(stamp)
            self.condition.notify_all()

    def clear(self) -> None:
        with self.condition:
            self.stamps.clear()

    def wait(self, stamp: int, timeout: float, stop: Stop | None = None) -> bool:
        """True when `stamp` arrived within `timeout`; Interrupted on a stop request."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while stamp not in self.stamps:
                if stop is not None and stop.requested:
                    raise Interrupted
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.condition.wait(min(remaining, POLL_S))
            return True
