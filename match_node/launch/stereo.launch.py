"""Launch the stereo node: `ros2 launch match_node stereo.launch.py`.

Arguments: namespace, left_topic, right_topic, left_info_topic, right_info_topic, config,
device, slop_ms, epipolar_tolerance_px, log_level. Outputs stay under the namespace:
correspondences/stereo, correspondences/temporal, debug/matches.
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
        DeclareLaunchArgument("namespace", default_value="stereo",
                              description="Namespace of the node and its outputs"),
        DeclareLaunchArgument("left_topic", default_value="/stereo/left/image_rect",
                              description="Left image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("right_topic", default_value="/stereo/right/image_rect",
                              description="Right image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("left_info_topic", default_value="/stereo/left/camera_info",
                              description="Left CameraInfo topic"),
        DeclareLaunchArgument("right_info_topic", default_value="/stereo/right/camera_info",
                              description="Right CameraInfo topic"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device: auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("slop_ms", default_value="0.0",
                              description="Maximum stamp difference of a pair (0 = identical)"),
        DeclareLaunchArgument("epipolar_tolerance_px", default_value="2.0",
                              description="Row tolerance for rectified pairs (0 = no filter)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    node = Node(
        package="match_node",
        executable="stereo_match_node",
        name="stereo_match_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("config"),
                    {"device": LaunchConfiguration("device"),
                     "stereo_slop_ms": LaunchConfiguration("slop_ms"),
                     "stereo_epipolar_tolerance_px": LaunchConfiguration("epipolar_tolerance_px")}],
        remappings=[("left/image", LaunchConfiguration("left_topic")),
                    ("right/image", LaunchConfiguration("right_topic")),
                    ("left/camera_info", LaunchConfiguration("left_info_topic")),
                    ("right/camera_info", LaunchConfiguration("right_info_topic"))],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription(arguments + [node])
