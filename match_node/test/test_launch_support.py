"""What the launch files decide, checked without `launch` or ROS (runs in CI).

launch/*.launch.py hand their arguments to match_node.ros.launch_support: these tests pin the
parameter precedence (a config file is never overridden by an argument nobody gave), the
typed values, and the replay plans for mono, compressed and stereo bags.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from match_node.ros import launch_support as S
from match_node.bags import make as make_bag
from match_node import params as P

PACKAGE = Path(__file__).resolve().parents[1]
MONO_BAG = {"/camera/image_raw": S.IMAGE, "/camera/camera_info": S.CAMERA_INFO,
            "/ground_truth/homography": "std_msgs/msg/Float64MultiArray"}
COMPRESSED_BAG = {"/camera/image_raw/compressed": S.COMPRESSED_IMAGE,
                  "/camera/camera_info": S.CAMERA_INFO}
STEREO_BAG = {"/stereo/left/image_raw": S.IMAGE, "/stereo/right/image_raw": S.IMAGE,
              "/stereo/left/camera_info": S.CAMERA_INFO,
              "/stereo/right/camera_info": S.CAMERA_INFO,
              "/ground_truth/pose": "geometry_msgs/msg/PoseStamped"}


# --- parameters --------------------------------------------------------------------------------
def test_arguments_not_given_set_no_parameter():
    """The defect: defaults of launch arguments were passed after the YAML and overrode it.
    Arguments left empty must not appear in the parameter list at all."""
    empty = {name: "" for name in S.STEREO_ARGUMENTS}
    assert S.parameter_overrides(empty, S.STEREO_ARGUMENTS) == {}
    assert S.node_parameters("/x/user.yaml", {}) == ["/x/user.yaml"]
    assert S.parameter_overrides({"device": "  "}, S.MONO_ARGUMENTS) == {}


def test_given_arguments_override_the_file_with_the_declared_type():
    overrides = S.parameter_overrides(
        {"device": "cuda:1", "image_transport": "compressed", "slop_ms": "5",
         "epipolar_tolerance_px": ""}, S.STEREO_ARGUMENTS)
    assert overrides == {"device": "cuda:1", "image_transport": "compressed",
                         "stereo_slop_ms": 5.0}
    assert type(overrides["stereo_slop_ms"]) is float  # a double parameter, not the int 5
    # The file first, the given arguments after it: later entries win in launch_ros.
    assert S.node_parameters("/x/user.yaml", overrides) == ["/x/user.yaml", overrides]
    assert S.node_parameters("", overrides) == [overrides]


@pytest.mark.parametrize("arguments, words", [
    ({"slop_ms": "fast"}, ["slop_ms", "stereo_slop_ms", "float"]),
    ({"epipolar_tolerance_px": "-1"}, ["epipolar_tolerance_px", ">= 0"]),
    ({"image_transport": "theora"}, ["image_transport", "raw, compressed"]),
    ({"device": "gpu"}, ["device"]),
])
def test_bad_arguments_fail_at_launch_naming_the_argument(arguments, words):
    with pytest.raises(S.LaunchArgumentError) as error:
        S.parameter_overrides(arguments, S.STEREO_ARGUMENTS)
    for word in words:
        assert word in str(error.value)


def test_argument_names_map_to_declared_parameters():
    for names in (S.MONO_ARGUMENTS, S.STEREO_ARGUMENTS):
        assert set(names.values()) <= set(P.SPECS)


# --- the launch files --------------------------------------------------------------------------
def _declared_defaults(path: Path) -> dict[str, object]:
    """{argument: default} of a launch file's DeclareLaunchArgument calls (constants and
    launch_support attributes resolved)."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "DeclareLaunchArgument"):
            continue
        default = next((k.value for k in node.keywords if k.arg == "default_value"), None)
        if isinstance(default, ast.Constant):
            value = default.value
        elif isinstance(default, ast.Attribute) and getattr(default.value, "id", "") == "support":
            value = getattr(S, default.attr)
        else:
            value = ast.unparse(default) if default is not None else None
        out[node.args[0].value] = value
    return out


