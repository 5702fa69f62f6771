"""Replay a bag through match_node (or the stereo node) and the example VO consumer:
`ros2 launch match_node replay.launch.py bag:=/path/to/bag`.

Arguments: bag, stereo (auto | true | false), namespace, image_topic, camera_info_topic,
left_topic, right_topic, left_info_topic, right_info_topic, config, device, image_transport,
rate (0 = as fast as the node consumes, with flow control, nothing lost), clock (publish
/clock), wait_s, timeout_s, keep_running, log_level.

The bag decides what runs (match_node.ros.launch_support.plan_replay, tested in CI): a bag with
left and right images and no mono image topic starts the stereo node (namespace `stereo`),
otherwise the mono node (namespace `camera`); Image topics are replayed raw, CompressedImage
topics (<topic>/compressed) with the node's image_transport set to compressed. The VO consumer
reads the node's output and the camera info and publishes <namespace>/vo/{pose,odometry,path}.

The replay publishes nothing until the node subscribes (after loading its models), the VO
consumer subscribes and the node's output exists, in every mode; at most wait_s seconds.
When the replay ends (or fails), the launch ends; keep_running:=true keeps the node and the
VO consumer up. If the node exits, the launch ends too.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, LogInfo, OpaqueFunction,
                            RegisterEventHandler, Shutdown)
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from match_node.ros import launch_support as support


def _unless_ending(*actions):
    """An on_exit handler: `actions`, unless the launch is ending already (Ctrl-C, or another
    process's exit): then nothing, and no 'shutting down' message for a process it stopped."""
    def on_exit(event, context):
        return None if context.is_shutdown else list(actions)
    return on_exit


def _replay(context):
    bag = LaunchConfiguration("bag").perform(context)
    plan = support.plan_replay(
        bag, support.bag_topic_types(bag),
        stereo=LaunchConfiguration("stereo").perform(context),
        image_transport=LaunchConfiguration("image_transport").perform(context),
        namespace=LaunchConfiguration("namespace").perform(context),
        image_topic=LaunchConfiguration("image_topic").perform(context),
        camera_info_topic=LaunchConfiguration("camera_info_topic").perform(context),
        left_topic=LaunchConfiguration("left_topic").perform(context),
        right_topic=LaunchConfiguration("right_topic").perform(context),
        left_info_topic=LaunchConfiguration("left_info_topic").perform(context),
        right_info_topic=LaunchConfiguration("right_info_topic").perform(context),
        rate=LaunchConfiguration("rate").perform(context),
        clock=LaunchConfiguration("clock").perform(context),
        wait_s=LaunchConfiguration("wait_s").perform(context),
        timeout_s=LaunchConfiguration("timeout_s").perform(context))
    keep_running = support.flag("keep_running",
                                LaunchConfiguration("keep_running").perform(context))
    ros_arguments = support.ros_arguments(LaunchConfiguration("log_level").perform(context))
    matcher = Node(
        package="match_node", executable=plan.executable, name=plan.node_name,
        namespace=plan.namespace, output="screen",
        parameters=support.replay_node_parameters(
            LaunchConfiguration("config").perform(context),
            LaunchConfiguration("device").perform(context), plan),
        remappings=plan.node_remappings, arguments=ros_arguments)
    consumer = Node(
        package="match_node", executable="vo_example", name="vo_example",
        namespace=plan.namespace, output="screen", remappings=plan.vo_remappings,
        arguments=ros_arguments)
    replay = Node(package="match_node", executable="replay", name="bag_replay", output="screen",
                  arguments=plan.replay_arguments)
    actions = [LogInfo(msg=f"[replay.launch] {plan.describe()}"), matcher, consumer, replay,
               # The node exits only on an error (or when stopped): end the launch then too.
               RegisterEventHandler(OnProcessExit(
                   target_action=matcher,
                   on_exit=_unless_ending(Shutdown(reason="the node exited"))))]
    if keep_running:
        after_replay = _unless_ending(LogInfo(
            msg="[replay.launch] the replay ended; the node and the VO consumer keep running "
                "(keep_running:=true): Ctrl-C ends them"))
    else:
        after_replay = _unless_ending(Shutdown(reason="the bag replay ended"))
    actions.append(RegisterEventHandler(OnProcessExit(target_action=replay,
                                                      on_exit=after_replay)))
    return actions


def generate_launch_description() -> LaunchDescription:
    default_config = os.path.join(get_package_share_directory("match_node"), "config",
                                  "match_node.yaml")
    arguments = [
        DeclareLaunchArgument("bag", description="Bag to replay (sqlite3 or MCAP folder)"),
        DeclareLaunchArgument("stereo", default_value="auto",
                              description="auto (stereo when the bag has left and right images "
                                          "and no mono image topic), true or false"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and the VO consumer (empty: "
                                          "camera, or stereo for a stereo bag)"),
        DeclareLaunchArgument("image_topic", default_value=support.MONO_IMAGE,
                              description="Mono image topic in the bag (Image, or "
                                          "CompressedImage on <image_topic>/compressed)"),
        DeclareLaunchArgument("camera_info_topic", default_value=support.MONO_INFO,
                              description="Mono CameraInfo topic in the bag"),
        DeclareLaunchArgument("left_topic", default_value=support.LEFT_IMAGE,
                              description="Stereo: left image topic in the bag"),
        DeclareLaunchArgument("right_topic", default_value=support.RIGHT_IMAGE,
                              description="Stereo: right image topic in the bag"),
        DeclareLaunchArgument("left_info_topic", default_value=support.LEFT_INFO,
                              description="Stereo: left CameraInfo topic in the bag"),
        DeclareLaunchArgument("right_info_topic", default_value=support.RIGHT_INFO,
                              description="Stereo: right CameraInfo topic in the bag"),
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameter YAML file of the node"),
        DeclareLaunchArgument("device", default_value="",
                              description="Torch device: auto, cpu, cuda or cuda:N "
                                          "(empty: the config file's, else auto)"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="raw or compressed (empty: what the bag holds)"),
        DeclareLaunchArgument("rate", default_value="0",
                              description="Replay speed factor; 0 = as fast as the node "
                                          "consumes (flow control)"),
        DeclareLaunchArgument("clock", default_value="false",
                              description="Publish /clock from the bag time"),
        DeclareLaunchArgument("wait_s", default_value="120",
                              description="Seconds the replay waits for the node (model "
                                          "loading) and the VO consumer before giving up"),
        DeclareLaunchArgument("timeout_s", default_value="60",
                              description="Flow control: seconds to wait for a frame's message"),
        DeclareLaunchArgument("keep_running", default_value="false",
                              description="Keep the node and VO consumer up after the replay"),
        DeclareLaunchArgument("log_level", default_value="info", description="Logger level"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_replay)])
