"""The match_node ROS 2 node: image topic in, Correspondences out.

Thin by design: it declares the shared parameters, converts messages and hands frames to
the core's SequentialMatcher on a worker thread. The image callback only stores the newest
message in a one-slot buffer, so the executor is never blocked by inference; a frame replaced
before the worker took it is superseded: skipped and counted, but no failure. Publishing
happens from the worker, which no frame and no parameter change can stop.

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

import os
import re
import signal
import sys
import tempfile
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
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from .. import params as P
from ..engine.image import ImageError
from ..engine.pipeline import Pipeline
from ..engine.stream import SequentialMatcher
from .runtime import FrameStats, LatestSlot, assess_health
from ..viz import draw_matches
from ..engine.weights import WeightsError
from .conversions import image_to_array, result_to_msg, stamp_to_ns


@dataclass
class Counters:
    received: int = 0
    processed: int = 0
    published: int = 0
    superseded: int = 0         # replaced in the one-slot buffer before processing (no fault)
    dropped_invalid: int = 0    # bad encoding, size, data
    dropped_stamp: int = 0      # stamp not newer than the previous frame (policy 'drop')
    resets: int = 0             # tracking restarted (first frame, time jump, size change)
    errors: int = 0             # inference failures (e.g. out of memory)
    budget_misses: int = 0      # published frames whose total time exceeded the budget
    dropped_unpaired: int = 0   # stereo: images without a partner of the same stamp
    unpublished_drops: int = field(default=0, repr=False)  # drops since the last message

    def failed(self) -> int:
        """Frames the node took and could not use (superseded frames are not failures)."""
        return self.dropped_invalid + self.dropped_stamp + self.dropped_unpaired + self.errors


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
        self.values = self._declare_parameters()  # ParameterError naming the parameter

        pipeline_values = {k: v for k, v in self.values.items() if P.SPECS[k].scope == "pipeline"}
        self.pipeline = Pipeline(pipeline_values)
        if self.pipeline.device_warning:
            self.get_logger().warning(self.pipeline.device_warning)
        if self.pipeline.textureless_note:  # matcher auto: which path serves textureless frames, and why
            self.get_logger().info(self.pipeline.textureless_note)
        self.stream = SequentialMatcher(self.pipeline, self.values["on_stamp_backwards"])
        self.get_logger().info(
            f"{self.pipeline.extractor_name} + {self.pipeline.matcher_name} on "
            f"{self.pipeline.device} ({'fp16' if self.pipeline.fp16 else 'fp32'}); weights "
            f"{self.pipeline.extractor_weights}, {self.pipeline.matcher_weights}")

        self.counters = Counters()
        self.stats = FrameStats()
        self._last_error = ""
        self._worker_stopped: str | None = None  # why the worker thread ended, if it did
        self._reference_header: Header | None = None
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._slot: LatestSlot[tuple[Image | CompressedImage, float]] = LatestSlot()

        self.diagnostics_publisher = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Drawn matches for people, not for VO: only drawn while someone subscribes.
        self.debug_publisher = self.create_publisher(Image, "debug/matches", 1)
        self._create_io()
        self.add_pre_set_parameters_callback(self._on_pre_set_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="match_node_worker",
                                        daemon=True)
        self._worker.start()

    def _declare_parameters(self) -> dict[str, Any]:
        """Check every value given for this node, then declare the parameters with them.

        rclpy itself would raise a traceback for a value outside the declared range or of
        the wrong type, accept an integer for a float parameter nowhere, and ignore a
        misspelt name. So the overrides are validated here first, with the same table and
        messages as everywhere else, and the parameters are declared with the checked values.
        """
        # rclpy keeps the overrides that apply to this node (command-line -p, the /** and
        # this node's sections of --params-file, parameter_overrides=) in this attribute;
        # sections for other nodes are already filtered out. There is no public accessor.
        overrides = {name: parameter.value for name, parameter
                     in getattr(self, "_parameter_overrides", {}).items()}
        for name in overrides:
            # rclpy's own parameters (use_sim_time, start_type_description_service) are
            # declared by now; qos_overrides.* are a ROS mechanism of their own.
            if (name not in P.SPECS and not self.has_parameter(name)
                    and not name.startswith("qos_overrides.")):
                raise P.ParameterError(P.unknown_name_message(name))
        values = P.validate({k: v for k, v in overrides.items() if k in P.SPECS})
        for spec in P.PARAMETERS:
            self.declare_parameter(spec.name, values[spec.name], _descriptor(spec),
                                   ignore_override=True)
        return values

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
        self.subscription = self._image_subscription("image", self._on_image)
        self._previous_image: np.ndarray | None = None  # for the debug picture only
        self.get_logger().info(f"listening on {self.subscription.topic_name}, publishing "
                               f"{self.publisher.topic_name}")

    # --- executor side: cheap and non-blocking --------------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        with self._lock:
            self.counters.received += 1
        if self._slot.put((msg, time.monotonic())):
            self._count_superseded()

    def _count_superseded(self) -> None:
        with self._lock:
            self.counters.superseded += 1
            self.counters.unpublished_drops += 1
        self.stats.superseded()

    def _on_pre_set_parameters(self, parameters: list[Parameter]) -> list[Parameter]:
        """`ros2 param set ... latency_budget_ms 100` sends an integer; rclpy would refuse it
        for a float parameter, so it becomes the float it obviously means."""
        converted = []
        for parameter in parameters:
            spec = P.SPECS.get(parameter.name)
            if (spec is not None and spec.type is float
                    and parameter.type_ == Parameter.Type.INTEGER):
                parameter = Parameter(parameter.name, value=float(parameter.value))
            converted.append(parameter)
        return converted

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
                P.check_combined({**self.values, **self._pending, **changes})
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
        self.stream.on_stamp_backwards = self.values["on_stamp_backwards"]
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
        with self._lock:
            self.counters.errors += 1
            self.counters.unpublished_drops += int(frame_lost)
        self.stats.error()
        self._last_error = f"{type(error).__name__}: {error}"
        if "out of memory" in str(error).lower():
            try:
                import torch
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - freeing memory is best effort
                pass
        # One line for the operator; the traceback at debug level for the developer.
        self.get_logger().error(f"{what}: {self._last_error}", throttle_duration_sec=5.0)
        self.get_logger().debug(traceback.format_exc(limit=5))

    def _drop(self, counter: str, reason: str) -> None:
        with self._lock:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
            self.counters.unpublished_drops += 1
        self.stats.dropped()
        self.get_logger().warning(f"frame dropped: {reason}", throttle_duration_sec=2.0)

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        """The message's image, or ImageError (malformed stamp, too large, bad encoding, bad
        data). The size is checked before decoding, from the Image's fields or the
        CompressedImage's header (image_to_array)."""
        return image_to_array(msg, max_pixels=self.values["max_input_pixels"])

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
        budget = self.pipeline.budget
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: matching",
                                  hardware_id=str(self.pipeline.device))
        worker_stopped = self._worker_stopped
        if worker_stopped is None and not self._worker.is_alive() and not self._slot.closed:
            worker_stopped = "ended"  # cannot happen by design; reported if it ever does
        level, message = assess_health(
            summary, self.values, budget_ms=budget.budget_ms if budget.enabled else 0.0,
            received=counters.received, last_error=self._last_error,
            worker_stopped=worker_stopped, warnings=[self.pipeline.device_warning])
        status.level = bytes([level])  # runtime's OK/WARN/ERROR are DiagnosticStatus's bytes
        status.message = message
        settings = budget.settings()
        values = {**{k: v for k, v in vars(counters).items() if k != "unpublished_drops"},
                  "failed": counters.failed(), **summary,
                  "expected_rate_hz": self.values["expected_rate_hz"],
                  "worker": "stopped" if worker_stopped is not None else "running",
                  "last_error": self._last_error,
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


def _fatal(message: str) -> int:
    # Configuration errors are the user's to fix: one clear line, no traceback, exit code 2.
    print(f"[match_node] fatal: {message}", file=sys.stderr, flush=True)
    return 2


def _init_rclpy(args: list[str] | None) -> None:
    """rclpy.init without rcl's extra "[ERROR] [rcl]: Failed to parse global arguments" line.

    On bad --ros-args rcl logs that line to stderr and then raises an RCLError saying what
    was wrong; main prints the latter as the one line. Everything else rcl writes while
    initialising (e.g. a warning about the namespace) is passed on.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold back (a daemon): nothing to tidy either
        rclpy.init(args=args)
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            rclpy.init(args=args)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if "Failed to parse global arguments" not in line:
                    sys.stderr.write(line)
            sys.stderr.flush()


def _rcl_message(error: Exception) -> str:
    # rcl appends the C source location of each error (", at /project/src/...c:415").
    return re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split()))


def main(args: list[str] | None = None, node_class: type[MatchNode] = MatchNode) -> int:
    node = None
    try:
        try:
            _init_rclpy(args)
            node = node_class()
        except (P.ParameterError, WeightsError) as error:
            return _fatal(str(error))
        except ParameterException as error:
            return _fatal(f"parameter: {error}")  # rclpy's own checks, should ours miss one
        except _rclpy.RCLError as error:
            # Bad --ros-args: unreadable --params-file, malformed remapping, bad name.
            return _fatal(f"bad ROS arguments: {_rcl_message(error)}")
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0  # Ctrl-C while loading the models
        except Exception as error:  # noqa: BLE001 - start-up: one line instead of a traceback
            if os.environ.get("MATCH_NODE_DEBUG"):
                traceback.print_exc()
            return _fatal(f"start-up failed: {type(error).__name__}: {error} "
                          "(MATCH_NODE_DEBUG=1 shows the traceback)")
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C: the worker notices the context is gone and ends quietly
        return 0
    finally:
        _shut_down(node)


def _shut_down(node: MatchNode | None) -> None:
    try:
        if node is not None:
            node.destroy_node()  # waits for the frame in progress
        rclpy.try_shutdown()  # also restores Python's own SIGINT handler
        # Finalising an interpreter that loaded torch takes a moment; a Ctrl-C in it would
        # kill the process by the signal (exit -2) instead of ending it cleanly.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        _leave_now()  # a second Ctrl-C: the user wants out without waiting for the frame
    worker = getattr(node, "_worker", None)
    if worker is not None and worker.is_alive():
        _leave_now()  # a frame outlasted the wait


def _leave_now() -> None:
    # The worker may still be inside torch, and the node not destroyed. Finalising the
    # interpreter under a running daemon thread in C++ code aborts ("terminate called
    # without an active exception", exit -6), so leave without finalising. The output
    # streams are flushed; DDS peers notice the participant is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
