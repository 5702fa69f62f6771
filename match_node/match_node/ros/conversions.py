"""Conversions between ROS messages and the core's numpy types."""
from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from match_node_msgs.msg import Correspondences
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ..engine.image import ImageError, checked_stamp_ns, decode_compressed, decode_raw
from ..messages import ARRAY_FIELDS, correspondence_fields, msg_arrays  # noqa: F401 (re-exported for consumers)
from ..engine.results import MatchResult


def image_to_array(msg: Image | CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """Decode an Image (any supported encoding, step padding honoured) or a CompressedImage.

    Raises ImageError for a message that cannot enter the stream: a malformed header stamp
    (checked first: the frame would otherwise be placed at a wrong time), more than
    `max_pixels` pixels (a CompressedImage's size is read from its header, before decoding),
    a bad encoding or bad data.
    """
    checked_stamp_ns(int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.data, max_pixels)
    if max_pixels is not None and msg.height * msg.width > max_pixels:
        raise ImageError(f"{msg.width}x{msg.height} image exceeds max_input_pixels={max_pixels}")
    return decode_raw(msg.data, msg.height, msg.width, msg.encoding, msg.step,
                      bool(msg.is_bigendian))


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _typed(values: np.ndarray, typecode: str) -> array.array:
    # array.array from bytes is a memcpy; the message setters take array.array as is.
    return array.array(typecode, np.ascontiguousarray(values).tobytes())


# numpy element type of the per-match arrays (messages.ARRAY_FIELDS) -> array.array typecode
_TYPECODES = {"<f4": "f", "<u4": "I", "<u8": "Q", "|u1": "B"}


def fields_to_msg(fields: dict) -> Correspondences:
    """The rclpy message of `messages.correspondence_fields`'s output (every field set)."""
    msg = Correspondences()
    for name, value in fields.items():
        if name == "header":
            value = Header(stamp=Time(**value["stamp"]), frame_id=value["frame_id"])
        elif name == "reference_stamp":
            value = Time(**value)
        elif name in ARRAY_FIELDS:
            value = _typed(value, _TYPECODES[ARRAY_FIELDS[name].str])
        setattr(msg, name, value)
    return msg


def result_to_msg(result: MatchResult, header: Header, reference_header: Header,
                  pairing: int = Correspondences.PAIRING_SEQUENTIAL, frame_index: int = 0,
                  dropped_frames: int = 0, tracks_reset: bool = False,
                  wait_ms: float = 0.0) -> Correspondences:
    """A Correspondences message for `result` (the mapping is messages.correspondence_fields)."""
    return fields_to_msg(correspondence_fields(
        result, stamp_to_ns(header.stamp), header.frame_id, stamp_to_ns(reference_header.stamp),
        reference_header.frame_id, pairing=pairing, frame_index=frame_index,
        dropped_frames=dropped_frames, tracks_reset=tracks_reset, wait_ms=wait_ms))
