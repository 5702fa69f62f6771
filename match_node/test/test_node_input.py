"""The real node over real DDS, fed input a sender controls (issue 11, items 4-6): a small
compressed image that declares a huge one, a malformed header stamp, a far-future stamp under
`on_stamp_backwards: drop`, and an extractor/matcher pair that cannot work."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")

from rosutil import Harness, spin_in_background, stop_spinning, wait_until  # noqa: E402  (sets the DDS domain)

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from match_node.engine import image as image_module  # noqa: E402
from match_node.groundtruth.planar import make_sequence  # noqa: E402

from test_untrusted_input import constant_png  # noqa: E402

SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND
YEAR_2038 = (2**31 - 1) * SECOND


@pytest.fixture(scope="module")
def frames():
    return make_sequence("coffee", num_frames=5, size=(320, 240), step=5).frames


@pytest.fixture
def make_node(ros):
    from match_node.ros.node import MatchNode

    created = []

    def make(**overrides):
        parameters = {"device": "cpu", "max_keypoints": 256, "allow_download": False,
                      "refine": "none", **overrides}
        node = MatchNode(namespace=f"/input{len(created)}_{os.getpid()}",
                         parameter_overrides=[Parameter(k, value=v) for k, v in parameters.items()])
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        created.append((node, executor, spin_in_background(executor)))
        return node

    yield make
    for node, executor, thread in created:
        stop_spinning(executor, thread, node)


def compressed(data: bytes, stamp_ns: int, nanosec: int | None = None) -> CompressedImage:
    msg = CompressedImage(format="png")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, SECOND)
    if nanosec is not None:
        msg.header.stamp.nanosec = nanosec
    msg.data = data
    return msg


def png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_untrusted_input_is_dropped_or_restarts_and_the_node_goes_on(make_node, frames,
                                                                    monkeypatch):
    decoded_sizes: list[int] = []
    imdecode = image_module.cv2.imdecode

    def recording_imdecode(buffer, flags):
        decoded_sizes.append(len(buffer))
        return imdecode(buffer, flags)

    monkeypatch.setattr(image_module.cv2, "imdecode", recording_imdecode)
    node = make_node(image_transport="compressed", on_stamp_backwards="drop")
    assert node.values["max_input_pixels"] == 16_777_216
    assert node.runner.stream.max_stamp_jump_s == 10
    ns = node.get_namespace()
    harness = Harness(f"{ns}/image/compressed", f"{ns}/correspondences", compressed=True)
    counters = node.runner.counters
    handled = lambda: counters.processed + counters.dropped_invalid  # noqa: E731

    def send(msg: CompressedImage) -> None:
        before = handled()
        harness.publisher.publish(msg)
        wait_until(lambda: handled() > before, 60, "the frame to be handled")

    try:
        harness.wait_for_subscriber()
        send(compressed(png(frames[0]), NOW))
        bomb = constant_png(20000, 20000)  # 394 KB declaring 400 M pixels
        send(compressed(bomb, NOW + SECOND // 10))
        assert counters.dropped_invalid == 1 and len(bomb) not in decoded_sizes
        send(compressed(png(frames[1]), NOW + 2 * SECOND // 10, nanosec=1_500_000_000))
        assert counters.dropped_invalid == 2
        send(compressed(png(frames[1]), NOW + 3 * SECOND // 10))
        wait_until(lambda: harness.count() == 1, 60, "the first correspondences")
        assert harness.received[0].dropped_frames == 2 and len(harness.received[0].confidence) > 50

        # One frame from a broken clock (2038), then the right time again: two restarts,
        # and the next frame is matched, not dropped as "older than 2038".
        send(compressed(png(frames[2]), YEAR_2038))
        send(compressed(png(frames[3]), NOW + 4 * SECOND // 10))
        send(compressed(png(frames[4]), NOW + 5 * SECOND // 10))
        wait_until(lambda: harness.count() == 2, 60, "correspondences after the bad stamp")
        message = harness.received[1]
        assert message.tracks_reset and len(message.confidence) > 50
        assert (message.reference_stamp.sec, message.reference_stamp.nanosec) == divmod(
            NOW + 4 * SECOND // 10, SECOND)
        assert counters.dropped_stamp == 0 and counters.resets == 3  # first frame + 2 jumps
        assert counters.dropped_invalid == 2 and counters.published == 2
    finally:
        harness.close()


def test_combination_that_cannot_work_stops_the_node_at_start(ros):
    from match_node.params import ParameterError
    from match_node.ros.node import MatchNode
    with pytest.raises(ParameterError, match="extractor 'aliked-t16' gives 64-d descriptors"):
        MatchNode(namespace=f"/t16_{os.getpid()}", parameter_overrides=[
            Parameter("device", value="cpu"), Parameter("allow_download", value=False),
            Parameter("extractor", value="aliked-t16"), Parameter("matcher", value="lightglue")])
