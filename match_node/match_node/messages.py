"""The one mapping from a MatchResult to the fields of match_node_msgs/Correspondences.

No ROS imports. `correspondence_fields` gives every field of the message, in the order of
Correspondences.msg, as plain Python values and numpy arrays of the message's exact element
types (nested messages as dicts). Both ways a message is made build from it, so they cannot
drift apart:

  * the node's rclpy message: `match_node.ros.conversions.result_to_msg`;
  * the bag writers (offline runner): `match_node.bags.msgtypes.make_message(typestore, MSGTYPE, fields)`.

Stamps are integers in nanoseconds; they are split into builtin_interfaces/Time
(sec = floor(ns / 1e9), nanosec = the remainder), so negative stamps keep nanosec in range.
"""
from __future__ import annotations

from typing import Any

import numpy as np

MSGTYPE = "match_node_msgs/msg/Correspondences"

# Constants of Correspondences.msg (checked against the .msg file by the tests).
PAIRING_SEQUENTIAL = 0      # reference = previous frame of the same camera
PAIRING_STEREO = 1          # reference = left image, current = right image, same stamp
PAIRING_TEMPORAL_LEFT = 2   # stereo mode: reference = previous left, current = left
PAIRINGS = {"sequential": PAIRING_SEQUENTIAL, "stereo": PAIRING_STEREO,
            "temporal_left": PAIRING_TEMPORAL_LEFT}

# How a pair's matching ended (exit_reason). The one definition: the models, the engine and
# the bag tools import these; the tests check them against the .msg file.
EXIT_FULL_DEPTH = 0         # every layer ran
EXIT_CONFIDENCE = 1         # LightGlue's confidence-based early exit
EXIT_BUDGET = 2             # stopped to meet the latency budget
EXIT_NO_KEYPOINTS = 3       # an image had no keypoints left, nothing to match
EXIT_NAMES = {EXIT_FULL_DEPTH: "full_depth", EXIT_CONFIDENCE: "confidence",
              EXIT_BUDGET: "budget", EXIT_NO_KEYPOINTS: "no_keypoints"}

# Per-match array fields and their element dtypes (little-endian, as in CDR on x86/ARM).
ARRAY_FIELDS: dict[str, np.dtype] = {
    "reference_x": np.dtype("<f4"), "reference_y": np.dtype("<f4"),
    "current_x": np.dtype("<f4"), "current_y": np.dtype("<f4"),
    "confidence": np.dtype("<f4"),
    "reference_index": np.dtype("<u4"), "current_index": np.dtype("<u4"),
    "track_id": np.dtype("<u8"),
    "refined": np.dtype("u1"),
}
# Fields that measure time: they differ between two runs of the same input.
TIMING_FIELDS = ("preprocess_ms", "extract_ms", "match_ms", "refine_ms", "total_ms", "wait_ms")


def time_fields(stamp_ns: int) -> dict[str, int]:
    """builtin_interfaces/Time fields of a stamp in nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return {"sec": sec, "nanosec": nanosec}


def time_to_ns(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


def correspondence_fields(result: Any, header_stamp_ns: int, frame_id: str,
                          reference_stamp_ns: int, reference_frame_id: str,
                          pairing: int = PAIRING_SEQUENTIAL, frame_index: int = 0,
                          dropped_frames: int = 0, tracks_reset: bool = False,
                          wait_ms: float = 0.0) -> dict[str, Any]:
    """Every field of a Correspondences message for `result`, in the .msg's order.

    `header` and `reference_stamp` are nested dicts ({"stamp": {"sec", "nanosec"},
    "frame_id"} and {"sec", "nanosec"}); per-match arrays are contiguous numpy arrays of the
    message's element type (float32, uint32, uint64); everything else is int, float, bool or
    str. `total_ms` is the result's; a caller that measures more (the node counts publishing
    preparation too) overwrites it.
    """
    if pairing not in PAIRINGS.values():
        raise ValueError(f"pairing must be one of {sorted(PAIRINGS.values())}, got {pairing}")
    t = result.timings

    def arr(values: np.ndarray, name: str) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=ARRAY_FIELDS[name])

    return {
        "header": {"stamp": time_fields(header_stamp_ns), "frame_id": str(frame_id)},
        "reference_stamp": time_fields(reference_stamp_ns),
        "reference_frame_id": str(reference_frame_id),
        "pairing": int(pairing),
        "reference_width": int(result.image_size0[0]),
        "reference_height": int(result.image_size0[1]),
        "current_width": int(result.image_size1[0]),
        "current_height": int(result.image_size1[1]),
        "reference_x": arr(result.keypoints0[:, 0], "reference_x"),
        "reference_y": arr(result.keypoints0[:, 1], "reference_y"),
        "current_x": arr(result.keypoints1[:, 0], "current_x"),
        "current_y": arr(result.keypoints1[:, 1], "current_y"),
        "confidence": arr(result.scores, "confidence"),
        "reference_index": arr(result.indices0, "reference_index"),
        "current_index": arr(result.indices1, "current_index"),
        "track_id": arr(result.track_ids, "track_id"),
        "refined": arr(result.refined if len(result.refined) == len(result)
                       else np.zeros(len(result)), "refined"),
        "reference_num_keypoints": int(result.num_keypoints0),
        "current_num_keypoints": int(result.num_keypoints1),
        "extractor": str(result.extractor),
        "matcher": str(result.matcher),
        "exit_layer": int(result.exit_layer),
        "num_layers": int(result.num_layers),
        "exit_reason": int(result.exit_reason),
        "exit_guard_fired": bool(result.guard_fired),
        "reference_kept": int(result.kept0),
        "current_kept": int(result.kept1),
        "preprocess_ms": float(t["preprocess_ms"]),
        "extract_ms": float(t["extract_ms"]),
        "match_ms": float(t["match_ms"]),
        "refine_ms": float(t.get("refine_ms", 0.0)),
        "total_ms": float(t["total_ms"]),
        "wait_ms": float(wait_ms),
        "latency_budget_ms": float(result.latency_budget_ms),
        "keypoint_cap": int(result.keypoint_cap),
        "extraction_scale": float(result.extraction_scale),
        "frame_index": int(frame_index),
        "dropped_frames": int(dropped_frames),
        "tracks_reset": bool(tracks_reset),
    }


def msg_arrays(msg: Any) -> dict[str, np.ndarray]:
    """The per-match arrays of a Correspondences message (rclpy's or rosbags') as numpy
    arrays, for consumers: reference_xy and current_xy (N x 2 float32), confidence,
    reference_index, current_index (int64) and track_id (uint64)."""
    return {
        "reference_xy": np.stack([np.asarray(msg.reference_x, np.float32),
                                  np.asarray(msg.reference_y, np.float32)], -1),
        "current_xy": np.stack([np.asarray(msg.current_x, np.float32),
                                np.asarray(msg.current_y, np.float32)], -1),
        "confidence": np.asarray(msg.confidence, np.float32),
        "reference_index": np.asarray(msg.reference_index, np.int64),
        "current_index": np.asarray(msg.current_index, np.int64),
        "track_id": np.asarray(msg.track_id, np.uint64),
    }
