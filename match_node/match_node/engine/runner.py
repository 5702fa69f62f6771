"""The frame loop every front end shares: the mono and stereo nodes and the offline runner only
adapt their input and output to it.

    runner = FrameRunner(pipeline, on_stamp_backwards="reset", max_input_pixels=1 << 24)
    step = runner.take(FrameInput(stamp_ns, frame_id, decode))  # decode(max_pixels) -> image
    for output in step.outputs:                # what to publish, with its reference frame
        message = ...                          # total_ms: runner.elapsed_ms(step)
        runner.published(step, output, total_ms)
    runner.finish(step)                        # the latency budget learns from the frame

`take` starts the frame's latency budget, decodes with the size guard (`max_input_pixels`,
checked before decoding where the input allows), pushes the frame into the stream, counts
what was dropped and why, and tracks the reference frame (the last frame that entered the
stream). Drops since the last message are reported once, in the next message's
`dropped_frames`. Every frame leaves one FrameLog (framelog.py) in `step.record`: the rolling
statistics of the node's diagnostics are kept from them, the offline summary is made of them.
`StereoRunner` does the same for left/right pairs, and pairs the two image streams by stamp.
No ROS imports.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import numpy as np

from ..messages import PAIRING_SEQUENTIAL, PAIRING_STEREO, PAIRING_TEMPORAL_LEFT
from .budget import FrameSettings
from .framelog import (DROPPED, ERROR, FIRST, MATCHED, RESTARTED, SUPERSEDED, TAKEN,
                       FrameLog, FrameStats, Published)
from .image import ImageError
from .pipeline import Pipeline
from .results import MatchResult, StreamEvent
from .stereo import StereoMatcher, StereoSynchronizer
from .stream import SequentialMatcher

T = TypeVar("T")


@dataclass
class FrameInput:
    """A frame as a front end hands it over, not decoded yet."""
    stamp_ns: int
    frame_id: str
    # max_input_pixels -> HxW or HxWx3 image; raises ImageError for unusable input, ideally
    # checking the size before decoding (a small compressed file can declare a huge image).
    decode: Callable[[int], np.ndarray]
    source: Any = None  # the front end's own handle, returned with the outputs


@dataclass(frozen=True)
class FrameRef:
    """The image a message names: its stamp, frame id and the front end's handle."""
    stamp_ns: int
    frame_id: str
    source: Any = None


@dataclass
class Output:
    """A message to publish: the matches from `reference` (image 0) to `current` (image 1)."""
    result: MatchResult
    pairing: int                 # messages.PAIRING_*
    current: FrameRef
    reference: FrameRef
    frame_index: int
    dropped_frames: int          # frames dropped since the previous message
    tracks_reset: bool


@dataclass
class Step:
    """A frame the runner took, from `take` to `finish`."""
    record: FrameLog
    started_ms: float            # on the pipeline's clock: the frame's latency budget began
    outputs: list[Output] = field(default_factory=list)
    images: tuple[np.ndarray, ...] = ()  # decoded: the image, or the left and right images
    closed: bool = False

    @property
    def dropped(self) -> bool:
        return self.record.status == DROPPED


@dataclass
class Counters:
    """Totals since the start, for diagnostics and tests."""
    received: int = 0
    processed: int = 0
    published: int = 0
    superseded: int = 0         # replaced in the one-slot buffer before processing (no fault)
    dropped_invalid: int = 0    # bad encoding, size, data
    dropped_stamp: int = 0      # stamp not newer than the previous frame (policy 'drop')
    resets: int = 0             # tracking restarted (first frame, time jump, size change)
    errors: int = 0             # inference failures (e.g. out of memory)
    budget_misses: int = 0      # published messages whose total time exceeded the budget
    dropped_unpaired: int = 0   # stereo: images without a partner of the same stamp
    unpublished_drops: int = field(default=0, repr=False)  # drops since the last message

    def failed(self) -> int:
        """Frames the runner took and could not use (superseded frames are not failures)."""
        return self.dropped_invalid + self.dropped_stamp + self.dropped_unpaired + self.errors


