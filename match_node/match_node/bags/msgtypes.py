"""ROS 2 message types without ROS: their names, the typestore, message definitions, and
messages built from plain values (numpy arrays, mappings) for bags/rosbag.py to write.

No rclpy and no bag files here: messages are rosbags' dataclasses; their CDR bytes are exactly
what ROS 2 records and publishes.

    from match_node.bags import msgtypes
    ts = msgtypes.typestore()
    msg = msgtypes.image_message(ts, rgb, stamp_ns, "cam")            # sensor_msgs/Image
    msg = msgtypes.make_message(ts, msgtypes.CORRESPONDENCES, fields, strict=True)

Typestore: the ROS 2 Kilted message definitions of rosbags (`Stores.ROS2_KILTED`; the
sensor_msgs, std_msgs, geometry_msgs and rosgraph_msgs used here are identical in Humble,
Jazzy and Kilted, so the bytes and type hashes are too), plus match_node_msgs/Correspondences
registered from its .msg file: the installed one (AMENT_PREFIX_PATH/share/match_node_msgs/msg/,
where `ament_index` looks) or else the one in this repository.

`message_definition` gives a type's full definition (its .msg text and that of every nested
type, in rosbag2's format) and RIHS01 hash, which written bags carry so that `ros2 bag`,
Foxglove and rosbags can decode them without match_node_msgs installed; the Correspondences
definition is the .msg file verbatim, comments included.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

from ..messages import MSGTYPE as CORRESPONDENCES, time_fields

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
CLOCK = "rosgraph_msgs/msg/Clock"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

DEFAULT_STORE = Stores.ROS2_KILTED
_SEPARATOR = "=" * 80


class BagError(RuntimeError):
    """A bag or message cannot be read, written or built as asked; the message says why."""


# --- typestore -------------------------------------------------------------------------------
def correspondences_msg_path() -> Path:
    """Correspondences.msg: the installed package's (ament index) or this repository's."""
    tried = []
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        marker = Path(prefix) / "share" / "ament_index" / "resource_index" / "packages" / "match_node_msgs"
        candidate = Path(prefix) / "share" / "match_node_msgs" / "msg" / "Correspondences.msg"
        tried.append(str(candidate))
        if marker.exists() and candidate.is_file():
            return candidate
    candidate = Path(__file__).resolve().parents[3] / "match_node_msgs" / "msg" / "Correspondences.msg"
    tried.append(str(candidate))
    if candidate.is_file():
        return candidate
    raise BagError("cannot find match_node_msgs/msg/Correspondences.msg: build and source the "
                   "workspace (colcon build; source install/setup.bash) or run from the "
                   "repository. Tried: " + ", ".join(tried))


@functools.lru_cache(maxsize=None)
def _correspondences_text() -> str:
    return correspondences_msg_path().read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def typestore(store: Stores | str = DEFAULT_STORE):
    """A rosbags typestore of `store` with match_node_msgs/Correspondences registered.

    Shared (cached per store): register more types on a copy from `get_typestore` instead.
    """
    store = Stores(store) if isinstance(store, str) else store
    ts = get_typestore(store)
    ts.register(get_types_from_msg(_correspondences_text(), CORRESPONDENCES))
    return ts


def message_definition(ts, msgtype: str) -> tuple[str, str]:
    """(msgdef, rihs01) of `msgtype` as rosbag2 stores them: the type's .msg text, then each
    nested type after a line of 80 '=' and 'MSG: pkg/Name'. Correspondences keeps its .msg
    file verbatim (comments included); other types come from the typestore."""
    text, _ = ts.generate_msgdef(msgtype, ros_version=2)
    if msgtype == CORRESPONDENCES:
        _, sep, rest = text.partition("\n" + _SEPARATOR + "\n")
        text = _correspondences_text().rstrip("\n") + "\n" + (sep + rest if sep else "")
    return text, ts.hash_rihs01(msgtype)


def _full_name(name: str) -> str:
    parts = name.strip().split("/")
    return f"{parts[0]}/msg/{parts[-1]}" if len(parts) == 2 else name.strip()


def types_from_msgdef(msgtype: str, msgdef: str) -> dict:
    """The types of a rosbag2 message definition (a type and its dependencies), for
    `Typestore.register`: what a reader needs to decode a connection from the bag alone."""
    if msgdef.startswith(_SEPARATOR + "\nIDL: "):
        raise BagError(f"{msgtype}: IDL message definitions are not supported")
    types: dict = {}
    for index, section in enumerate(msgdef.split(_SEPARATOR + "\n")):
        name = msgtype
        if index > 0:
            header, _, section = section.partition("\n")
            if not header.startswith("MSG: "):
                raise BagError(f"{msgtype}: malformed message definition section {header!r}")
            name = _full_name(header[5:])
        types.update(get_types_from_msg(section, name))
    return types


# --- building messages -----------------------------------------------------------------------
_NUMPY_TYPES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "octet": np.uint8,
    "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
    "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64,
    "float32": np.float32, "float64": np.float64,
}
_PYTHON_TYPES = {"bool": bool, "float32": float, "float64": float, "string": str, "wstring": str}


def _zero(ts, kind: Nodetype, spec: Any) -> Any:
    if kind == Nodetype.NAME:
        return make_message(ts, spec, {})
    if kind == Nodetype.BASE:
        return _PYTHON_TYPES.get(spec[0], int)()
    (item_kind, item_spec), length = spec
    if kind == Nodetype.SEQUENCE:
        length = 0
    if item_kind == Nodetype.BASE and item_spec[0] in _NUMPY_TYPES:
        return np.zeros(length, _NUMPY_TYPES[item_spec[0]])
    return [_zero(ts, item_kind, item_spec) for _ in range(length)]


def _convert(ts, msgtype: str, name: str, kind: Nodetype, spec: Any, value: Any) -> Any:
    if kind == Nodetype.NAME:
        return make_message(ts, spec, value) if isinstance(value, Mapping) else value
    if kind == Nodetype.BASE:
        return _PYTHON_TYPES.get(spec[0], int)(value)
    (item_kind, item_spec), length = spec
    if item_kind == Nodetype.BASE and item_spec[0] in _NUMPY_TYPES:
        value = np.ascontiguousarray(value, dtype=_NUMPY_TYPES[item_spec[0]]).reshape(-1)
    else:
        value = [_convert(ts, msgtype, name, item_kind, item_spec, v) for v in value]
    if kind == Nodetype.ARRAY and len(value) != length:
        raise BagError(f"{msgtype}.{name}: expected {length} elements, got {len(value)}")
    return value


def make_message(ts, msgtype: str, values: Mapping[str, Any], strict: bool = False) -> Any:
    """A rosbags message of `msgtype` from plain values: nested messages as mappings (or
    messages), numeric arrays as anything numpy converts (cast to the field's element type).
    Fields not given are zero, unless `strict` (then every field must be given). Unknown
    names are always refused."""
    if msgtype not in ts.fielddefs:
        raise BagError(f"message type {msgtype} is not in the typestore")
    _, fields = ts.fielddefs[msgtype]
    names = [name for name, _ in fields]
    unknown = set(values) - set(names)
    if unknown:
        raise BagError(f"{msgtype} has no field(s) {', '.join(sorted(unknown))}")
    if strict and set(names) - set(values):
        raise BagError(f"{msgtype}: missing field(s) "
                       f"{', '.join(n for n in names if n not in values)}")
    kwargs = {}
    for name, (kind, spec) in fields:
        kwargs[name] = (_convert(ts, msgtype, name, kind, spec, values[name]) if name in values
                        else _zero(ts, kind, spec))
    return ts.types[msgtype](**kwargs)


def header_fields(stamp_ns: int, frame_id: str) -> dict:
    return {"stamp": time_fields(stamp_ns), "frame_id": frame_id}


def image_message(ts, image: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8"):
    """sensor_msgs/Image of an HxWx3 RGB (rgb8 or bgr8) or HxW (mono8) uint8 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise BagError(f"image_message expects uint8 pixels, got {image.dtype}")
    if encoding == "bgr8":
        image = image[..., ::-1]
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(encoding)
    if channels is None or (image.ndim == 3 and image.shape[2] != channels) \
            or (image.ndim == 2 and channels != 1):
        raise BagError(f"cannot write a {image.shape} array as {encoding}")
    h, w = image.shape[:2]
    return make_message(ts, IMAGE, {
        "header": header_fields(stamp_ns, frame_id), "height": h, "width": w,
        "encoding": encoding, "is_bigendian": 0, "step": w * channels,
        "data": np.ascontiguousarray(image).reshape(-1)})


def compressed_image_message(ts, image: np.ndarray, stamp_ns: int, frame_id: str,
                             fmt: str = "png", quality: int = 95):
    """sensor_msgs/CompressedImage (png: lossless, or jpeg) of an RGB or gray uint8 array."""
    import cv2

    if fmt not in ("png", "jpeg"):
        raise BagError(f"compressed format must be png or jpeg, got {fmt!r}")
    bgr = image[..., ::-1] if image.ndim == 3 else image
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(bgr), params)
    if not ok:
        raise BagError(f"cannot encode a {image.shape} image as {fmt}")
    format_ = ("rgb8; " if image.ndim == 3 else "mono8; ") + f"{fmt} compressed " + \
        ("bgr8" if image.ndim == 3 else "mono8")  # image_transport's convention
    return make_message(ts, COMPRESSED_IMAGE, {
        "header": header_fields(stamp_ns, frame_id), "format": format_, "data": data.reshape(-1)})


def camera_info_message(ts, K: np.ndarray, width: int, height: int, stamp_ns: int,
                        frame_id: str, P: np.ndarray | None = None, D: Iterable[float] = (),
                        distortion_model: str = "plumb_bob"):
    """sensor_msgs/CameraInfo of a pinhole camera. P defaults to [K | 0]; for the right camera
    of a stereo pair P[0, 3] = -fx * baseline (the ROS convention). D empty: no distortion."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, np.float64).reshape(3, 4)
    D = np.asarray(list(D), np.float64)
    if distortion_model == "plumb_bob" and D.size == 0:
        D = np.zeros(5)
    return make_message(ts, CAMERA_INFO, {
        "header": header_fields(stamp_ns, frame_id), "height": int(height), "width": int(width),
        "distortion_model": distortion_model, "d": D, "k": K.reshape(-1),
        "r": np.eye(3).reshape(-1), "p": P.reshape(-1)})
