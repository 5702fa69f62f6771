"""What the launch files decide, without `launch` or ROS: node parameters and replay plans.

The launch files (launch/*.launch.py) only perform their arguments and hand the strings to
these functions, so CI checks this logic where `launch`/`launch_ros` are not installed.

Parameters: a launch argument whose value is empty was not given. The node then gets the
value from the parameter file (`config`), and where the file does not set it, from the
node's declared default (params.py, the one table of defaults). A given argument overrides
the file. Values are parsed and validated with params.py, so a bad argument fails at launch
with the parameter's name, and the node receives the declared type (`slop_ms:=5` is the
double 5.0, not the integer 5).

Replay: `plan_replay` looks at the bag's topics and chooses mono or stereo, raw or compressed
input, the node, the topic wiring of node and VO consumer, and the replay tool's arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .. import params as P
from ..engine import families  # torch-free: models load when built

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")

# Launch argument -> node parameter, per launch file.
MONO_ARGUMENTS = {"device": "device", "image_transport": "image_transport"}
STEREO_ARGUMENTS = {"device": "device", "image_transport": "image_transport",
                    "slop_ms": "stereo_slop_ms",
                    "epipolar_tolerance_px": "stereo_epipolar_tolerance_px"}

# Defaults of the replay launch file (the mono ones are make_bag's topics).
MONO_IMAGE = "/camera/image_raw"
MONO_INFO = "/camera/camera_info"
LEFT_IMAGE = "/stereo/left/image_raw"
RIGHT_IMAGE = "/stereo/right/image_raw"
LEFT_INFO = "/stereo/left/camera_info"
RIGHT_INFO = "/stereo/right/camera_info"
MONO_NAMESPACE = "camera"
STEREO_NAMESPACE = "stereo"


class LaunchArgumentError(ValueError):
    """A launch argument is invalid or does not fit the bag; the message says which."""


def given(value: str | None) -> bool:
    """A launch argument counts as given when it is not empty."""
    return value is not None and str(value).strip() != ""


def flag(name: str, value: str) -> bool:
    """A boolean launch argument: true/false, 1/0, yes/no, on/off."""
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise LaunchArgumentError(f"launch argument '{name}' must be true or false, got {value!r}")


def parameter_overrides(arguments: Mapping[str, str | None],
                        names: Mapping[str, str]) -> dict[str, Any]:
    """The node parameters set by launch arguments: {parameter: typed value} for each
    argument in `names` (launch argument -> parameter) that was given (non-empty)."""
    out: dict[str, Any] = {}
    for argument, parameter in names.items():
        value = arguments.get(argument)
        if not given(value):
            continue
        try:
            out[parameter] = P.SPECS[parameter].parse(str(value).strip())
        except P.ParameterError as error:
            raise LaunchArgumentError(f"launch argument '{argument}': {error}") from None
    try:
        families.check_combined(out)
    except P.ParameterError as error:
        raise LaunchArgumentError(f"launch arguments: {error}") from None
    return out


def node_parameters(config: str | None, overrides: Mapping[str, Any]) -> list:
    """`parameters=` of a launch_ros Node: the parameter file, then the given arguments (later
    entries win). Nothing else: parameters nobody set keep the file's or declared default."""
    out: list = []
    if given(config):
        out.append(str(config).strip())
    if overrides:
        out.append(dict(overrides))
    return out


def camera_topic(topic: str) -> str:
    """The image topic without a transport suffix: /cam/image_raw/compressed -> /cam/image_raw."""
    topic = topic.strip().rstrip("/")
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def image_remappings(relative: str, camera: str) -> list[tuple[str, str]]:
    """Remap a node's relative image input (raw and compressed) to a camera topic."""
    return [(relative, camera), (f"{relative}/compressed", f"{camera}/compressed")]


