"""Launch match_node on one camera: `ros2 launch match_node match_node.launch.py`.

Arguments: namespace, image_topic, output_topic, config (parameter YAML), device,
image_transport, log_level. Topics are remapped, so the node's relative names stay stable.

`device` and `image_transport` are passed to the node only when given: left empty, the
config file's value applies, and where the file does not set one, the node's declared default
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
         "image_transport": LaunchConfiguration("image_transport").perform(context)},
        support.MONO_ARGUMENTS)
    image_topic = support.camera_topic(LaunchConfiguration("image_topic").perform(context))
    return [Node(
        package="match_node",
        executable="match_node",
        name="match_node",
        namespace=LaunchConfiguration("namespace").perform(context),
        output="screen",
        parameters=support.node_parameters(LaunchConfiguration("config").perform(context),
                                           overrides),
        remappings=support.image_remappings("image", image_topic)
        + [("correspondences", LaunchConfiguration("output_topic").perform(context))],
        arguments=support.ros_arguments(LaunchConfiguration("log_level").perform(context)),
    )]


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("match_node"), "config",
                                  "match_node.yaml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Input image topic; with compressed transport the "
                                          "node subscribes to <image_topic>/compressed"),
        DeclareLaunchArgument("output_topic", default_value="correspondences",
                              description="Output match_node_msgs/Correspondences topic"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file"),
        DeclareLaunchArgument("device", default_value="",
                              description="Torch device: auto, cpu, cuda or cuda:N "
                                          "(empty: the config file's, else auto)"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="raw or compressed (empty: the config file's, "
                                          "else raw)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
