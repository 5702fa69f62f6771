"""The match_node ROS 2 node: image topic in, Correspondences out.

Thin by design: it declares the shared parameters, converts messages and hands frames to
the core's SequentialMatcher on a worker thread. The image callback only stores the newest
message in a one-slot buffer, so the executor is never blocked by inference; a frame replaced
before the worker took it is dropped and counted. Publishing happens from the worker.

Topics (relative, so namespaces and remapping apply):
  subscribes  image              sensor_msgs/Image            (image_transport: raw)
              image/compressed   sensor_msgs/CompressedImage  (image_transport: compressed)
  publishes   correspondences    match_node_msgs/Correspondences
              /diagnostics       diagnostic_msgs/DiagnosticArray (1 Hz)

The latency budget (`latency_budget_ms`) covers each frame from the moment the worker takes
it (decoding included) to the message being published.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from match_node_msgs.msg import Correspondences
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from .. import params as P
from ..image import ImageError
from ..pipeline import Pipeline, SequentialMatcher
from ..runtime import FrameStats, LatestSlot
from ..viz import draw_matches
from ..weights import WeightsError
from .conversions import image_to_array, result_to_msg, stamp_to_ns


@dataclass
class Counters:
    received: int = 0
    processed: int = 0
    published: int = 0
    dropped_stale: int = 0      # replaced in the one-slot buffer before processing
    dropped_invalid: int = 0    # bad encoding, size, data
    dropped_stamp: int = 0      # stamp not newer than the previous frame (policy 'drop')
    resets: int = 0             # tracking restarted (first frame, time jump, size change)
    errors: int = 0             # inference failures (e.g. out of memory)
    budget_misses: int = 0      # published frames whose total time exceeded the budget
    dropped_unpaired: int = 0   # stereo: images without a partner of the same stamp
    unpublished_drops: int = field(default=0, repr=False)  # drops since the last message

    def dropped(self) -> int:
        return (self.dropped_stale + self.dropped_invalid + self.dropped_stamp
                + self.dropped_unpaired)


def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
    description = spec.description
    if spec.choices:
        description += f" One of: {', '.join(map(str, spec.choices))}."
    descriptor = ParameterDescriptor(description=description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = "one of: " + ", ".join(map(str, spec.choices))
    if spec.min is not None and spec.max is not None:
        if spec.type is int:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.min),
                                                     to_value=int(spec.max), step=0)]
        elif spec.type is float:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    return descriptor


class MatchNode(Node):
    def __init__(self, node_name: str = "match_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in P.PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        values = {spec.name: self.get_parameter(spec.name).value for spec in P.PARAMETERS}
        self.values = P.validate(values)  # raises ParameterError with the parameter's name

        pipeline_values = {k: v for k, v in self.values.items() if P.SPECS[k].scope == "pipeline"}
        self.pipeline = Pipeline(pipeline_values)
        if self.pipeline.device_warning:
            self.get_logger().warning(self.pipeline.device_warning)
        self.stream = SequentialMatcher(self.pipeline, self.values["on_stamp_backwards"])
        self.get_logger().info(
            f"{self.pipeline.extractor_name} + {self.pipeline.matcher_name} on "
            f"{self.pipeline.device} ({'fp16' if self.pipeline.fp16 else 'fp32'}); weights "
            f"{self.pipeline.extractor_weights}, {self.pipeline.matcher_weights}")

        self.counters = Counters()
        self.stats = FrameStats()
        self._last_error = ""
        self._reference_header: Header | None = None
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._slot: LatestSlot[tuple[Image | CompressedImage, float]] = LatestSlot()

        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Drawn matches for people, not for VO: only drawn while someone subscribes.
        self.debug_publisher = self.create_publisher(Image, "debug/matches", 1)
        self._create_io()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="match_node_worker",
                                        daemon=True)
        self._worker.start()

    def _output(self, topic: str):
        return self.create_publisher(
            Correspondences, topic, QoSProfile(depth=self.values["output_queue_depth"],
                                               reliability=ReliabilityPolicy.RELIABLE))

    def _image_subscription(self, topic: str, callback):
        if self.values["image_transport"] == "compressed":
            return self.create_subscription(CompressedImage, f"{topic}/compressed", callback,
                                            qos_profile_sensor_data)
        return self.create_subscription(Image, topic, callback, qos_profile_sensor_data)

    def _create_io(self) -> None:
        self.publisher = self._output("correspondences")
        self.subscription = self._image_subscription("image", self._on_image)
        self._previous_image: np.ndarray | None = None  # for the debug picture only
        self.get_logger().info(f"listening on {self.subscription.topic_name}, publishing "
                               f"{self.publisher.topic_name}")

    # --- executor side: cheap and non-blocking --------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        with self._lock:
            self.counters.received += 1
        if self._slot.put((msg, time.monotonic())):
            with self._lock:
                self.counters.dropped_stale += 1
                self.counters.unpublished_drops += 1
            self.stats.dropped()

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        changes = {}
        for parameter in parameters:
            spec = P.SPECS.get(parameter.name)
            if spec is None:
                continue  # e.g. use_sim_time, handled by rclpy
            try:
                changes[parameter.name] = spec.validate(parameter.value)
            except P.ParameterError as error:
                return SetParametersResult(successful=False, reason=str(error))
        with self._lock:
            self._pending.update(changes)
        return SetParametersResult(successful=True)

    # --- worker side -------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        self.values.update(pending)
        pipeline_changes = {k: v for k, v in pending.items() if P.SPECS[k].scope == "pipeline"}
        if pipeline_changes:
            self.pipeline.update(**pipeline_changes)
        self.stream.on_stamp_backwards = self.values["on_stamp_backwards"]
        self.get_logger().info(f"parameters changed: {pending}")

    def _run_worker(self) -> None:
        while not self._slot.closed:
            item = self._slot.take(timeout=0.1)
            if item is None:
                continue
            self._apply_pending()
            try:
                self._process(*item)
            except Exception as error:  # noqa: BLE001 - the node must survive any frame
                self._count_error(error)

    def _count_error(self, error: Exception) -> None:
        with self._lock:
            self.counters.errors += 1
            self.counters.unpublished_drops += 1
        self.stats.error()
        self._last_error = f"{type(error).__name__}: {error}"
        if "out of memory" in str(error).lower():
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.get_logger().error(f"frame failed and was dropped: {self._last_error}\n"
                                + traceback.format_exc(limit=3), throttle_duration_sec=5.0)

    def _drop(self, counter: str, reason: str) -> None:
        with self._lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            self.counters.unpublished_drops += 1
        self.stats.dropped()
        self.get_logger().warning(f"frame dropped: {reason}", throttle_duration_sec=2.0)

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        """The message's image, or ImageError (too large, bad encoding, bad data)."""
        limit = self.values["max_input_pixels"]
        if isinstance(msg, Image) and msg.height * msg.width > limit:
            raise ImageError(f"{msg.width}x{msg.height} image exceeds max_input_pixels={limit}")
        image = image_to_array(msg)
        if image.shape[0] * image.shape[1] > limit:
            raise ImageError(f"{image.shape[1]}x{image.shape[0]} image exceeds "
                             f"max_input_pixels={limit}")
        return image

    def _note_event(self, event) -> bool:
        """Count a stream event; return False when the frame was dropped."""
        with self._lock:
            self.counters.processed += 1
        if event.dropped:
            self._drop("dropped_stamp", event.note or "")
            return False
        if event.restarted:
            with self._lock:
                self.counters.resets += 1
            if event.note:
                self.get_logger().warning(event.note, throttle_duration_sec=2.0)
        return True

    def _take_drops(self) -> int:
        """Frames dropped since the last published frame (reported once per frame)."""
        with self._lock:
            dropped, self.counters.unpublished_drops = self.counters.unpublished_drops, 0
        return dropped

    def _publish_result(self, publisher, result, header: Header, reference_header: Header,
                        pairing: int, frame_index: int, tracks_reset: bool, wait_ms: float,
                        started: float, dropped: int) -> None:
        out = result_to_msg(result, header, reference_header, pairing=pairing,
                            frame_index=frame_index, dropped_frames=dropped,
                            tracks_reset=tracks_reset)
        clock = self.pipeline.budget.clock
        out.wait_ms = wait_ms
        out.total_ms = clock() - started
        publisher.publish(out)
        total = clock() - started
        budget = self.pipeline.budget.budget_ms
        missed = budget > 0 and total > budget
        with self._lock:
            self.counters.published += 1
            self.counters.budget_misses += int(missed)
        self.stats.published(total, missed, out.exit_layer)

    def _publish_debug(self, image0: np.ndarray | None, image1: np.ndarray, result,
                       header: Header) -> None:
        if image0 is None or self.debug_publisher.get_subscription_count() == 0:
            return
        picture = draw_matches(image0, image1, result.keypoints0, result.keypoints1,
                               result.scores, f"{len(result)} matches ({result.matcher})")
        msg = Image(header=header, height=picture.shape[0], width=picture.shape[1],
                    encoding="bgr8", step=picture.shape[1] * 3)
        msg.data = picture.tobytes()
        self.debug_publisher.publish(msg)

    def _process(self, msg: Image | CompressedImage, received: float) -> None:
        clock = self.pipeline.budget.clock
        started = clock()  # the frame's latency budget starts here
        wait_ms = (time.monotonic() - received) * 1e3
        header = msg.header
        try:
            image = self._decode(msg)
            event = self.stream.push(image, stamp_to_ns(header.stamp), started_ms=started)
        except ImageError as error:
            self._drop("dropped_invalid", str(error))
            return
        if not self._note_event(event):
            return
        if event.result is not None and self._reference_header is not None:
            self._publish_result(self.publisher, event.result, header, self._reference_header,
                                 Correspondences.PAIRING_SEQUENTIAL, event.frame_index,
                                 event.tracks_reset, wait_ms, started, self._take_drops())
            self._publish_debug(self._previous_image, image, event.result, header)
            if event.note:
                self.get_logger().info(event.note, throttle_duration_sec=5.0)
        self.stream.finish_frame(clock() - started)
        self._reference_header = header
        self._previous_image = image if self.debug_publisher.get_subscription_count() else None

    # --- diagnostics and shutdown -----------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health: OK, WARN or ERROR by the thresholds in its parameters."""
        with self._lock:
            counters = Counters(**vars(self.counters))
        summary = self.stats.summary(self.pipeline.num_layers)
        v = self.values
        budget = self.pipeline.budget
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: matching",
                                  hardware_id=str(self.pipeline.device))
        failed_rate = summary["drop_rate"] + summary["error_rate"]
        problems: list[tuple[int, str]] = []
        if budget.enabled and summary["budget_miss_rate"] >= v["diagnostics_miss_error"]:
            problems.append((DiagnosticStatus.ERROR, f"{summary['budget_miss_rate']:.0%} of frames over the "
                             f"{budget.budget_ms:.0f} ms budget"))
        elif budget.enabled and summary["budget_miss_rate"] >= v["diagnostics_miss_warn"]:
            problems.append((DiagnosticStatus.WARN, f"{summary['budget_miss_rate']:.0%} of frames over the "
                             f"{budget.budget_ms:.0f} ms budget"))
        if failed_rate >= v["diagnostics_drop_error"]:
            problems.append((DiagnosticStatus.ERROR, f"{failed_rate:.0%} of frames dropped or failed"))
        elif summary["drop_rate"] >= v["diagnostics_drop_warn"]:
            problems.append((DiagnosticStatus.WARN, f"{summary['drop_rate']:.0%} of frames dropped"))
        if summary["error_rate"] > 0:
            problems.append((DiagnosticStatus.WARN, f"inference errors: {self._last_error}"))
        if self.pipeline.device_warning:
            problems.append((DiagnosticStatus.WARN, self.pipeline.device_warning))
        if problems:
            status.level = bytes([max(level[0] for level, _ in problems)])
            status.message = "; ".join(text for _, text in problems)
        else:
            status.level = DiagnosticStatus.OK
            status.message = "waiting for images" if counters.received == 0 else "matching"
        settings = budget.settings()
        values = {**{k: v for k, v in vars(counters).items() if k != "unpublished_drops"},
                  "dropped": counters.dropped(), **summary,
                  "latency_budget_ms": budget.budget_ms, "budget_percentile": budget.percentile,
                  "keypoint_cap": settings.max_keypoints,
                  "extraction_max_side": settings.max_image_side or "full",
                  "matcher": self.stream.current_matcher, **self._extra_diagnostics(),
                  "device": str(self.pipeline.device),
                  "precision": "fp16" if self.pipeline.fp16 else "fp32"}
        status.values = [KeyValue(key=k, value=f"{x:.2f}" if isinstance(x, float) else str(x))
                         for k, x in values.items()]
        return status

    def _extra_diagnostics(self) -> dict[str, Any]:
        return {}

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray(status=[self.diagnostic_status()])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_publisher.publish(array)

    def destroy_node(self) -> None:
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None, node_class: type[MatchNode] = MatchNode) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = node_class()
        rclpy.spin(node)
    except (P.ParameterError, WeightsError) as error:
        # Configuration errors are the user's to fix: one clear line, no traceback.
        print(f"[match_node] fatal: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
