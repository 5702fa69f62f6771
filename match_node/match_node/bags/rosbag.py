"""ROS 2 bags without ROS: read and write sqlite3 and MCAP bags with the `rosbags` library.

No rclpy here (the core must run without ROS). Messages are rosbags' dataclasses; their CDR
bytes are exactly what ROS 2 records and publishes.

    from match_node.bags import rosbag as bags
    for frame in bags.read_images("run.bag", ["/camera/image_raw"]):   # in log-time order
        frame.image, frame.stamp_ns, frame.log_time_ns, frame.frame_id
    info = bags.read_camera_info("run.bag", "/camera/camera_info")     # K, D, P, size
    with bags.BagWriter("out.bag", storage="mcap") as bag:
        bag.add_topic("/camera/image_raw", bags.IMAGE)
        bag.write("/camera/image_raw", log_time_ns, bags.image_message(ts, rgb, stamp_ns, "cam"))

Typestore: the ROS 2 Kilted message definitions of rosbags (`Stores.ROS2_KILTED`; the
sensor_msgs, std_msgs, geometry_msgs and rosgraph_msgs used here are identical in Humble,
Jazzy and Kilted, so the bytes and type hashes are too), plus match_node_msgs/Correspondences
registered from its .msg file: the installed one (AMENT_PREFIX_PATH/share/match_node_msgs/msg/,
where `ament_index` looks) or else the one in this repository.

Written bags carry each connection's full message definition (the .msg text of the type and
of every nested type, in rosbag2's format) and its RIHS01 type hash, so `ros2 bag`, Foxglove
and rosbags itself can decode them without match_node_msgs installed. The Correspondences
definition is the .msg file verbatim, comments included.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

from ..messages import MSGTYPE as CORRESPONDENCES, time_fields, time_to_ns

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
FLOAT64_MULTI_ARRAY = "std_msgs/msg/Float64MultiArray"
CLOCK = "rosgraph_msgs/msg/Clock"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

STORAGES = ("sqlite3", "mcap")
DEFAULT_STORE = Stores.ROS2_KILTED
_SEPARATOR = "=" * 80


class BagError(RuntimeError):
    """A bag cannot be read or written as asked; the message says why."""


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


def typestore_from_bag(path: str | Path, base: Stores | str = Stores.EMPTY):
    """A fresh typestore with every type defined by the bag's own connections (nothing else
    unless `base` is given): proves that a bag is self-describing."""
    ts = get_typestore(Stores(base) if isinstance(base, str) else base)
    with Reader(path) as reader:
        for connection in reader.connections:
            if connection.msgdef.data and connection.msgtype not in ts.types:
                ts.register(types_from_msgdef(connection.msgtype, connection.msgdef.data))
    return ts


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


# --- writing ---------------------------------------------------------------------------------
_INFINITE = QosTime(9223372036, 854775807)  # rclcpp's infinite duration, as rosbag2 records it


def qos_profile(kind: str) -> Qos:
    """Offered QoS recorded for a topic: 'reliable' (keep last 10), 'sensor' (best effort,
    keep last 5, as rclcpp's SensorDataQoS) or 'latched' (reliable, transient local, 1)."""
    reliability, depth, durability = {
        "reliable": (QosReliability.RELIABLE, 10, QosDurability.VOLATILE),
        "sensor": (QosReliability.BEST_EFFORT, 5, QosDurability.VOLATILE),
        "latched": (QosReliability.RELIABLE, 1, QosDurability.TRANSIENT_LOCAL),
    }[kind]
    return Qos(QosHistory.KEEP_LAST, depth, reliability, durability, _INFINITE, _INFINITE,
               QosLiveliness.AUTOMATIC, _INFINITE, False)


class BagWriter:
    """A new rosbag2 bag (a directory: metadata.yaml and one .db3 or .mcap file).

    Topics are added once with their type (the message definition and type hash are stored
    with them); `write` takes a rosbags message, `write_fields` plain values, `write_raw` CDR
    bytes (e.g. copied from another bag). `version` is the rosbag2 metadata version: 9 (Jazzy,
    Kilted; default) or 8 (Iron; older readers are more likely to accept it).
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", ts=None,
                 version: int = 9) -> None:
        if storage not in STORAGES:
            raise BagError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; choose a new path")
        self.storage = storage
        self.ts = ts or typestore()
        self._writer = Writer(self.path, version=version, storage_plugin=StoragePlugin[storage.upper()])
        # A non-empty custom_data: rosbags writes `custom_data: null` otherwise, which is
        # not the mapping rosbag2's metadata reader expects.
        self._writer.set_custom_data("match_node.writer", "match_node.bags")
        self._writer.open()
        self._connections: dict[str, Connection] = {}

    def add_topic(self, topic: str, msgtype: str, qos: str | Qos = "reliable",
                  msgdef: str | None = None, rihs01: str | None = None) -> Connection:
        """Register `topic` (again with the same type: no-op). `msgdef`/`rihs01` default to
        the typestore's; give them to copy a connection of another bag unchanged."""
        if topic in self._connections:
            connection = self._connections[topic]
            if connection.msgtype != msgtype:
                raise BagError(f"topic {topic} already has type {connection.msgtype}")
            return connection
        if msgdef is None or rihs01 is None:
            if msgtype not in self.ts.types:
                raise BagError(f"message type {msgtype} is not in the typestore")
            msgdef, rihs01 = message_definition(self.ts, msgtype)
        profile = qos_profile(qos) if isinstance(qos, str) else qos
        connection = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=rihs01,
                                                 offered_qos_profiles=[profile])
        self._connections[topic] = connection
        return connection

    def _connection(self, topic: str) -> Connection:
        try:
            return self._connections[topic]
        except KeyError:
            raise BagError(f"topic {topic} was not added to {self.path}") from None

    def write(self, topic: str, log_time_ns: int, message: Any) -> None:
        connection = self._connection(topic)
        data = self.ts.serialize_cdr(message, connection.msgtype)
        self._writer.write(connection, int(log_time_ns), data)

    def write_fields(self, topic: str, log_time_ns: int, fields: Mapping[str, Any]) -> None:
        """Write a message given as plain values (every field required: see make_message)."""
        msgtype = self._connection(topic).msgtype
        self.write(topic, log_time_ns, make_message(self.ts, msgtype, fields, strict=True))

    def write_raw(self, topic: str, log_time_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._connection(topic), int(log_time_ns), data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def correspondences_topic_for(image_topic: str) -> str:
    """`<namespace of the camera>/correspondences`: /cam/image_raw -> /cam/correspondences
    (and /cam/image_raw/compressed too), where a node in that namespace publishes."""
    topic = image_topic.rstrip("/")
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    return f"{topic.rsplit('/', 1)[0]}/correspondences"


# --- reading ---------------------------------------------------------------------------------
@dataclass
class BagMessage:
    """One recorded message: its connection, log (receive) time and CDR bytes."""
    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes
    connection: Connection


@dataclass
class TopicSummary:
    msgtype: str
    count: int
    msgdef: str
    rihs01: str


def topics(path: str | Path) -> dict[str, TopicSummary]:
    """Topics of a bag with type, message count, definition and type hash."""
    with Reader(path) as reader:
        out: dict[str, TopicSummary] = {}
        for c in reader.connections:
            if c.topic in out:
                out[c.topic].count += c.msgcount
            else:
                out[c.topic] = TopicSummary(c.msgtype, c.msgcount, c.msgdef.data, c.digest)
        return out


def storage_of(path: str | Path) -> str:
    """'sqlite3' or 'mcap'."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.iterdir())
    for file in files:
        if file.suffix == ".mcap":
            return "mcap"
        if file.suffix == ".db3":
            return "sqlite3"
    raise BagError(f"{path}: no .db3 or .mcap file")


def messages(path: str | Path, topics: Iterable[str] | None = None,
             msgtypes: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Messages of the chosen topics (all by default) and/or types, in log-time order."""
    with Reader(path) as reader:
        wanted_topics = set(topics) if topics is not None else None
        wanted_types = set(msgtypes) if msgtypes is not None else None
        connections = [c for c in reader.connections
                       if (wanted_topics is None or c.topic in wanted_topics)
                       and (wanted_types is None or c.msgtype in wanted_types)]
        if wanted_topics is not None:
            missing = wanted_topics - {c.topic for c in connections}
            if missing:
                available = sorted(f"{c.topic} ({c.msgtype})" for c in reader.connections)
                raise BagError(f"{path}: no topic(s) {', '.join(sorted(missing))} of the "
                               f"wanted types; the bag has: {', '.join(available)}")
        if not connections:
            return
        for connection, log_time, data in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, int(log_time), bytes(data),
                             connection)