@pytest.mark.parametrize("name, parameter_arguments", [
    ("match_node.launch.py", S.MONO_ARGUMENTS),
    ("stereo.launch.py", S.STEREO_ARGUMENTS),
    ("replay.launch.py", {"device": "device", "image_transport": "image_transport"}),
])
def test_parameter_arguments_default_to_not_given(name, parameter_arguments):
    """One source of defaults: params.py (and the YAML made from it), never the launch file."""
    defaults = _declared_defaults(PACKAGE / "launch" / name)
    for argument in parameter_arguments:
        assert defaults[argument] == "", f"{name}: {argument} defaults to {defaults[argument]!r}"


def test_launch_topic_defaults_are_the_bag_topics_make_bag_writes():
    stereo = _declared_defaults(PACKAGE / "launch" / "stereo.launch.py")
    assert (stereo["left_topic"], stereo["right_topic"]) == (make_bag.LEFT_IMAGE,
                                                            make_bag.RIGHT_IMAGE)
    assert (stereo["left_info_topic"], stereo["right_info_topic"]) == (make_bag.LEFT_INFO,
                                                                      make_bag.RIGHT_INFO)
    replay = _declared_defaults(PACKAGE / "launch" / "replay.launch.py")
    assert (replay["image_topic"], replay["camera_info_topic"]) == (make_bag.MONO_IMAGE,
                                                                   make_bag.MONO_INFO)
    assert (replay["left_topic"], replay["right_topic"]) == (make_bag.LEFT_IMAGE,
                                                             make_bag.RIGHT_IMAGE)
    assert replay["keep_running"] == "false" and replay["stereo"] == "auto"


def test_default_parameter_file_keeps_the_declared_defaults():
    """The config file passed by default equals params.py, so passing it changes nothing."""
    assert P.load_yaml(PACKAGE / "config" / "match_node.yaml") == P.defaults()


# --- replay plans ------------------------------------------------------------------------------
def test_mono_bag_flow_control_plan():
    plan = S.plan_replay("/bags/mono", MONO_BAG)
    assert not plan.stereo and plan.transport == "raw" and plan.namespace == "camera"
    assert plan.executable == "match_node"
    assert plan.topics == ["/camera/image_raw", "/camera/camera_info"]
    assert ("image", "/camera/image_raw") in plan.node_remappings
    assert plan.vo_remappings == [("correspondences", "/camera/correspondences"),
                                  ("camera_info", "/camera/camera_info")]
    args = plan.replay_arguments
    assert args[0] == "/bags/mono"
    assert "--as-fast-as-consumed" in args and "--rate" not in args
    assert args[args.index("--wait-topic") + 1] == "/camera/correspondences"
    assert args[args.index("--wait-subscribers") + 1] == "120"
    # The replay waits for the VO consumer too, not only for the node.
    assert "/camera/correspondences" in args[args.index("--wait-for-subscriber"):]
    assert S.replay_node_parameters("/c.yaml", "", plan) == ["/c.yaml",
                                                              {"image_transport": "raw"}]


def test_rate_mode_waits_for_the_node_too():
    """rate:=1 gave no messages: the replay started on a timer before the node listened. The
    plan makes the replay wait for the node (subscriber and output) in rate mode as well."""
    plan = S.plan_replay("/bags/mono", MONO_BAG, rate="1", clock="true", wait_s="90")
    args = plan.replay_arguments
    assert args[args.index("--rate") + 1] == "1" and "--as-fast-as-consumed" not in args
    assert args[args.index("--wait-topic") + 1] == "/camera/correspondences"
    assert args[args.index("--wait-subscribers") + 1] == "90"
    assert "--clock" in args


def test_compressed_bag_is_replayed_compressed():
    plan = S.plan_replay("/bags/c", COMPRESSED_BAG)
    assert plan.transport == "compressed" and not plan.stereo
    assert plan.topics[0] == "/camera/image_raw/compressed"
    # The node subscribes to image/compressed: it must meet the bag's topic.
    assert ("image/compressed", "/camera/image_raw/compressed") in plan.node_remappings
    assert S.replay_node_parameters("/c.yaml", "cpu", plan) == [
        "/c.yaml", {"device": "cpu", "image_transport": "compressed"}]
    # The topic may be given with or without the suffix.
    same = S.plan_replay("/bags/c", COMPRESSED_BAG, image_topic="/camera/image_raw/compressed")
    assert same.topics == plan.topics and same.node_remappings == plan.node_remappings
    with pytest.raises(S.LaunchArgumentError, match="no images \\(raw\\)"):
        S.plan_replay("/bags/c", COMPRESSED_BAG, image_transport="raw")