class FrameRunner:
    """The frame loop for one camera: each frame matched to the previous one.

    Thread-safe where a node needs it: `received`, `superseded` (and StereoRunner.pair) may
    be called from callbacks while a worker runs `take` ... `finish`; `counters` is read live.
    """

    def __init__(self, pipeline: Pipeline, on_stamp_backwards: str = "reset",
                 max_input_pixels: int = 1 << 24, stream: SequentialMatcher | None = None) -> None:
        self.pipeline = pipeline
        self.stream = stream or SequentialMatcher(pipeline, on_stamp_backwards)
        self.max_input_pixels = max_input_pixels
        self.counters = Counters()
        self.stats = FrameStats()
        self.reference: FrameRef | None = None  # the last frame that entered the stream
        self.last_error = ""
        self._lock = threading.Lock()
        self._open: Step | None = None  # taken and neither finished nor dropped

    # --- what the front ends read ----------------------------------------------------------
    @property
    def on_stamp_backwards(self) -> str:
        return self.stream.on_stamp_backwards

    @on_stamp_backwards.setter
    def on_stamp_backwards(self, policy: str) -> None:
        self.stream.on_stamp_backwards = policy

    @property
    def current_matcher(self) -> str:
        return self.stream.current_matcher

    def clock(self) -> float:
        """The pipeline's clock (ms; synchronised with the device), that budgets are timed on."""
        return self.pipeline.budget.clock()

    @property
    def budget_ms(self) -> float:
        """The latency budget per frame (0: none)."""
        return self.pipeline.budget.budget_ms

    @property
    def budget_enabled(self) -> bool:
        return self.pipeline.budget.enabled

    @property
    def budget_percentile(self) -> float:
        return self.pipeline.budget.percentile

    def budget_settings(self) -> FrameSettings:
        """The keypoint cap and extraction side the budget currently asks for."""
        return self.pipeline.budget.settings()

    def snapshot(self) -> Counters:
        """A consistent copy of the counters."""
        with self._lock:
            return Counters(**vars(self.counters))

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Rolling statistics of the recent frames (FrameStats.summary)."""
        return self.stats.summary(self.pipeline.num_layers, now)

    # --- events outside the frame loop (may come from other threads) -----------------------
    def received(self, count: int = 1) -> None:
        with self._lock:
            self.counters.received += count

    def superseded(self) -> None:
        """A frame was replaced by a newer one before it was taken."""
        with self._lock:
            self.counters.superseded += 1
            self.counters.unpublished_drops += 1
        self.stats.add(FrameLog(SUPERSEDED, ended=time.monotonic()))

    def error(self, error: Exception, frame_lost: bool = True) -> str:
        """Count a failure (of the frame in progress, if any; `frame_lost=False`: of something
        else, e.g. a parameter change); returns its one-line description."""
        self.last_error = f"{type(error).__name__}: {error}"
        with self._lock:
            self.counters.errors += 1
            self.counters.unpublished_drops += int(frame_lost)
        step = self._open if frame_lost else None
        if step is not None:
            # Not finished: the stream closes the frame's budget record at the next push.
            step.closed, self._open = True, None
        record = step.record if step is not None else FrameLog(ERROR)
        record.status, record.note = ERROR, self.last_error
        self._close(record)
        if "out of memory" in str(error).lower():
            _free_device_memory()
        return self.last_error

    # --- the frame loop ----------------------------------------------------------------------
    def take(self, frame: FrameInput) -> Step:
        """Decode and push one frame; the step says what to publish (nothing when dropped)."""
        step = self._begin(frame)
        try:
            image = self._decode(frame)
            event = self.stream.push(image, frame.stamp_ns, started_ms=step.started_ms)
        except ImageError as error:
            return self._drop(step, "invalid", str(error))
        step.images = (image,)
        previous = self.reference
        if not self._entered(step, event, frame):
            return step
        if event.result is not None and previous is not None:
            step.outputs.append(Output(event.result, PAIRING_SEQUENTIAL, self.reference,
                                       previous, event.frame_index, self._take_drops(),
                                       event.tracks_reset))
        self._set_status(step, previous)
        return step

    def elapsed_ms(self, step: Step) -> float:
        """Time since the step's frame was taken: a message's total_ms, read before sending."""
        return self.clock() - step.started_ms

    def published(self, step: Step, output: Output, total_ms: float) -> None:
        """`output` is out (its message said `total_ms`): count it and its budget miss."""
        latency = self.elapsed_ms(step)
        budget = self.budget_ms
        missed = budget > 0 and latency > budget
        with self._lock:
            self.counters.published += 1
            self.counters.budget_misses += int(missed)
        result, record = output.result, step.record
        record.published.append(Published(time.monotonic(), latency, missed,
                                          int(result.exit_layer)))
        if output.pairing != PAIRING_STEREO:  # the record describes the match in time
            record.matches, record.keypoints = len(result), int(result.num_keypoints1)
            record.exit_layer, record.exit_reason = int(result.exit_layer), int(result.exit_reason)
            record.timings = {name: float(result.timings[name])
                              for name in ("preprocess_ms", "extract_ms", "match_ms")}
            record.timings["total_ms"] = float(total_ms)

    def finish(self, step: Step) -> None:
        """The frame is done (published): the latency budget learns its whole time."""
        if step.closed:
            return
        self.stream.finish_frame(self.elapsed_ms(step))
        step.closed = True
        if self._open is step:
            self._open = None
        self._close(step.record)

    # --- shared by both loops ----------------------------------------------------------------
    def _begin(self, frame: FrameInput) -> Step:
        if self._open is not None:  # a step the caller neither finished nor reported failed
            self._open.closed = True
            self._close(self._open.record)
        started = self.clock()  # the frame's latency budget starts here
        step = Step(FrameLog(TAKEN, self.stream.frame_index + 1, frame.stamp_ns, frame.frame_id),
                    started)
        self._open = step
        return step

    def _decode(self, frame: FrameInput) -> np.ndarray:
        limit = self.max_input_pixels
        image = frame.decode(limit)
        # Also after decoding: for input whose size is known only then (a recorded raw image).
        if image.shape[0] * image.shape[1] > limit:
            raise ImageError(f"{image.shape[1]}x{image.shape[0]} image exceeds "
                             f"max_input_pixels={limit}")
        return image

    def _entered(self, step: Step, event: StreamEvent, frame: FrameInput) -> bool:
        """Count a stream event; False when the stream dropped the frame."""
        with self._lock:
            self.counters.processed += 1
        if event.dropped:
            self._drop(step, "stamp", event.note or "")
            return False
        step.record.frame_index, step.record.note = event.frame_index, event.note or ""
        if event.restarted:
            with self._lock:
                self.counters.resets += 1
        self.reference = FrameRef(frame.stamp_ns, frame.frame_id, frame.source)
        return True

    def _set_status(self, step: Step, previous: FrameRef | None) -> None:
        if any(output.pairing != PAIRING_STEREO for output in step.outputs):
            step.record.status = MATCHED
        else:
            step.record.status = FIRST if previous is None else RESTARTED

    def _drop(self, step: Step, reason: str, note: str) -> Step:
        with self._lock:
            name = f"dropped_{reason}"
            setattr(self.counters, name, getattr(self.counters, name) + 1)
            self.counters.unpublished_drops += 1
        record = step.record
        record.status, record.reason, record.note = DROPPED, reason, note
        step.closed = True
        if self._open is step:
            self._open = None
        self._close(record)
        return step

    def _take_drops(self) -> int:
        """Frames dropped since the last message (reported once, in the next message)."""
        with self._lock:
            dropped, self.counters.unpublished_drops = self.counters.unpublished_drops, 0
        return dropped

    def _close(self, record: FrameLog) -> None:
        record.ended = time.monotonic()
        self.stats.add(record)


class StereoRunner(FrameRunner, Generic[T]):
    """The frame loop for a stereo pair: the left image matched to the previous left image
    (temporal) and to the right image of the same stamp (stereo).

    `pair` pairs the two image streams by stamp (within `slop_ns`); images that cannot be
    paired are dropped and counted. `take(left, right)` publishes up to two messages, which
    report the same dropped frames.
    """

    def __init__(self, pipeline: Pipeline, temporal: bool = True,
                 epipolar_tolerance_px: float = 0.0, on_stamp_backwards: str = "reset",
                 max_input_pixels: int = 1 << 24, slop_ns: int = 0) -> None:
        self.stereo = StereoMatcher(pipeline, temporal, epipolar_tolerance_px,
                                    on_stamp_backwards)
        super().__init__(pipeline, on_stamp_backwards, max_input_pixels, self.stereo.stream)
        self.sync: StereoSynchronizer[T] = StereoSynchronizer(slop_ns)

    def pair(self, left: bool, stamp_ns: int, item: T) -> tuple[int, T, T] | None:
        """Add a left (or right) image; returns (stamp, left, right) when it completes a pair."""
        with self._lock:
            stats = self.sync.stats
            before = stats.unpaired_left + stats.unpaired_right
            pair = (self.sync.add_left if left else self.sync.add_right)(stamp_ns, item)
            unpaired = stats.unpaired_left + stats.unpaired_right - before
            self.counters.dropped_unpaired += unpaired
            self.counters.unpublished_drops += unpaired
        for _ in range(unpaired):
            self._close(FrameLog(DROPPED, reason="unpaired"))
        return pair

    def take(self, left: FrameInput, right: FrameInput) -> Step:  # type: ignore[override]
        """Decode and push one pair; the step says what to publish (nothing when dropped)."""
        step = self._begin(left)
        try:
            images = self._decode(left), self._decode(right)
            event = self.stereo.push(*images, left.stamp_ns, started_ms=step.started_ms)
        except ImageError as error:  # unusable images, or left and right of different sizes
            return self._drop(step, "invalid", str(error))
        step.images = images
        previous = self.reference
        temporal = event.temporal
        if not self._entered(step, temporal, left):
            return step
        dropped = self._take_drops()  # the same count in both messages of this pair
        current = self.reference
        if temporal.result is not None and previous is not None:
            step.outputs.append(Output(temporal.result, PAIRING_TEMPORAL_LEFT, current,
                                       previous, temporal.frame_index, dropped,
                                       temporal.tracks_reset))
        step.outputs.append(Output(event.stereo, PAIRING_STEREO,
                                   FrameRef(right.stamp_ns, right.frame_id, right.source),
                                   current, temporal.frame_index, dropped, temporal.restarted))
        self._set_status(step, previous)
        return step


def _free_device_memory() -> None:
    """After an out-of-memory error: give the allocator's cached blocks back to the device."""
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass
