"""ROS 2 bags without ROS: read and write sqlite3 and MCAP bags with the `rosbags` library.

No rclpy here (the core must run without ROS). Message types, the typestore and building
messages from plain values are in bags/msgtypes.py; this module reads and writes bag files.

    from match_node.bags import msgtypes, rosbag as bags
    for frame in bags.read_images("run.bag", ["/camera/image_raw"]):   # in log-time order
        frame.image, frame.stamp_ns, frame.log_time_ns, frame.frame_id
    info = bags.read_camera_info("run.bag", "/camera/camera_info")     # K, D, P, size
    with bags.BagWriter("out.bag", storage="mcap") as bag:
        bag.add_topic("/camera/image_raw", msgtypes.IMAGE)
        bag.write("/camera/image_raw", log_time_ns,
                  msgtypes.image_message(bag.ts, rgb, stamp_ns, "cam"))

Written bags carry each connection's full message definition and RIHS01 type hash
(msgtypes.message_definition), so `ros2 bag`, Foxglove and rosbags itself can decode them
without match_node_msgs installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from rosbags.interfaces import (Connection, Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ..messages import time_to_ns
from .msgtypes import (CAMERA_INFO, COMPRESSED_IMAGE, DEFAULT_STORE, FLOAT64_MULTI_ARRAY,
                       IMAGE_TYPES, BagError, make_message, message_definition, types_from_msgdef,
                       typestore)

STORAGES = ("sqlite3", "mcap")


# --- reading: definitions --------------------------------------------------------------------
def typestore_from_bag(path: str | Path, base: Stores | str = Stores.EMPTY):
    """A fresh typestore with every type defined by the bag's own connections (nothing else
    unless `base` is given): proves that a bag is self-describing."""
    ts = get_typestore(Stores(base) if isinstance(base, str) else base)
    with Reader(path) as reader:
        for connection in reader.connections:
            if connection.msgdef.data and connection.msgtype not in ts.types:
                ts.register(types_from_msgdef(connection.msgtype, connection.msgdef.data))
    return ts


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
