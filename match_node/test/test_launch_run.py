"""Run the installed launch file for real and check the node it starts, over real DDS.

Needs `launch` and `launch_ros`, which are not on PyPI: skipped where they are absent (CI).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")
pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; on a robot it "
                    "comes with the ROS 2 distribution")

from rosutil import Harness, image_msg, stop_process, wait_until  # noqa: E402  (sets the DDS domain)

import rclpy  # noqa: E402

from match_node.sequence import make_sequence  # noqa: E402

FRAME_SIZE = (320, 240)
LAUNCH_ARGUMENTS = {"namespace": "lt", "image_topic": "/lt/cam/image_raw",
                    "output_topic": "/lt/matches", "device": "cpu"}

# What `ros2 launch match_node match_node.launch.py name:=value ...` does, without ros2cli:
# include the installed launch file with the given arguments and run a LaunchService, which
# shuts the node down on SIGINT and exits.
RUNNER = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

path, arguments = sys.argv[1], [a.split(":=", 1) for a in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
    PythonLaunchDescriptionSource(path), launch_arguments=arguments)]))
sys.exit(service.run())
"""


def installed_launch_file(name: str = "match_node.launch.py") -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    try:
        share = Path(get_package_share_directory("match_node"))
    except PackageNotFoundError:
        pytest.skip("match_node is not installed (run scripts/setup.sh; source scripts/env.sh)")
    return share / "launch" / name




def test_launch_file_starts_a_working_node(ros, tmp_path):
    sequence = make_sequence("coffee", num_frames=3, size=FRAME_SIZE)
    log_path = tmp_path / "launch.log"
    env = {**os.environ, "ROS_LOG_DIR": str(tmp_path / "ros_log"), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(installed_launch_file())]
            + [f"{k}:={v}" for k, v in LAUNCH_ARGUMENTS.items()],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    harness = None
    try:
        harness = Harness("/lt/cam/image_raw", "/lt/matches")
        harness.wait_for_subscriber(45)
        # The node runs under the namespace given to the launch file, with the launch file's name.
        wait_until(lambda: ("match_node", "/lt") in harness.node.get_node_names_and_namespaces(),
                   10, "node /lt/match_node in the ROS graph")
        stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(len(sequence.frames))]
        for i, (frame, stamp) in enumerate(zip(sequence.frames, stamps)):
            harness.publisher.publish(image_msg(frame, stamp, "cam_optical"))
            if i > 0:  # flow control: one frame in flight, so nothing is dropped as stale
                wait_until(lambda: harness.count() >= i, 30, f"correspondences for frame {i}")
            else:
                time.sleep(0.5)
        time.sleep(0.2)  # nothing further may arrive
        messages = list(harness.received)
        assert len(messages) == len(sequence.frames) - 1
        for t, msg in enumerate(messages, start=1):
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            reference = msg.reference_stamp.sec * 10**9 + msg.reference_stamp.nanosec
            assert (stamp, reference) == (stamps[t], stamps[t - 1])
            assert msg.header.frame_id == "cam_optical"
            assert (msg.current_width, msg.current_height) == FRAME_SIZE
            n = len(msg.current_x)
            assert n == len(msg.reference_x) == len(msg.confidence) == len(msg.track_id) > 50
            assert msg.frame_index == t and msg.dropped_frames == 0
    finally:
        if harness is not None:
            harness.close()
        stop_process(process)
    output = log_path.read_text()
    assert process.returncode == 0, output
    assert "on cpu" in output, output
    assert "listening on /lt/cam/image_raw, publishing /lt/matches" in output, output
    assert "process has finished cleanly" in output, output


def test_replay_launch_runs_bag_node_and_vo(ros, tmp_path):
    """replay.launch.py: the bag replays with flow control into the node, whose
    correspondences reach the VO consumer: one pose per matched frame."""
    from geometry_msgs.msg import PoseStamped
    from match_node import make_bag

    frames = 4
    bag = make_bag.mono_bag(tmp_path / "bag", num_frames=frames, size=FRAME_SIZE)
    env = {**os.environ, "ROS_LOG_DIR": str(tmp_path / "ros_log"), "PYTHONUNBUFFERED": "1"}
    poses = []
    listener = rclpy.create_node(f"replay_launch_listener_{os.getpid()}")
    listener.create_subscription(PoseStamped, "/rl/vo/pose", poses.append, 10)
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(installed_launch_file("replay.launch.py")),
             f"bag:={bag}", "namespace:=rl", "device:=cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(poses) < frames - 1 and time.monotonic() < deadline:
            rclpy.spin_once(listener, timeout_sec=0.1)
        assert len(poses) == frames - 1, log_path.read_text()[-3000:]
        assert all(p.header.frame_id == "odom" for p in poses)
    finally:
        listener.destroy_node()
        stop_process(process)
    output = log_path.read_text()
    assert "[replay] done:" in output, output[-3000:]


def test_stereo_launch_starts_a_remapped_stereo_node(ros, tmp_path):
    env = {**os.environ, "ROS_LOG_DIR": str(tmp_path / "ros_log"), "PYTHONUNBUFFERED": "1"}
    probe = rclpy.create_node(f"stereo_launch_probe_{os.getpid()}")
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(installed_launch_file("stereo.launch.py")),
             "namespace:=sl", "left_topic:=/rig/left/image_rect",
             "right_topic:=/rig/right/image_rect", "device:=cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def ready() -> bool:
            return (("stereo_match_node", "/sl") in probe.get_node_names_and_namespaces()
                    and probe.count_subscribers("/rig/left/image_rect") > 0
                    and probe.count_subscribers("/rig/right/image_rect") > 0
                    and probe.count_publishers("/sl/correspondences/stereo") > 0
                    and probe.count_publishers("/sl/correspondences/temporal") > 0)
        wait_until(ready, 60, "the stereo node with its remapped topics")
    finally:
        probe.destroy_node()
        stop_process(process)
    assert process.returncode == 0, log_path.read_text()[-3000:]
