"""The stereo node: left and right images in, stereo and temporal correspondences out.

Topics (relative, so namespaces and remapping apply):
  subscribes  left/image, right/image                 sensor_msgs/Image (or <topic>/compressed)
              left/camera_info, right/camera_info     sensor_msgs/CameraInfo
  publishes   correspondences/stereo     left (reference) to right (current), same stamp
              correspondences/temporal   previous left (reference) to left (current)
              debug/matches              the stereo matches drawn (only while subscribed)
              /diagnostics

Images pair by stamp in the callbacks (exactly, or within `stereo_slop_ms`); unpaired and late
images are dropped and counted, never matched with the wrong partner. A pair then takes the
same one-slot buffer and worker as the mono node.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from match_node_msgs.msg import Correspondences
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from rclpy.qos import qos_profile_sensor_data

from ..engine.image import ImageError
from ..engine.stereo import StereoMatcher, StereoSynchronizer
from .conversions import stamp_to_ns
from .node import MatchNode, main as node_main


class StereoMatchNode(MatchNode):
    def __init__(self, node_name: str = "stereo_match_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

    def _create_io(self) -> None:
        v = self.values
        self.stereo = StereoMatcher(self.pipeline, v["stereo_temporal"],
                                    v["stereo_epipolar_tolerance_px"], v["on_stamp_backwards"])
        self.stream = self.stereo.stream  # temporal tracks, budget and diagnostics
        self.sync: StereoSynchronizer[Image | CompressedImage] = StereoSynchronizer(
            int(v["stereo_slop_ms"] * 1e6))
        self.stereo_publisher = self._output("correspondences/stereo")
        self.temporal_publisher = self._output("correspondences/temporal")
        self.left_subscription = self._image_subscription(
            "left/image", lambda msg: self._on_side(msg, left=True))
        self.right_subscription = self._image_subscription(
            "right/image", lambda msg: self._on_side(msg, left=False))
        self.camera_info: dict[str, CameraInfo] = {}
        for side in ("left", "right"):
            # Best effort connects to reliable and best-effort camera drivers alike.
            self.create_subscription(CameraInfo, f"{side}/camera_info",
                                     lambda msg, side=side: self.camera_info.__setitem__(side, msg),
                                     qos_profile_sensor_data)
        self.get_logger().info(
            f"pairing {self.left_subscription.topic_name} and "
            f"{self.right_subscription.topic_name} (slop {v['stereo_slop_ms']} ms), publishing "
            f"{self.stereo_publisher.topic_name} and {self.temporal_publisher.topic_name}")

    # --- executor side ------------------------------------------------------------------------
    def _on_side(self, msg: Image | CompressedImage, left: bool) -> None:
        with self._lock:
            self.counters.received += 1
            before = self.sync.stats.unpaired_left + self.sync.stats.unpaired_right
            stamp = stamp_to_ns(msg.header.stamp)
            pair = (self.sync.add_left if left else self.sync.add_right)(stamp, msg)
            unpaired = self.sync.stats.unpaired_left + self.sync.stats.unpaired_right - before
            self.counters.dropped_unpaired += unpaired
            self.counters.unpublished_drops += unpaired
        for _ in range(unpaired):
            self.stats.dropped()
        if pair is not None and self._slot.put(((pair[1], pair[2]), time.monotonic())):
            self._count_superseded()

    # --- worker side --------------------------------------------------------------------------
    def _process(self, pair: tuple[Image | CompressedImage, Image | CompressedImage],
                 received: float) -> None:
        clock = self.pipeline.budget.clock
        started = clock()
        wait_ms = (time.monotonic() - received) * 1e3
        left_msg, right_msg = pair
        try:
            left, right = self._decode(left_msg), self._decode(right_msg)
            event = self.stereo.push(left, right, stamp_to_ns(left_msg.header.stamp),
                                     started_ms=started)
        except ImageError as error:
            self._drop("dropped_invalid", str(error))
            return
        if event.stereo is None and event.note and not event.temporal.note:
            self._drop("dropped_invalid", event.note)  # e.g. left and right differ in size
            return
        if not self._note_event(event.temporal):
            return
        temporal = event.temporal
        dropped = self._take_drops()  # the same count in both messages of this frame
        if temporal.result is not None and self._reference_header is not None:
            self._publish_result(self.temporal_publisher, temporal.result, left_msg.header,
                                 self._reference_header, Correspondences.PAIRING_TEMPORAL_LEFT,
                                 temporal.frame_index, temporal.tracks_reset, wait_ms, started,
                                 dropped)
        self._publish_result(self.stereo_publisher, event.stereo, right_msg.header,
                             left_msg.header, Correspondences.PAIRING_STEREO,
                             temporal.frame_index, temporal.restarted, wait_ms, started, dropped)
        self._publish_debug(left, right, event.stereo, right_msg.header)
        self.stream.finish_frame(clock() - started)
        self._reference_header = left_msg.header

    def _extra_diagnostics(self) -> dict[str, Any]:
        values: dict[str, Any] = {"stereo_pairs": self.sync.stats.paired,
                                  "stereo_unpaired_left": self.sync.stats.unpaired_left,
                                  "stereo_unpaired_right": self.sync.stats.unpaired_right}
        right = self.camera_info.get("right")
        if right is not None and right.p[0]:
            # ROS convention for rectified pairs: P_right[0, 3] = -fx * baseline.
            values["stereo_baseline_m"] = -right.p[3] / right.p[0]
        return values


def main(args: list[str] | None = None) -> int:
    return node_main(args, StereoMatchNode)


if __name__ == "__main__":
    sys.exit(main())
