"""Launch match_node on one camera: `ros2 launch match_node match_node.launch.py`.

Arguments: namespace, image_topic, output_topic, config (parameter YAML), device,
image_transport, log_level. Topics are remapped, so the node's relative names stay stable.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("match_node"), "config",
                                  "match_node.yaml")
    arguments = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="Input image topic (raw sensor_msgs/Image)"),
        DeclareLaunchArgument("output_topic", default_value="correspondences",
                              description="Output match_node_msgs/Correspondences topic"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device: auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("image_transport", default_value="raw",
                              description="raw or compressed (subscribes to <image_topic>/compressed)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    image_topic = LaunchConfiguration("image_topic")
    node = Node(
        package="match_node",
        executable="match_node",
        name="match_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("config"),
                    {"device": LaunchConfiguration("device"),
                     "image_transport": LaunchConfiguration("image_transport")}],
        remappings=[("image", image_topic),
                    ("image/compressed", [image_topic, "/compressed"]),
                    ("correspondences", LaunchConfiguration("output_topic"))],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription(arguments + [node])
