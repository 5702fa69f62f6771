"""Helpers for tests that run real rclpy nodes on an isolated DDS domain."""
from __future__ import annotations

import os
import random
import threading
import time
from typing import Callable

import numpy as np

# Isolate from other runs and from a developer's own nodes: discovery is machine-wide.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402


def spin_in_background(executor) -> threading.Thread:
    """Spin `executor` on a daemon thread; stop it with `stop_spinning`."""
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return thread


def stop_spinning(executor, thread: threading.Thread, *nodes, timeout: float = 10.0) -> None:
    """Shut `executor` down, wait for its spin thread to leave, then destroy `nodes`.

    Why the order: destroying a node while another thread still spins over it was seen to hang
    a CI run for good: Fast DDS's participant teardown spun inside `rmw_destroy_node` holding the
    GIL, so not even pytest-timeout's signal could fire. If the thread does not leave in time the
    nodes are left to process exit rather than destroyed under a running executor.
    """
    executor.shutdown()
    thread.join(timeout)
    if thread.is_alive():
        import warnings
        warnings.warn(f"the spin thread did not stop within {timeout:.0f} s; "
                      f"{len(nodes)} node(s) left to process exit", RuntimeWarning)
        return
    for node in nodes:
        node.destroy_node()


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str = "camera",
              encoding: str = "bgr8", row_padding: int = 0) -> Image:
    """An Image message from an RGB array, in `encoding`, with optional row padding."""
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    if encoding == "bgr8":
        image = np.ascontiguousarray(image[..., ::-1])
    h, w = image.shape[:2]
    row = image.reshape(h, w * int(np.prod(image.shape[2:]))).view(np.uint8)
    step = row.shape[1] + row_padding
    data = np.zeros((h, step), np.uint8)
    data[:, :row.shape[1]] = row
    msg.height, msg.width, msg.encoding, msg.step = h, w, encoding, step
    msg.data = data.tobytes()
    return msg


class Harness:
    """A publisher of images and a collector of correspondences, spun in the background."""

    def __init__(self, image_topic: str, output_topic: str, compressed: bool = False) -> None:
        from match_node_msgs.msg import Correspondences

        self.node = Node(f"test_harness_{os.getpid()}_{random.randint(0, 1 << 30)}")
        self.publisher = self.node.create_publisher(
            CompressedImage if compressed else Image, image_topic, qos_profile_sensor_data)
        self.received: list = []
        self._lock = threading.Lock()
        self.subscription = self.node.create_subscription(
            Correspondences, output_topic, self._on_result,
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.diagnostics: list = []
        self.diagnostics_subscription = self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = MultiThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = spin_in_background(self.executor)

    def _on_result(self, msg) -> None:
        with self._lock:
            self.received.append(msg)

    def _on_diagnostics(self, msg) -> None:
        with self._lock:
            self.diagnostics.append(msg)

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def wait_for_subscriber(self, timeout: float = 20.0) -> None:
        """Wait until the node is up and both ends of the image topic have matched.

        Discovery is asymmetric: the publisher may see the subscriber before the subscriber
        has matched the publisher, and best-effort samples sent in between are lost. The
        node's first diagnostics message shows it is spinning; a short pause covers the rest.
        """
        wait_until(lambda: self.publisher.get_subscription_count() > 0, timeout,
                   "the node never subscribed")
        wait_until(lambda: len(self.diagnostics) > 0, timeout, "diagnostics from the node")
        time.sleep(0.5)

    def close(self) -> None:
        stop_spinning(self.executor, self.thread, self.node)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s: {what}")


def stop_process(process, timeout: float = 20.0) -> str:
    """Interrupt a node or launch process like Ctrl-C; kill it if it does not stop in time.
    Returns its captured output, if it was started with stdout=PIPE."""
    import signal
    import subprocess

    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""
