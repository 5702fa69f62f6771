"""Replay a bag through match_node and the example VO consumer:
`ros2 launch match_node replay.launch.py bag:=/path/to/bag`.

Arguments: bag, namespace, image_topic, camera_info_topic, config, device, rate (0 = as fast as
the node consumes, with flow control, nothing lost), clock (publish /clock), start_delay,
log_level.
The node runs in `namespace` with its input remapped to `image_topic`; the VO consumer reads
the node's correspondences and the camera info, and publishes <namespace>/vo/{pose,odometry,path}.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, TimerAction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _replay(context):
    rate = float(LaunchConfiguration("rate").perform(context))
    namespace = LaunchConfiguration("namespace").perform(context).strip("/")
    output = f"/{namespace}/correspondences" if namespace else "/correspondences"
    timing = (["--as-fast-as-consumed", "--wait-topic", output, "--wait-subscribers", "60"]
              if rate <= 0 else ["--rate", str(rate)])
    if LaunchConfiguration("clock").perform(context).lower() in ("true", "1", "yes"):
        timing.append("--clock")
    replay = Node(package="match_node", executable="replay", name="bag_replay", output="screen",
                  arguments=[LaunchConfiguration("bag").perform(context), *timing])
    # The replay waits for the node's image subscription, but not for every other listener
    # (the VO consumer's camera_info): give them time to start and match first.
    return [TimerAction(period=float(LaunchConfiguration("start_delay").perform(context)),
                        actions=[replay])]


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("match_node"), "config",
                                  "match_node.yaml")
    arguments = [
        DeclareLaunchArgument("bag", description="Bag to replay (sqlite3 or MCAP folder)"),
        DeclareLaunchArgument("namespace", default_value="camera",
                              description="Namespace of the node and the VO consumer"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Image topic in the bag"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="CameraInfo topic in the bag"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file of the node"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Torch device: auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("rate", default_value="0",
                              description="Replay speed factor; 0 = as fast as the node consumes"),
        DeclareLaunchArgument("clock", default_value="false",
                              description="Publish /clock from the bag time"),
        DeclareLaunchArgument("start_delay", default_value="3.0",
                              description="Seconds before the replay starts (listeners start)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    namespace = LaunchConfiguration("namespace")
    log_level = ["--ros-args", "--log-level", LaunchConfiguration("log_level")]
    matcher = Node(
        package="match_node", executable="match_node", name="match_node", namespace=namespace,
        output="screen",
        parameters=[LaunchConfiguration("config"), {"device": LaunchConfiguration("device")}],
        remappings=[("image", LaunchConfiguration("image_topic"))], arguments=log_level)
    consumer = Node(
        package="match_node", executable="vo_example", name="vo_example", namespace=namespace,
        output="screen",
        remappings=[("camera_info", LaunchConfiguration("camera_info_topic"))],
        arguments=log_level)
    return LaunchDescription(arguments + [matcher, consumer, OpaqueFunction(function=_replay)])
