"""A long bag in chunks: frame ranges matched in parallel, stitched into the single-run result.

Chunk k of a bag's image topic covers frames [start, stop) and is run from frame start - 1,
the one-frame overlap: that frame (the previous chunk's last) enters a fresh stream first, so
the chunk's first pair (overlap -> start) is the same pair a single run matches, with the same
keypoints (extraction is per frame and deterministic). What a single run carries across frames
is then either carried over by `stitch` or checked:

* track ids: each chunk numbers its tracks from 1. `stitch` renumbers them in order: a match
  of the chunk's first pair whose reference keypoint (an overlap keypoint) has a track id at
  the end of the previous chunk inherits it, every other new local id takes the next global
  id, in the order a single run allocates them (match order). The `tracks_reset` flag of that
  first message, each message's `frame_index` and the `dropped_frames` carried over a chunk
  border are set as a single run sets them.
* matcher 'auto': the texture switch (with hysteresis) of the overlap frame must be in the
  same state in both chunks (checked: it is whenever the scene's texture is away from the
  thresholds); tracker spaces (which matcher's keypoints the ids refer to) are compared.
* the overlap frame must have entered the stream in the previous chunk (not dropped as an
  unusable image or by `on_stamp_backwards: drop`); restarts (stamp jumps, size changes) at
  or after it are reproduced exactly.
A failed check raises ChunkMismatch and the caller runs the bag whole instead.

Not carried, so not identical (`inexact_reasons` names them; the batch runner refuses chunks
for them unless told to accept the difference):
* `refine` other than 'none': a frame's refined positions are the next pair's reference
  positions, and each is refined from the previous ones, back to the start of the bag;
* LightGlue's early exit with `exit_guard` > 0: the guard's expected match ratio is a running
  average over the whole bag, so an exit near the guard's limit may go the other way;
* a latency budget (`latency_budget_ms` > 0): nothing is reproducible run to run anyway.
Timing fields always differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import offline, rosbag as bags
from ..engine.framelog import DROPPED, ERROR, FIRST, FrameLog


class ChunkMismatch(Exception):
    """The chunks of a bag cannot be stitched into the single-run result (a check failed)."""


def plan(frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of `chunk_frames` frames (the last one takes the rest when
    it would be shorter than half a chunk); one range when chunking is off (0)."""
    if chunk_frames <= 0 or frames <= chunk_frames:
        return [(0, frames)]
    starts = list(range(0, frames, chunk_frames))
    if len(starts) > 1 and frames - starts[-1] < chunk_frames // 2:
        starts.pop()
    return [(a, b) for a, b in zip(starts, starts[1:] + [frames])]


def inexact_reasons(values: dict[str, Any]) -> list[str]:
    """Parameters (validated node values) for which chunks are not identical to one run."""
    reasons = []
    if values["refine"] != "none":
        reasons.append(f"refine={values['refine']} (set refine=none): refined positions "
                       "chain from the start of the bag")
    if values["exit_guard"] > 0 and values["depth_confidence"] != 0:
        reasons.append("exit_guard>0 with LightGlue's early exit (set exit_guard=0 or "
                       "depth_confidence=0): the guard's match ratio averages the whole bag")
    if values["latency_budget_ms"] > 0:
        reasons.append("latency_budget_ms>0: budgeted runs are not reproducible")
    return reasons


@dataclass
class ChunkOutput:
    position: int                 # index of its image among the topic's messages
    log_time_ns: int
    fields: dict[str, Any]
    reference_log_time_ns: int


@dataclass
class ChunkResult:
    """One chunk's messages and frame records, and the stream's state where it matters."""
    start: int
    stop: int
    extra: dict[str, Any]                       # offline.summary_extra of the chunk's run
    outputs: list[ChunkOutput] = field(default_factory=list)
    errors: list[np.ndarray] = field(default_factory=list)
    log: list[FrameLog] = field(default_factory=list)   # frames start .. stop - 1
    overlap_status: str | None = None            # the overlap frame in this chunk
    overlap_switch: tuple | None = None
    overlap_log_time_ns: int | None = None
    first_space: str | None = None               # tracker space after the first message
    end_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    end_space: str | None = None
    end_switch: tuple = ()
    end_drops: int = 0
    end_status: str = ""
    end_index: int = -1                          # the stream's index of its last frame


def _switch_state(stream) -> tuple:
    switch = stream.switch
    return (switch.current, getattr(switch, "_streak", 0))


