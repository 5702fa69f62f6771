"""Launch the stereo node: `ros2 launch match_node stereo.launch.py`.

Arguments: namespace, left_topic, right_topic, left_info_topic, right_info_topic, config,
device, image_transport, slop_ms, epipolar_tolerance_px, log_level. Outputs stay under the
namespace: correspondences/stereo, correspondences/temporal, debug/matches.

The topic defaults are those of make_bag's stereo bags (/stereo/{left,right}/image_raw); for
a rectified camera pair pass its rectified topics (e.g. left_topic:=/stereo/left/image_rect).
device, image_transport, slop_ms (stereo_slop_ms) and epipolar_tolerance_px
(stereo_epipolar_tolerance_px) are passed to the node only when given: left empty, the config
file's value applies, and where the file does not set one, the node's declared default
(match_node/params.py). match_node.ros.launch_support builds the parameter list (tested in CI).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from match_node.ros import launch_support as support


def _node(context):
    overrides = support.parameter_overrides(
        {"device": LaunchConfiguration("device").perform(context),
         "image_transport": LaunchConfiguration("image_transport").perform(context),
         "slop_ms": LaunchConfiguration("slop_ms").perform(context),
         "epipolar_tolerance_px": LaunchConfiguration("epipolar_tolerance_px").perform(context)},
        support.STEREO_ARGUMENTS)
    left = support.camera_topic(LaunchConfiguration("left_topic").perform(context))
    right = support.camera_topic(LaunchConfiguration("right_topic").perform(context))
    return [Node(
        package="match_node",
        executable="stereo_match_node",
        name="stereo_match_node",
        namespace=LaunchConfiguration("namespace").perform(context),
        output="screen",
        parameters=support.node_parameters(LaunchConfiguration("config").perform(context),
                                           overrides),
        remappings=support.image_remappings("left/image", left)
        + support.image_remappings("right/image", right)
        + [("left/camera_info", LaunchConfiguration("left_info_topic").perform(context)),
           ("right/camera_info", LaunchConfiguration("right_info_topic").perform(context))],
        arguments=support.ros_arguments(LaunchConfiguration("log_level").perform(context)),
    )]


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("match_node"), "config",
                                  "match_node.yaml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="stereo",
                              description="Namespace of the node and its outputs"),
        DeclareLaunchArgument("left_topic", default_value=support.LEFT_IMAGE,
                              description="Left image topic (with compressed transport the "
                                          "node subscribes to <left_topic>/compressed)"),
        DeclareLaunchArgument("right_topic", default_value=support.RIGHT_IMAGE,
                              description="Right image topic"),
        DeclareLaunchArgument("left_info_topic", default_value=support.LEFT_INFO,
                              description="Left CameraInfo topic"),
        DeclareLaunchArgument("right_info_topic", default_value=support.RIGHT_INFO,
                              description="Right CameraInfo topic"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file"),
        DeclareLaunchArgument("device", default_value="",
                              description="Torch device: auto, cpu, cuda or cuda:N "
                                          "(empty: the config file's, else auto)"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="raw or compressed (empty: the config file's, "
                                          "else raw)"),
        DeclareLaunchArgument("slop_ms", default_value="",
                              description="stereo_slop_ms: maximum stamp difference of a pair "
                                          "(empty: the config file's, else 0 = identical)"),
        DeclareLaunchArgument("epipolar_tolerance_px", default_value="",
                              description="stereo_epipolar_tolerance_px: row tolerance for "
                                          "rectified pairs (empty: the config file's, else "
                                          "0 = no filter)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