@dataclass
class ReplayPlan:
    """What replay.launch.py starts for one bag."""
    stereo: bool
    transport: str                       # raw | compressed (what the bag holds)
    namespace: str                       # of the node and the VO consumer
    executable: str                      # match_node | stereo_match_node
    node_name: str
    topics: list[str]                    # bag topics the replay tool publishes
    node_remappings: list[tuple[str, str]]
    vo_remappings: list[tuple[str, str]]
    output_topic: str                    # the node's output the replay waits for (absolute)
    replay_arguments: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{'stereo' if self.stereo else 'mono'} bag, {self.transport} images: "
                f"{', '.join(self.topics)} -> /{self.namespace}/{self.node_name} -> "
                f"{self.output_topic}")


def _image_in_bag(bag_topics: Mapping[str, str], camera: str, transport: str) -> str | None:
    """The bag topic holding `camera`'s images in `transport` ('' = either), or None."""
    raw, compressed = camera, f"{camera}/compressed"
    if transport in ("", "raw") and bag_topics.get(raw) == IMAGE:
        return raw
    if transport in ("", "compressed") and bag_topics.get(compressed) == COMPRESSED_IMAGE:
        return compressed
    return None


def _listing(bag_topics: Mapping[str, str]) -> str:
    return ", ".join(f"{t} ({m.rsplit('/', 1)[-1]})" for t, m in sorted(bag_topics.items())) \
        or "no topics"