def run_chunk(in_bag: str | Path, topic: str, values: dict[str, Any], pipeline,
              start: int, stop: int, *, output_topic: str | None = None,
              ground_truth: str = offline.GROUND_TRUTH_HOMOGRAPHY,
              progress: Callable[[FrameLog], None] | None = None) -> ChunkResult:
    """Run frames [start, stop) of `topic` (from start - 1, the overlap) with `pipeline`."""
    setup = offline.prepare(in_bag, topic, values, output_topic=output_topic, copy_topics=[],
                            ground_truth=ground_truth, pipeline=pipeline)
    runner, stream = setup.runner, setup.runner.runner.stream
    result = ChunkResult(start, stop, offline.summary_extra(setup, ""))
    first = max(start - 1, 0)
    for position, message in enumerate(bags.messages(in_bag, [topic])):
        if position < first:
            continue  # not decoded: only the raw bytes were read
        if position >= stop:
            break
        outputs = runner.process(bags.image_from_message(message, decode=False))
        record = runner.log[-1]
        if position < start:  # the overlap frame: the state it leaves, no message
            result.overlap_status = record.status
            result.overlap_switch = _switch_state(stream)
            result.overlap_log_time_ns = message.log_time_ns
            continue
        for out in outputs:
            offline.score(out, setup.truth, record, result.errors)
            result.outputs.append(ChunkOutput(position, out.log_time_ns, out.fields,
                                              out.reference_log_time_ns))
            if result.first_space is None:
                result.first_space = stream.tracker.space or ""
        result.log.append(record)
        if progress:
            progress(record)
    tracker = stream.tracker
    result.end_ids = np.asarray(getattr(tracker, "_ids"), np.uint64).copy()
    result.end_space = tracker.space
    result.end_switch = _switch_state(stream)
    result.end_drops = runner.runner.counters.unpublished_drops
    result.end_status = result.log[-1].status if result.log else ""
    result.end_index = stream.frame_index
    return result


@dataclass
class Stitched:
    outputs: list[ChunkOutput]
    errors: list[np.ndarray]
    log: list[FrameLog]


def stitch(chunks: list[ChunkResult]) -> Stitched:
    """The single-run messages and frame records from a bag's chunks (in order); raises
    ChunkMismatch where the chunks cannot reproduce the single run."""
    next_id, last_ids, space = 1, np.zeros(0, np.uint64), None
    drops, last_index = 0, -1
    stitched = Stitched([], [], [])
    for k, chunk in enumerate(chunks):
        offset = 0
        if k:
            before = chunks[k - 1]
            if before.end_status in (DROPPED, ERROR, "") or chunk.overlap_status != FIRST:
                raise ChunkMismatch(f"frame {chunk.start - 1} (a chunk border) did not enter "
                                    f"the stream ({before.end_status or 'no frames'})")
            if chunk.overlap_switch != before.end_switch:
                raise ChunkMismatch(f"texture switch at frame {chunk.start - 1} differs across "
                                    f"the chunk border: {before.end_switch} vs "
                                    f"{chunk.overlap_switch}")
            offset = last_index  # the overlap frame is the chunk stream's frame 0
        mapping: dict[int, int] = {0: 0}
        for n, out in enumerate(chunk.outputs):
            fields = dict(out.fields)
            ids = [int(i) for i in fields["track_id"]]
            if k and n == 0:
                inherit = (out.reference_log_time_ns == chunk.overlap_log_time_ns
                           and space is not None and space == chunk.first_space)
                if inherit:
                    for local, index in zip(ids, fields["reference_index"]):
                        inherited = int(last_ids[index]) if index < len(last_ids) else 0
                        if inherited:
                            mapping[local] = inherited
                        elif local not in mapping:
                            mapping[local], next_id = next_id, next_id + 1
                fields["tracks_reset"] = not inherit
            if n == 0:
                fields["dropped_frames"] = int(fields["dropped_frames"]) + drops
                drops = 0
            for local in ids:
                if local not in mapping:
                    mapping[local], next_id = next_id, next_id + 1
            fields["track_id"] = np.array([mapping[i] for i in ids], np.uint64)
            fields["frame_index"] = int(fields["frame_index"]) + offset
            stitched.outputs.append(ChunkOutput(out.position, out.log_time_ns, fields,
                                                out.reference_log_time_ns))
        for record in chunk.log:
            if record.frame_index >= 0:
                record.frame_index += offset
            stitched.log.append(record)
        stitched.errors.extend(chunk.errors)
        last_ids = np.array([mapping.get(int(i), 0) for i in chunk.end_ids], np.uint64)
        space = chunk.end_space
        drops += chunk.end_drops
        last_index = chunk.end_index + offset
    return stitched


def write_stitched(in_bag: str | Path, out_bag: str | Path, topic: str, output_topic: str,
                   stitched: Stitched, storage: str, copy_topics: list[str]) -> int:
    """Write the stitched messages and the copied topics, in the order a single run writes
    them; returns the number of messages written."""
    from .msgtypes import CORRESPONDENCES

    by_position: dict[int, list[ChunkOutput]] = {}
    for out in stitched.outputs:
        by_position.setdefault(out.position, []).append(out)
    count, position = 0, -1
    with bags.BagWriter(out_bag, storage=storage) as writer:
        writer.add_topic(output_topic, CORRESPONDENCES)
        connections: dict[str, Any] = {}
        for message in bags.messages(in_bag, [topic] + copy_topics):
            if message.topic == topic:
                position += 1
                for out in by_position.get(position, []):
                    writer.write_fields(output_topic, out.log_time_ns, out.fields)
                    count += 1
                continue
            offline.copy_message(writer, connections, message)
    return count
