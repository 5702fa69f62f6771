"""The frame runner every front end shares, on real images: the size guard, drops counted by
reason and reported once, the reference frame, one record per frame, and stereo pairing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from match_node import messages
from match_node.engine import framelog
from match_node.engine.image import ImageError, decode_compressed
from match_node.engine.runner import FrameInput, FrameRunner, StereoRunner
from match_node.groundtruth.planar import make_sequence

SECOND = 1_000_000_000
SIZE = (320, 240)


@pytest.fixture(scope="module")
def frames():
    return make_sequence("coffee", num_frames=4, size=SIZE, step=5).frames


def raw(image: np.ndarray, stamp_ns: int, frame_id: str = "cam", source=None) -> FrameInput:
    """A frame whose decoding hands over an array (as a recorded raw image is, in full)."""
    return FrameInput(stamp_ns, frame_id, lambda limit: image, source)


def png(image: np.ndarray, stamp_ns: int) -> FrameInput:
    """A PNG frame decoded as the nodes decode compressed images: size checked first."""
    data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    return FrameInput(stamp_ns, "cam", lambda limit: decode_compressed(data, limit))


def publish_all(runner: FrameRunner, step) -> list:
    """What a front end does with a step: every output 'published', then the frame finished."""
    for output in step.outputs:
        runner.published(step, output, runner.elapsed_ms(step))
    runner.finish(step)
    return step.outputs


def test_drops_by_reason_reference_and_records(pipeline, frames):
    runner = FrameRunner(pipeline, on_stamp_backwards="drop", max_input_pixels=SIZE[0] * SIZE[1])
    records = []

    def take(frame: FrameInput):
        step = runner.take(frame)
        records.append(step.record)
        return publish_all(runner, step)

    assert take(raw(frames[0], 10 * SECOND, source="first")) == []
    assert runner.reference.stamp_ns == 10 * SECOND and runner.reference.source == "first"
    # Too large, found before decoding (the PNG's header) and after it (a raw image) ...
    big = cv2.resize(frames[1], (640, 480))
    assert take(png(big, 11 * SECOND)) == []
    assert take(raw(big, 12 * SECOND)) == []

    def broken(limit: int) -> np.ndarray:
        raise ImageError("unsupported image encoding '64FC1'")

    # ... undecodable, and a stamp that goes backwards: all dropped, none the new reference.
    assert take(FrameInput(13 * SECOND, "cam", broken)) == []
    assert take(raw(frames[1], 9 * SECOND)) == []
    assert runner.reference.stamp_ns == 10 * SECOND

    [out] = take(raw(frames[1], 14 * SECOND, "cam2", source="second"))
    assert out.pairing == messages.PAIRING_SEQUENTIAL
    assert (out.reference.stamp_ns, out.reference.frame_id, out.reference.source) == \
        (10 * SECOND, "cam", "first")
    assert (out.current.stamp_ns, out.current.frame_id) == (14 * SECOND, "cam2")
    # The stamp check consumed an index: the stream counts every frame pushed into it.
    assert out.dropped_frames == 4 and out.tracks_reset and out.frame_index == 2
    assert len(out.result) > 100 and out.result.image_size1 == SIZE
    [out] = take(png(frames[2], 15 * SECOND))  # decoded from PNG: the same frame loop
    assert out.dropped_frames == 0 and not out.tracks_reset and out.frame_index == 3
    assert out.reference.stamp_ns == 14 * SECOND

    c = runner.counters
    assert (c.processed, c.published, c.resets) == (4, 2, 1)
    assert (c.dropped_invalid, c.dropped_stamp, c.dropped_unpaired, c.errors) == (3, 1, 0, 0)
    assert c.failed() == 4 and c.unpublished_drops == 0
    assert [r.status for r in records] == [framelog.FIRST] + [framelog.DROPPED] * 4 + \
        [framelog.MATCHED] * 2
    assert [r.reason for r in records[1:5]] == ["invalid", "invalid", "invalid", "stamp"]
    assert "PNG image of 640x480 (307200 pixels) exceeds" in records[1].note
    assert records[1].note.endswith("dropped before decoding")
    assert records[2].note == "640x480 image exceeds max_input_pixels=76800"
    assert "not newer than the previous" in records[4].note
    # Frame indices are the stream's: a frame dropped before the stream does not use one.
    assert [r.frame_index for r in records] == [0, 1, 1, 1, 1, 2, 3]
    matched = records[-1]
    assert matched.matches == len(out.result) and matched.keypoints == out.result.num_keypoints1
    assert matched.exit_layer == out.result.exit_layer and len(matched.published) == 1
    assert set(matched.timings) == {"preprocess_ms", "extract_ms", "match_ms", "total_ms"}
    summary = runner.summary()
    # Outcomes in the window: 2 messages and 4 drops (the first frame published nothing).
    assert summary["window_frames"] == 6 and summary["window_published"] == 2
    assert summary["invalid_rate"] == pytest.approx(4 / 6)


def test_superseded_errors_and_a_frame_that_failed_after_entering_the_stream(pipeline, frames):
    runner = FrameRunner(pipeline)
    publish_all(runner, runner.take(raw(frames[0], SECOND)))
    runner.received(3)
    runner.superseded()  # replaced in a node's buffer: never taken
    runner.error(RuntimeError("parameter change failed"), frame_lost=False)
    step = runner.take(raw(frames[1], 2 * SECOND))
    assert len(step.outputs) == 1
    # Publishing failed: the frame is lost, though it is the stream's reference now.
    assert runner.error(RuntimeError("publisher gone")) == "RuntimeError: publisher gone"
    assert step.record.status == framelog.ERROR and step.record.note == runner.last_error
    [out] = publish_all(runner, runner.take(raw(frames[2], 3 * SECOND)))
    assert out.reference.stamp_ns == 2 * SECOND  # what the matches were made against
    assert out.dropped_frames == 1  # the failed frame
    assert step.outputs[0].dropped_frames == 1  # the superseded frame, in the lost message
    c = runner.snapshot()
    assert (c.received, c.superseded, c.errors, c.published) == (3, 1, 2, 1)
    summary = runner.summary()
    # Outcomes: two errors and one message; received: those and the superseded frame.
    assert summary["error_rate"] == pytest.approx(2 / 3)
    assert summary["superseded_rate"] == pytest.approx(1 / 4)


def test_budget_facts_come_from_the_runner(pipeline):
    runner = FrameRunner(pipeline)
    assert runner.budget_ms == 0.0 and not runner.budget_enabled
    assert runner.budget_percentile == pipeline.params["budget_percentile"]
    assert runner.budget_settings().max_keypoints == pipeline.params["max_keypoints"]
    assert runner.clock() <= runner.clock()
    runner.on_stamp_backwards = "drop"
    assert runner.stream.on_stamp_backwards == "drop"
    assert runner.current_matcher == pipeline.detector_matcher


def test_stereo_pairs_by_stamp_and_publishes_both(pipeline, frames):
    runner: StereoRunner[str] = StereoRunner(pipeline)
    # Pairing: R1 has no left partner; it is dropped when the pair of stamp 2 goes through.
    assert runner.pair(False, 1, "R1") is None
    assert runner.pair(True, 2, "L2") is None
    assert runner.pair(False, 2, "R2") == (2, "L2", "R2")
    assert runner.pair(True, 1, "late") is None  # older than the last pair: dropped at once
    assert runner.counters.dropped_unpaired == 2 and runner.sync.stats.paired == 1

    def side(image: np.ndarray, stamp_ns: int, frame_id: str) -> FrameInput:
        return raw(np.ascontiguousarray(image), stamp_ns, frame_id)

    def pair(t: int):
        # The right camera sees the scene 6 px further left: a disparity of 6 px.
        left = frames[t]
        return side(left, (t + 1) * SECOND, "left"), side(np.roll(left, -6, axis=1),
                                                          (t + 1) * SECOND, "right")

    step = runner.take(*pair(0))
    [stereo] = publish_all(runner, step)
    assert step.record.status == framelog.FIRST and len(step.images) == 2
    assert stereo.pairing == messages.PAIRING_STEREO and stereo.tracks_reset
    assert (stereo.reference.frame_id, stereo.current.frame_id) == ("left", "right")
    assert stereo.reference.stamp_ns == stereo.current.stamp_ns == SECOND
    assert stereo.dropped_frames == 2
    disparity = stereo.result.keypoints0[:, 0] - stereo.result.keypoints1[:, 0]
    inner = stereo.result.keypoints0[:, 0] < SIZE[0] - 10  # away from the wrapped columns
    assert inner.sum() > 100 and np.median(np.abs(disparity[inner] - 6)) < 0.5

    # Left and right of different sizes: dropped as invalid, not processed.
    step = runner.take(pair(1)[0], side(frames[1][:200], 2 * SECOND, "right"))
    assert step.dropped and step.record.reason == "invalid" and "differ in size" in step.record.note
    assert runner.counters.processed == 1

    step = runner.take(*pair(2))
    temporal, stereo = publish_all(runner, step)
    assert step.record.status == framelog.MATCHED and len(step.record.published) == 2
    # The first temporal pair: its reference is where tracking (re)started.
    assert temporal.pairing == messages.PAIRING_TEMPORAL_LEFT and temporal.tracks_reset
    assert (temporal.reference.stamp_ns, temporal.current.stamp_ns) == (SECOND, 3 * SECOND)
    assert temporal.dropped_frames == stereo.dropped_frames == 1  # the same in both messages
    assert step.record.matches == len(temporal.result)
    # A point seen in stereo keeps its id over time: stereo ids are the left keypoints' tracks.
    ids = dict(zip(temporal.result.indices1.tolist(), temporal.result.track_ids.tolist()))
    same = [ids[i] == t for i, t in zip(stereo.result.indices0.tolist(),
                                        stereo.result.track_ids.tolist()) if i in ids]
    assert len(same) > 50 and all(same)
    c = runner.counters
    assert (c.processed, c.published, c.dropped_invalid, c.resets) == (2, 3, 1, 1)