def plan_replay(bag: str, bag_topics: Mapping[str, str], *, stereo: str = "auto",
                image_transport: str = "", namespace: str = "",
                image_topic: str = MONO_IMAGE, camera_info_topic: str = MONO_INFO,
                left_topic: str = LEFT_IMAGE, right_topic: str = RIGHT_IMAGE,
                left_info_topic: str = LEFT_INFO, right_info_topic: str = RIGHT_INFO,
                rate: str = "0", clock: str = "false", wait_s: str = "120",
                timeout_s: str = "60") -> ReplayPlan:
    """Plan the replay of a bag whose topics are `bag_topics` ({topic: message type}).

    stereo: 'auto' (stereo when the bag has left and right images and no mono image topic),
    'true' or 'false'. image_transport: '' takes what the bag holds (raw Image on the topic,
    or CompressedImage on <topic>/compressed), 'raw' or 'compressed' insist on one.
    rate: 0 = flow control (the next frame after the node's message for the previous one),
    else the recorded timing scaled by `rate`. The replay waits up to `wait_s` seconds for the
    node (its image subscriptions exist only once its models are loaded), the VO consumer and
    the node's output publisher before it starts, in both modes.
    """
    transport = image_transport.strip().lower() if given(image_transport) else ""
    if transport not in ("", "raw", "compressed"):
        raise LaunchArgumentError(f"launch argument 'image_transport' must be raw or "
                                  f"compressed (or empty: as in the bag), got {image_transport!r}")
    try:
        rate_value = float(rate)
        wait_value = float(wait_s)
        timeout_value = float(timeout_s)
    except ValueError:
        raise LaunchArgumentError(f"launch arguments rate, wait_s and timeout_s must be numbers; "
                                  f"got {rate!r}, {wait_s!r}, {timeout_s!r}") from None
    if rate_value < 0 or wait_value < 0 or timeout_value <= 0:
        raise LaunchArgumentError("launch arguments rate and wait_s must be >= 0, timeout_s > 0")
    mode = stereo.strip().lower()
    left_camera, right_camera = camera_topic(left_topic), camera_topic(right_topic)
    mono_camera = camera_topic(image_topic)
    has_pair = (_image_in_bag(bag_topics, left_camera, transport) is not None
                and _image_in_bag(bag_topics, right_camera, transport) is not None)
    if mode == "auto":
        is_stereo = has_pair and _image_in_bag(bag_topics, mono_camera, transport) is None
    else:
        is_stereo = flag("stereo", mode)

    wanted = f" ({transport})" if transport else ""
    if is_stereo:
        cameras = [("left", left_camera, left_info_topic),
                   ("right", right_camera, right_info_topic)]
    else:
        cameras = [("", mono_camera, camera_info_topic)]
    image_topics: list[str] = []
    for side, camera, _ in cameras:
        found = _image_in_bag(bag_topics, camera, transport)
        if found is None:
            argument = f"{side}_topic" if side else "image_topic"
            hint = ("; for a stereo bag set stereo:=true (or left_topic/right_topic)"
                    if not is_stereo and has_pair else "")
            raise LaunchArgumentError(
                f"bag {bag} has no images{wanted} on {camera} or {camera}/compressed "
                f"(launch argument {argument}){hint}; it has {_listing(bag_topics)}")
        image_topics.append(found)
    kinds = {topic.endswith("/compressed") for topic in image_topics}
    if len(kinds) > 1:
        raise LaunchArgumentError(f"bag {bag}: left and right images differ in transport "
                                  f"({', '.join(image_topics)}); set image_transport:=raw or "
                                  f"compressed")
    resolved_transport = "compressed" if kinds.pop() else "raw"
    infos = [info.strip() for _, _, info in cameras]
    for (side, _, _), info in zip(cameras, infos):
        if bag_topics.get(info) != CAMERA_INFO:
            argument = f"{side}_info_topic" if side else "camera_info_topic"
            raise LaunchArgumentError(
                f"bag {bag} has no sensor_msgs/CameraInfo on {info} (launch argument "
                f"{argument}); the VO consumer needs it; the bag has {_listing(bag_topics)}")

    ns = namespace.strip().strip("/") if given(namespace) else (
        STEREO_NAMESPACE if is_stereo else MONO_NAMESPACE)
    prefix = f"/{ns}" if ns else ""
    if is_stereo:
        output = f"{prefix}/correspondences/stereo"  # every pair gives one, the first too
        vo_input = f"{prefix}/correspondences/temporal"
        node_remappings = (image_remappings("left/image", left_camera)
                           + image_remappings("right/image", right_camera)
                           + [("left/camera_info", infos[0]), ("right/camera_info", infos[1])])
        vo_remappings = [("correspondences", vo_input),
                         ("correspondences/stereo", output),
                         ("camera_info", infos[0]), ("right/camera_info", infos[1])]
        executable = "stereo_match_node"
    else:
        output = vo_input = f"{prefix}/correspondences"
        node_remappings = image_remappings("image", mono_camera)
        vo_remappings = [("correspondences", output), ("camera_info", infos[0])]
        executable = "match_node"

    topics = image_topics + infos
    arguments = [bag, "--topics", *topics, "--wait-topic", output,
                 "--wait-subscribers", f"{wait_value:g}",
                 # The VO consumer: its correspondences and camera_info subscriptions.
                 "--wait-for-subscriber", vo_input, *infos]
    if rate_value <= 0:
        arguments += ["--as-fast-as-consumed", "--timeout", f"{timeout_value:g}"]
    else:
        arguments += ["--rate", f"{rate_value:g}"]
    if flag("clock", clock):
        arguments.append("--clock")
    return ReplayPlan(stereo=is_stereo, transport=resolved_transport, namespace=ns,
                      executable=executable, node_name=executable, topics=topics,
                      node_remappings=node_remappings, vo_remappings=vo_remappings,
                      output_topic=output, replay_arguments=arguments)


def bag_topic_types(bag: str) -> dict[str, str]:
    """{topic: message type} of a bag (rosbags; no ROS), or LaunchArgumentError naming it."""
    from pathlib import Path

    from ..bags import rosbag as bags
    if not given(bag):
        raise LaunchArgumentError("launch argument 'bag' is required: bag:=/path/to/bag")
    if not Path(bag).exists():
        raise LaunchArgumentError(f"bag {bag} does not exist")
    try:
        return {topic: info.msgtype for topic, info in bags.topics(bag).items()}
    except Exception as error:  # noqa: BLE001 - any reader error, named in the message
        raise LaunchArgumentError(f"cannot read bag {bag}: {type(error).__name__}: "
                                  f"{error}") from None


def replay_node_parameters(config: str, device: str, plan: ReplayPlan) -> list:
    """Parameters of the node replay.launch.py starts: the file, a given device, and the
    transport the bag holds (a bag's message type is not a preference)."""
    overrides = parameter_overrides({"device": device}, {"device": "device"})
    overrides["image_transport"] = plan.transport
    return node_parameters(config, overrides)


def ros_arguments(log_level: str) -> Sequence[str]:
    return ["--ros-args", "--log-level", log_level.strip() or "info"]