def test_stereo_bag_plan():
    plan = S.plan_replay("/bags/s", STEREO_BAG)
    assert plan.stereo and plan.executable == "stereo_match_node" and plan.namespace == "stereo"
    assert plan.topics == ["/stereo/left/image_raw", "/stereo/right/image_raw",
                           "/stereo/left/camera_info", "/stereo/right/camera_info"]
    remaps = dict(plan.node_remappings)
    assert remaps["left/image"] == "/stereo/left/image_raw"
    assert remaps["right/image/compressed"] == "/stereo/right/image_raw/compressed"
    assert remaps["left/camera_info"] == "/stereo/left/camera_info"
    # Flow control on the stereo node's output (one message per pair), not a mono topic.
    assert plan.output_topic == "/stereo/correspondences/stereo"
    args = plan.replay_arguments
    assert args[args.index("--wait-topic") + 1] == "/stereo/correspondences/stereo"
    vo = dict(plan.vo_remappings)
    assert vo == {"correspondences": "/stereo/correspondences/temporal",
                  "correspondences/stereo": "/stereo/correspondences/stereo",
                  "camera_info": "/stereo/left/camera_info",
                  "right/camera_info": "/stereo/right/camera_info"}
    assert S.plan_replay("/bags/s", STEREO_BAG, stereo="true").stereo
    compressed = {f"{t}/compressed" if t.endswith("image_raw") else t: (
        S.COMPRESSED_IMAGE if m == S.IMAGE else m) for t, m in STEREO_BAG.items()}
    plan = S.plan_replay("/bags/sc", compressed)
    assert plan.stereo and plan.transport == "compressed"
    assert plan.topics[:2] == ["/stereo/left/image_raw/compressed",
                               "/stereo/right/image_raw/compressed"]


def test_plan_errors_name_the_problem():
    with pytest.raises(S.LaunchArgumentError, match="stereo:=true"):
        S.plan_replay("/bags/s", STEREO_BAG, stereo="false")
    with pytest.raises(S.LaunchArgumentError, match="/cam/image_raw.*image_topic"):
        S.plan_replay("/bags/mono", MONO_BAG, image_topic="/cam/image_raw")
    with pytest.raises(S.LaunchArgumentError, match="CameraInfo on /x/info.*camera_info_topic"):
        S.plan_replay("/bags/mono", MONO_BAG, camera_info_topic="/x/info")
    with pytest.raises(S.LaunchArgumentError, match="keep_running"):
        S.flag("keep_running", "maybe")
    with pytest.raises(S.LaunchArgumentError, match="rate"):
        S.plan_replay("/bags/mono", MONO_BAG, rate="fast")
    with pytest.raises(S.LaunchArgumentError, match="does not exist"):
        S.bag_topic_types("/nonexistent/bag")
    with pytest.raises(S.LaunchArgumentError, match="bag:="):
        S.bag_topic_types("")


def test_plans_of_bags_make_bag_writes(tmp_path):
    """Real bags (no ROS): make_bag's mono, compressed and stereo layouts plan as expected."""
    mono = make_bag.mono_bag(tmp_path / "mono", num_frames=2, size=(64, 48))
    assert S.plan_replay(str(mono), S.bag_topic_types(str(mono))).transport == "raw"
    compressed = make_bag.mono_bag(tmp_path / "c", num_frames=2, size=(64, 48),
                                   compressed="jpeg", storage="mcap")
    assert S.plan_replay(str(compressed), S.bag_topic_types(str(compressed))).transport \
        == "compressed"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    stereo = make_bag.write_sequence_bag(tmp_path / "s", frames, make_bag.stamps(2, 10.0),
                                         make_bag.nominal_K(64, 48), right_frames=frames,
                                         baseline=0.1)
    plan = S.plan_replay(str(stereo), S.bag_topic_types(str(stereo)))
    assert plan.stereo and plan.topics[0] == make_bag.LEFT_IMAGE
    (tmp_path / "junk").mkdir()
    with pytest.raises(S.LaunchArgumentError, match="cannot read bag"):
        S.bag_topic_types(str(tmp_path / "junk"))
