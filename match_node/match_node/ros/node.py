"""The match_node ROS 2 node: image topic in, Correspondences out.

Thin by design: it declares the shared parameters (parameters.py), converts messages and
hands frames to the engine's frame runner (engine/runner.py) on a worker thread. The image
callback only stores the newest message in a one-slot buffer, so the executor is never blocked
by inference; a frame replaced before the worker took it is superseded: skipped and counted,
but no failure. Publishing happens from the worker, which no frame and no parameter change can
stop. process.py runs a node as the process (start-up errors, Ctrl-C, shutdown).

Topics (relative, so namespaces and remapping apply):
  subscribes  image              sensor_msgs/Image            (image_transport: raw)
              image/compressed   sensor_msgs/CompressedImage  (image_transport: compressed;
                                 follows a remapping of `image`, as image_transport does)
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
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from match_node_msgs.msg import Correspondences
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from .. import params as P
from ..engine import families
from ..engine.framelog import FIRST, RESTARTED
from ..engine.pipeline import Pipeline
from ..engine.runner import FrameInput, FrameRunner, Output, Step
from ..messages import correspondence_fields
from ..viz import draw_matches
from .conversions import fields_to_msg, image_to_array, stamp_to_ns
from .parameters import declare_parameters, integers_as_floats
from .process import run
from .runtime import LatestSlot, assess_health


class MatchNode(Node):
    def __init__(self, node_name: str = "match_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.values = declare_parameters(self)  # ParameterError naming the parameter

        pipeline_values = {k: v for k, v in self.values.items() if P.SPECS[k].scope == "pipeline"}
        self.pipeline = Pipeline(pipeline_values)
        if self.pipeline.device_warning:
            self.get_logger().warning(self.pipeline.device_warning)
        if self.pipeline.textureless_note:  # matcher auto: which path serves textureless frames, and why
            self.get_logger().info(self.pipeline.textureless_note)
        self.runner = self._create_runner()
        self.get_logger().info(
            f"{self.pipeline.extractor_name} + {self.pipeline.matcher_name} on "
            f"{self.pipeline.device} ({'fp16' if self.pipeline.fp16 else 'fp32'}); weights "
            f"{self.pipeline.extractor_weights}, {self.pipeline.matcher_weights}")

        self._worker_stopped: str | None = None  # why the worker thread ended, if it did
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._slot: LatestSlot[tuple[Image | CompressedImage, float]] = LatestSlot()

        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Drawn matches for people, not for VO: only drawn while someone subscribes.
        self.debug_publisher = self.create_publisher(Image, "debug/matches", 1)
        self._create_io()
        self.add_pre_set_parameters_callback(integers_as_floats)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="match_node_worker",
                                        daemon=True)
        self._worker.start()

    def _create_runner(self) -> FrameRunner:
        return FrameRunner(self.pipeline, self.values["on_stamp_backwards"],
                           self.values["max_input_pixels"])

    def _output(self, topic: str):
        return self.create_publisher(
            Correspondences, topic, QoSProfile(depth=self.values["output_queue_depth"],
                                               reliability=ReliabilityPolicy.RELIABLE))

    def _image_subscription(self, topic: str, callback):
        if self.values["image_transport"] == "compressed":
            return self.create_subscription(CompressedImage, self.compressed_topic(topic),
                                            callback, qos_profile_sensor_data)
        return self.create_subscription(Image, topic, callback, qos_profile_sensor_data)

    def compressed_topic(self, base: str) -> str:
        """The compressed stream of the image topic `base`, as image_transport finds it.

        image_transport subscribes to '<base, remapped>/compressed', so `-r image:=/cam/raw`
        moves the compressed subscription to /cam/raw/compressed too. An explicit remapping
        of '<base>/compressed' (which the launch files also pass) still takes precedence.
        """
        own = f"{base}/compressed"
        explicit = self.resolve_topic_name(own)
        if explicit != self.resolve_topic_name(own, only_expand=True):
            return explicit
        return self.resolve_topic_name(base).rstrip("/") + "/compressed"

    def _create_io(self) -> None:
        self.publisher = self._output("correspondences")
        self._pairing_publishers = {Correspondences.PAIRING_SEQUENTIAL: self.publisher}
        self.subscription = self._image_subscription("image", self._on_image)
        self._previous_image: np.ndarray | None = None  # for the debug picture only
        self.get_logger().info(f"listening on {self.subscription.topic_name}, publishing "
                               f"{self.publisher.topic_name}")

    # --- executor side: cheap and non-blocking --------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.runner.received()
        if self._slot.put((msg, time.monotonic())):
            self.runner.superseded()

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept a change only if every value is valid and all values still fit together.

        The combined check runs on the current values with the changes still pending and
        the requested ones applied, so nothing accepted here can fail later in the worker;
        a refused request changes nothing and says why.
        """
        try:
            changes = {parameter.name: P.SPECS[parameter.name].validate(parameter.value)
                       for parameter in parameters if parameter.name in P.SPECS}
            if not changes:
                return SetParametersResult(successful=True)  # e.g. use_sim_time: rclpy's
            with self._lock:
                families.check_combined({**self.values, **self._pending, **changes})
                self._pending.update(changes)
        except P.ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        except Exception as error:  # noqa: BLE001 - a parameter service must answer
            return SetParametersResult(successful=False,
                                       reason=f"refused: {type(error).__name__}: {error}")
        return SetParametersResult(successful=True)

    # --- worker side -------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._lock:
            # Swap and merge under one lock: the set-parameters callback checks requests
            # against values + pending, so an accepted change must always be in one of them.
            pending, self._pending = self._pending, {}
            self.values.update(pending)
        if not pending:
            return
        pipeline_changes = {k: v for k, v in pending.items() if P.SPECS[k].scope == "pipeline"}
        if pipeline_changes:
            self.pipeline.update(**pipeline_changes)
        self.runner.on_stamp_backwards = self.values["on_stamp_backwards"]
        self.runner.max_input_pixels = self.values["max_input_pixels"]
        self.get_logger().info(f"parameters changed: {pending}")

    def _run_worker(self) -> None:
        """Take frames until the node is destroyed; no frame and no parameter can end it.

        Every Exception in the loop body is counted, logged in one line and the loop goes
        on. During shutdown (Ctrl-C) publishing fails because the context is gone: the
        worker then ends quietly. Only a BaseException that is not an Exception can stop it
        otherwise; diagnostics then report ERROR "worker stopped".
        """
        try:
            while not self._slot.closed:
                try:
                    self._worker_step()
                except Exception as error:  # noqa: BLE001 - the node must survive any frame
                    if self._shutting_down():
                        break
                    try:
                        self._count_error(error)
                    except Exception:  # noqa: BLE001 - not even counting may end the loop
                        pass
        except BaseException as error:
            self._worker_stopped = f"{type(error).__name__}: {error}"
            raise
        finally:
            if self._worker_stopped is None and not self._shutting_down():
                self._worker_stopped = "ended"

    def _worker_step(self) -> None:
        item = self._slot.take(timeout=0.1)
        try:
            # Also while idle, so that changes take effect without waiting for a frame.
            self._apply_pending()
        except Exception as error:  # noqa: BLE001 - a parameter must not stop the worker
            if self._shutting_down():
                raise
            self._count_error(error, "parameter change not applied", frame_lost=False)
        if item is not None:
            self._process(*item)

    def _shutting_down(self) -> bool:
        return self._slot.closed or not self.context.ok()

    def _count_error(self, error: Exception, what: str = "frame failed and was dropped",
                     frame_lost: bool = True) -> None:
        message = self.runner.error(error, frame_lost)
        # One line for the operator; the traceback at debug level for the developer.
        self.get_logger().error(f"{what}: {message}", throttle_duration_sec=5.0)
        self.get_logger().debug(traceback.format_exc(limit=5))

    def _frame(self, msg: Image | CompressedImage) -> FrameInput:
        """The runner's view of a message. It is decoded when taken: image_to_array checks the
        stamp, the size before decoding (from the Image's fields or the CompressedImage's
        header), the encoding and the data, and raises ImageError."""
        return FrameInput(stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                          lambda limit: image_to_array(msg, max_pixels=limit))

    def _take(self, msg: Image | CompressedImage) -> Step:
        return self.runner.take(self._frame(msg))

    def _process(self, item: Any, received: float) -> None:
        """One frame (the stereo node: one pair) from the buffer to its messages."""
        wait_ms = (time.monotonic() - received) * 1e3
        step = self._take(item)
        record = step.record
        if step.dropped:
            self.get_logger().warning(f"frame dropped: {record.note}", throttle_duration_sec=2.0)
            return
        if record.status in (FIRST, RESTARTED) and record.note:
            self.get_logger().warning(record.note, throttle_duration_sec=2.0)
        for output in step.outputs:
            self._publish(output, step, wait_ms)
        self._after_publishing(item, step)
        self.runner.finish(step)

    def _publish(self, output: Output, step: Step, wait_ms: float) -> None:
        msg = fields_to_msg(correspondence_fields(
            output.result, output.current.stamp_ns, output.current.frame_id,
            output.reference.stamp_ns, output.reference.frame_id, pairing=output.pairing,
            frame_index=output.frame_index, dropped_frames=output.dropped_frames,
            tracks_reset=output.tracks_reset, wait_ms=wait_ms))
        msg.total_ms = self.runner.elapsed_ms(step)
        self._pairing_publishers[output.pairing].publish(msg)
        self.runner.published(step, output, msg.total_ms)

    def _after_publishing(self, msg: Image | CompressedImage, step: Step) -> None:
        image = step.images[0]
        for output in step.outputs:
            self._publish_debug(self._previous_image, image, output.result, msg.header)
            if step.record.note:
                self.get_logger().info(step.record.note, throttle_duration_sec=5.0)
        self._previous_image = image if self.debug_publisher.get_subscription_count() else None

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

    # --- diagnostics and shutdown -----------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's health: OK, WARN or ERROR by the thresholds in its parameters."""
        runner = self.runner
        counters = runner.snapshot()
        summary = runner.summary()
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: matching",
                                  hardware_id=str(self.pipeline.device))
        worker_stopped = self._worker_stopped
        if worker_stopped is None and not self._worker.is_alive() and not self._slot.closed:
            worker_stopped = "ended"  # cannot happen by design; reported if it ever does
        level, message = assess_health(
            summary, self.values, budget_ms=runner.budget_ms if runner.budget_enabled else 0.0,
            received=counters.received, last_error=runner.last_error,
            worker_stopped=worker_stopped, warnings=[self.pipeline.device_warning])
        status.level = bytes([level])  # runtime's OK/WARN/ERROR are DiagnosticStatus's bytes
        status.message = message
        settings = runner.budget_settings()
        values = {**{k: v for k, v in vars(counters).items() if k != "unpublished_drops"},
                  "failed": counters.failed(), **summary,
                  "expected_rate_hz": self.values["expected_rate_hz"],
                  "worker": "stopped" if worker_stopped is not None else "running",
                  "last_error": runner.last_error,
                  "latency_budget_ms": runner.budget_ms,
                  "budget_percentile": runner.budget_percentile,
                  "keypoint_cap": settings.max_keypoints,
                  "extraction_max_side": settings.max_image_side or "full",
                  "matcher": runner.current_matcher, **self._extra_diagnostics(),
                  "device": str(self.pipeline.device),
                  "precision": "fp16" if self.pipeline.fp16 else "fp32"}
        status.values = [KeyValue(key=k, value=f"{x:.2f}" if isinstance(x, float) else str(x))
                         for k, x in values.items()]
        return status

    def _extra_diagnostics(self) -> dict[str, Any]:
        return {}

    def _publish_diagnostics(self) -> None:
        try:
            array = DiagnosticArray(status=[self.diagnostic_status()])
            array.header.stamp = self.get_clock().now().to_msg()
            self.diagnostics_publisher.publish(array)
        except Exception as error:  # noqa: BLE001 - an exception here would end rclpy.spin
            if self.context.ok():
                self.get_logger().error(f"diagnostics failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=10.0)

    def destroy_node(self) -> None:
        # Safe on a node whose constructor failed half-way (rclpy's context destroys every
        # node it tracks at shutdown, constructed or not) and when called twice.
        slot = getattr(self, "_slot", None)
        if slot is not None:
            slot.close()
        worker = getattr(self, "_worker", None)
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            # The frame in progress finishes, or fails quietly on the closed context. Only
            # then are the publishers destroyed: destroying them under a running worker
            # made the interpreter abort at exit.
            worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None, node_class: type[MatchNode] = MatchNode) -> int:
    """Run a `node_class` node as this process; its exit code (see process.run)."""
    return run(node_class, args)


if __name__ == "__main__":
    sys.exit(main())
