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
same one-slot buffer and worker as the mono node, and the engine's StereoRunner (runner.py)
does the rest.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from match_node_msgs.msg import Correspondences
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..engine.runner import StereoRunner, Step
from .conversions import stamp_to_ns
from .node import MatchNode, main as node_main

Pair = tuple[Image | CompressedImage, Image | CompressedImage]  # left, right


class StereoMatchNode(MatchNode):
    def __init__(self, node_name: str = "stereo_match_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

    def _create_runner(self) -> StereoRunner[Image | CompressedImage]:
        v = self.values
        return StereoRunner(self.pipeline, v["stereo_temporal"],
                            v["stereo_epipolar_tolerance_px"], v["on_stamp_backwards"],
                            v["max_input_pixels"], int(v["stereo_slop_ms"] * 1e6))

    def _create_io(self) -> None:
        v = self.values
        self.stereo_publisher = self._output("correspondences/stereo")
        self.temporal_publisher = self._output("correspondences/temporal")
        self._pairing_publishers = {Correspondences.PAIRING_STEREO: self.stereo_publisher,
                            Correspondences.PAIRING_TEMPORAL_LEFT: self.temporal_publisher}
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
        self.runner.received()
        pair = self.runner.pair(left, stamp_to_ns(msg.header.stamp), msg)
        if pair is not None and self._slot.put(((pair[1], pair[2]), time.monotonic())):
            self.runner.superseded()

    # --- worker side (MatchNode._process) -----------------------------------------------------
    def _take(self, pair: Pair) -> Step:
        return self.runner.take(self._frame(pair[0]), self._frame(pair[1]))

    def _after_publishing(self, pair: Pair, step: Step) -> None:
        # The stereo matches drawn: the last output of every pair that was not dropped.
        self._publish_debug(*step.images, step.outputs[-1].result, pair[1].header)

    def _extra_diagnostics(self) -> dict[str, Any]:
        stats = self.runner.sync.stats
        values: dict[str, Any] = {"stereo_pairs": stats.paired,
                                  "stereo_unpaired_left": stats.unpaired_left,
                                  "stereo_unpaired_right": stats.unpaired_right}
        right = self.camera_info.get("right")
        if right is not None and right.p[0]:
            # ROS convention for rectified pairs: P_right[0, 3] = -fx * baseline.
            values["stereo_baseline_m"] = -right.p[3] / right.p[0]
        return values


def main(args: list[str] | None = None) -> int:
    return node_main(args, StereoMatchNode)


if __name__ == "__main__":
    sys.exit(main())