def deserialize(message: BagMessage, ts=None) -> Any:
    """The rosbags message of a BagMessage (types unknown to `ts` come from the bag's
    definition of that connection)."""
    ts = ts or typestore()
    if message.msgtype not in ts.types:
        if not message.connection.msgdef.data:
            raise BagError(f"{message.topic}: type {message.msgtype} is unknown and the bag "
                           "stores no definition for it")
        ts = get_typestore(DEFAULT_STORE)
        ts.register(types_from_msgdef(message.msgtype, message.connection.msgdef.data))
    return ts.deserialize_cdr(message.data, message.msgtype)


def stamp_ns(header: Any) -> int:
    return time_to_ns(header.stamp.sec, header.stamp.nanosec)


def decode_image(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Pixels of a rosbags sensor_msgs/Image or CompressedImage (raises image.ImageError).
    With `max_pixels`, a CompressedImage larger than that is refused before decoding."""
    # Imported here: image.py brings torch, which the bag tools and the replay never need.
    from ..engine.image import decode_compressed, decode_raw
    if msg.__msgtype__ == COMPRESSED_IMAGE:
        return decode_compressed(msg.data, max_pixels)
    image = decode_raw(msg.data, msg.height, msg.width, msg.encoding, msg.step,
                       bool(msg.is_bigendian))
    # Deserialized data is a read-only view of the recorded bytes; torch warns about those.
    return image if image.flags.writeable else image.copy()


@dataclass
class BagImage:
    """An image message of a bag; `image` is HxW gray or HxWx3 RGB (see image.decode_raw)."""
    topic: str
    msgtype: str
    log_time_ns: int         # when it was recorded (receive time)
    stamp_ns: int            # header.stamp
    frame_id: str
    data: bytes              # the recorded CDR bytes
    image: np.ndarray | None = None  # None until decode() (read_images(decode=False))

    def decode(self, max_pixels: int | None = None) -> np.ndarray:
        """Decode the pixels (raises image.ImageError for unusable data) and keep them; see
        decode_image for `max_pixels`."""
        if self.image is None:
            self.image = decode_image(typestore().deserialize_cdr(self.data, self.msgtype),
                                      max_pixels)
        return self.image


def image_from_message(message: BagMessage, decode: bool = True) -> BagImage:
    """A BagImage of a recorded Image or CompressedImage message."""
    msg = typestore().deserialize_cdr(message.data, message.msgtype)
    return BagImage(message.topic, message.msgtype, message.log_time_ns, stamp_ns(msg.header),
                    msg.header.frame_id, message.data, decode_image(msg) if decode else None)


def image_topics(path: str | Path) -> list[str]:
    return sorted(t for t, s in topics(path).items() if s.msgtype in IMAGE_TYPES)


def read_images(path: str | Path, topics: Iterable[str] | None = None,
                decode: bool = True) -> Iterator[BagImage]:
    """Image and CompressedImage messages of `topics` (all image topics by default) in
    log-time order, decoded to numpy. A message that cannot be decoded raises ImageError."""
    chosen = list(topics) if topics is not None else None
    for message in messages(path, chosen, IMAGE_TYPES):
        yield image_from_message(message, decode)


@dataclass
class CameraModel:
    """The contents of a sensor_msgs/CameraInfo as numpy arrays."""
    topic: str
    frame_id: str
    stamp_ns: int
    width: int
    height: int
    distortion_model: str
    D: np.ndarray   # distortion coefficients
    K: np.ndarray   # 3x3 intrinsics
    R: np.ndarray   # 3x3 rectification
    P: np.ndarray   # 3x4 projection

    @property
    def baseline(self) -> float:
        """Stereo baseline in metres from P (P[0,3] = -fx * baseline); 0 for a mono camera."""
        return float(-self.P[0, 3] / self.P[0, 0]) if self.P[0, 0] else 0.0


def camera_model(topic: str, msg: Any) -> CameraModel:
    return CameraModel(topic, msg.header.frame_id, stamp_ns(msg.header), int(msg.width),
                       int(msg.height), msg.distortion_model, np.asarray(msg.d, np.float64),
                       np.asarray(msg.k, np.float64).reshape(3, 3),
                       np.asarray(msg.r, np.float64).reshape(3, 3),
                       np.asarray(msg.p, np.float64).reshape(3, 4))


def read_camera_info(path: str | Path, topic: str | None = None) -> CameraModel | dict[str, CameraModel]:
    """The first CameraInfo of `topic`, or of every CameraInfo topic (a dict) when None."""
    ts = typestore()
    found: dict[str, CameraModel] = {}
    for message in messages(path, [topic] if topic else None, [CAMERA_INFO]):
        if message.topic not in found:
            found[message.topic] = camera_model(message.topic,
                                                ts.deserialize_cdr(message.data, CAMERA_INFO))
            if topic:
                return found[topic]
    if topic:
        raise BagError(f"{path}: no CameraInfo message on {topic}")
    return found


def read_homographies(path: str | Path, topic: str = "/ground_truth/homography") -> dict[int, np.ndarray]:
    """Ground-truth homographies written by make_bag (Float64MultiArray, 3x3 row-major),
    keyed by log time, which is that of the image they belong to. {} without the topic."""
    if topic not in topics(path):
        return {}
    ts = typestore()
    return {m.log_time_ns: np.asarray(ts.deserialize_cdr(m.data, FLOAT64_MULTI_ARRAY).data,
                                      np.float64).reshape(3, 3)
            for m in messages(path, [topic], [FLOAT64_MULTI_ARRAY])}
