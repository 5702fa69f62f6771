"""Conversions between ROS messages and the core's numpy types."""
from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from match_node_msgs.msg import Correspondences
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..image import decode_compressed, decode_raw
from ..pipeline import MatchResult


def image_to_array(msg: Image | CompressedImage) -> np.ndarray:
    """Decode an Image (any supported encoding, step padding honoured) or a CompressedImage."""
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.data)
    return decode_raw(msg.data, msg.height, msg.width, msg.encoding, msg.step,
                      bool(msg.is_bigendian))


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _typed(values: np.ndarray, typecode: str, dtype: str) -> array.array:
    # array.array from bytes is a memcpy; the message setters take array.array as is.
    return array.array(typecode, np.ascontiguousarray(values, dtype=dtype).tobytes())


def result_to_msg(result: MatchResult, header: Header, reference_header: Header,
                  pairing: int = Correspondences.PAIRING_SEQUENTIAL, frame_index: int = 0,
                  dropped_frames: int = 0, tracks_reset: bool = False) -> Correspondences:
    msg = Correspondences()
    msg.header = header
    msg.reference_stamp = reference_header.stamp
    msg.reference_frame_id = reference_header.frame_id
    msg.pairing = pairing
    msg.reference_width, msg.reference_height = map(int, result.image_size0)
    msg.current_width, msg.current_height = map(int, result.image_size1)
    msg.reference_x = _typed(result.keypoints0[:, 0], "f", "<f4")
    msg.reference_y = _typed(result.keypoints0[:, 1], "f", "<f4")
    msg.current_x = _typed(result.keypoints1[:, 0], "f", "<f4")
    msg.current_y = _typed(result.keypoints1[:, 1], "f", "<f4")
    msg.confidence = _typed(result.scores, "f", "<f4")
    msg.reference_index = _typed(result.indices0, "I", "<u4")
    msg.current_index = _typed(result.indices1, "I", "<u4")
    msg.track_id = _typed(result.track_ids, "Q", "<u8")
    msg.reference_num_keypoints = int(result.num_keypoints0)
    msg.current_num_keypoints = int(result.num_keypoints1)
    msg.extractor = result.extractor
    msg.matcher = result.matcher
    msg.exit_layer = int(result.exit_layer)
    msg.num_layers = int(result.num_layers)
    msg.exit_reason = int(result.exit_reason)
    msg.reference_kept = int(result.kept0)
    msg.current_kept = int(result.kept1)
    t = result.timings
    msg.preprocess_ms = float(t["preprocess_ms"])
    msg.extract_ms = float(t["extract_ms"])
    msg.match_ms = float(t["match_ms"])
    msg.total_ms = float(t["total_ms"])
    msg.latency_budget_ms = float(result.latency_budget_ms)
    msg.keypoint_cap = int(result.keypoint_cap)
    msg.extraction_scale = float(result.extraction_scale)
    msg.frame_index = int(frame_index)
    msg.dropped_frames = int(dropped_frames)
    msg.tracks_reset = bool(tracks_reset)
    return msg


def msg_arrays(msg: Correspondences) -> dict[str, np.ndarray]:
    """The per-match arrays of a Correspondences message as numpy arrays (for consumers)."""
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
