"""The stereo node over real DDS: pairing, both correspondence sets, unpaired drops."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")

from rosutil import image_msg, spin_in_background, stop_spinning, wait_until  # noqa: E402  (sets the DDS domain)

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402




@pytest.fixture(scope="module")
def middlebury():
    from skimage.data import stereo_motorcycle
    left, right, disparity = stereo_motorcycle()
    size = (left.shape[1] // 2, left.shape[0] // 2)  # keep the test light: half resolution
    return (cv2.resize(left, size, interpolation=cv2.INTER_AREA),
            cv2.resize(right, size, interpolation=cv2.INTER_AREA),
            cv2.resize(disparity, size, interpolation=cv2.INTER_NEAREST) / 2)


def test_stereo_node_publishes_stereo_and_temporal(ros, middlebury):
    from match_node.ros.stereo_node import StereoMatchNode
    from match_node_msgs.msg import Correspondences

    node = StereoMatchNode(namespace=f"/s{os.getpid()}", parameter_overrides=[
        Parameter("device", value="cpu"), Parameter("max_keypoints", value=512),
        Parameter("allow_download", value=False),
        Parameter("stereo_epipolar_tolerance_px", value=2.0)])
    ns = node.get_namespace()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    harness = Node(f"stereo_harness_{os.getpid()}")
    executor.add_node(harness)
    thread = spin_in_background(executor)
    received = {"stereo": [], "temporal": []}
    for kind in received:
        harness.create_subscription(Correspondences, f"{ns}/correspondences/{kind}",
                                    received[kind].append,
                                    QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    left_pub = harness.create_publisher(Image, f"{ns}/left/image", qos_profile_sensor_data)
    right_pub = harness.create_publisher(Image, f"{ns}/right/image", qos_profile_sensor_data)
    try:
        wait_until(lambda: left_pub.get_subscription_count() and right_pub.get_subscription_count(),
                   20, "the node's subscriptions")
        import time
        time.sleep(1.0)
        left, right, disparity = middlebury
        for frame, shift in enumerate((0, 2)):
            stamp = (frame + 1) * 10**9
            l_img, r_img = (np.ascontiguousarray(np.roll(i, shift, axis=1)) for i in (left, right))
            right_pub.publish(image_msg(r_img, stamp, "right_optical"))  # order does not matter
            left_pub.publish(image_msg(l_img, stamp, "left_optical"))
            wait_until(lambda: len(received["stereo"]) == frame + 1, 60, f"stereo message {frame}")
        # A left image whose right partner is 5 ms off is never paired (slop 0) ...
        left_pub.publish(image_msg(left, 3 * 10**9, "left_optical"))
        right_pub.publish(image_msg(right, 3 * 10**9 + 5_000_000, "right_optical"))
        # ... and is dropped and counted once a later pair goes through.
        right_pub.publish(image_msg(right, 4 * 10**9, "right_optical"))
        left_pub.publish(image_msg(left, 4 * 10**9, "left_optical"))
        wait_until(lambda: len(received["stereo"]) == 3, 60, "the third stereo message")
        assert node.runner.counters.dropped_unpaired == 2
        assert received["stereo"][2].header.stamp.sec == 4
        assert received["stereo"][2].dropped_frames == 2

        first = received["stereo"][0]
        assert first.pairing == Correspondences.PAIRING_STEREO
        assert (first.header.frame_id, first.reference_frame_id) == ("right_optical", "left_optical")
        assert first.header.stamp == first.reference_stamp
        ref = np.stack([first.reference_x, first.reference_y], 1)
        cur = np.stack([first.current_x, first.current_y], 1)
        x, y = np.round(ref).astype(int).T
        truth = disparity[y, x]
        valid = np.isfinite(truth)
        error = np.abs((ref[:, 0] - cur[:, 0]) - truth)[valid]
        assert len(error) > 100 and (error < 2).mean() > 0.8
        assert np.all(np.abs(ref[:, 1] - cur[:, 1]) <= 2.0)

        wait_until(lambda: len(received["temporal"]) >= 1, 30, "a temporal message")
        temporal = received["temporal"][0]
        assert temporal.pairing == Correspondences.PAIRING_TEMPORAL_LEFT
        assert (temporal.reference_stamp.sec, temporal.header.stamp.sec) == (1, 2)
        # Stereo ids continue as temporal tracks: most temporal ids were born in stereo.
        assert len(set(temporal.track_id) & set(first.track_id)) > 50
    finally:
        stop_spinning(executor, thread, harness, node)


class _Stop(BaseException):
    """Not an Exception: the only kind of error that can still end the worker thread."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_stereo_node_checks_parameters_remaps_compressed_topics_and_reports_its_worker(ros):
    """Issue 11, items 1 and 9, for the stereo node (it inherits the mono node's callbacks,
    worker and subscriptions): conflicting changes are refused, remapping left/image and
    right/image moves their compressed topics, and a stopped worker is an ERROR."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from match_node.ros.stereo_node import StereoMatchNode

    left, right = f"/rig_{os.getpid()}/left/image_rect", f"/rig_{os.getpid()}/right/image_rect"
    node = StereoMatchNode(
        namespace=f"/s2_{os.getpid()}",
        cli_args=["--ros-args", "-r", f"left/image:={left}", "-r", f"right/image:={right}"],
        parameter_overrides=[Parameter("device", value="cpu"), Parameter("max_keypoints", value=256),
                             Parameter("allow_download", value=False),
                             Parameter("image_transport", value="compressed")])
    try:
        assert node.left_subscription.topic_name == f"{left}/compressed"
        assert node.right_subscription.topic_name == f"{right}/compressed"

        result = node.set_parameters([Parameter("texture_low_keypoints", value=300)])[0]
        assert not result.successful and "texture_high_keypoints" in result.reason
        assert node.get_parameter("texture_low_keypoints").value == 150
        assert node.set_parameters([Parameter("stereo_slop_ms", value=5.0)])[0].successful is False

        assert node.diagnostic_status().level == DiagnosticStatus.OK

        def stop(timeout=None):
            raise _Stop("injected")

        node._slot.take = stop
        wait_until(lambda: not node._worker.is_alive(), 10, "the worker to stop")
        status = node.diagnostic_status()
        assert status.level == DiagnosticStatus.ERROR and status.message.startswith("worker stopped")
    finally:
        node.destroy_node()
