"""End to end: a bag rendered from a real image with its depth along a known 6-DoF path,
replayed into the real node, its correspondences into the example VO consumer; the poses are
compared with the ground truth."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")

from rosutil import spin_in_background, stop_process, stop_spinning, wait_until  # noqa: E402  (sets the DDS domain)
from test_node import node_command  # noqa: E402

from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from match_node import vo  # noqa: E402
from match_node.bags import rosbag as bags
from match_node.bags import make as make_bag

FRAMES = 6
SIZE = (370, 250)  # half the Middlebury resolution: quick on two cores




@pytest.fixture(scope="module")
def scene_bag(tmp_path_factory):
    """Frames rendered along the 6-DoF path with 6 cm steps: at half resolution, the default
    2.5 cm steps leave some pairs with too little parallax for a reliable direction (the VO
    library then refuses them, as it should)."""
    from match_node.groundtruth import scene
    world = scene.load_motorcycle()
    poses = scene.trajectory(FRAMES, seed=0, step_m=0.06)
    K = scene.scale_intrinsics(world.K, world.size, SIZE)
    frames = [scene.render(world, T, SIZE)[0] for T in poses]
    path = tmp_path_factory.mktemp("vo") / "mono3d"
    return make_bag.write_sequence_bag(path, frames, make_bag.stamps(FRAMES, 10.0), K,
                                       poses=poses)


def ground_truth(path) -> list[np.ndarray]:
    """World-to-camera poses read back from /ground_truth/pose (camera-to-world on the wire)."""
    ts = bags.typestore()
    return [make_bag.pose_from_message(bags.deserialize(m, ts))
            for m in bags.messages(path, ["/ground_truth/pose"])]


def test_stereo_kind_renders_images(tmp_path):
    path = tmp_path / "stereo"
    make_bag.write_sequence_bag(path, **make_bag.render_scene("stereo", 2, SIZE, seed=0),
                                stamps_ns=make_bag.stamps(2, 10.0))
    images = list(bags.read_images(path))
    assert len(images) == 4 and all(i.decode().shape == (SIZE[1], SIZE[0], 3) for i in images)


def test_replay_node_vo_against_ground_truth(ros, scene_bag):
    from match_node.ros.vo_node import VoExample

    node = subprocess.Popen(
        node_command() + ["--ros-args", "-r", "__ns:=/camera", "-r", "image:=/camera/image_raw",
                          "-p", "device:=cpu", "-p", "max_keypoints:=1024",
                          "-p", "allow_download:=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    consumer = VoExample(cli_args=["--ros-args", "-r", "correspondences:=/camera/correspondences",
                                   "-r", "camera_info:=/camera/camera_info"])
    executor = SingleThreadedExecutor()
    executor.add_node(consumer)
    spinner = spin_in_background(executor)
    try:
        replay = subprocess.run(
            [sys.executable, "-m", "match_node.ros.replay", str(scene_bag), "--as-fast-as-consumed",
             "--wait-topic", "/camera/correspondences", "--wait-subscribers", "60",
             "--timeout", "120"], capture_output=True, text=True, timeout=600)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        summary = json.loads(replay.stdout.strip().splitlines()[-1].split("done:", 1)[1])
        assert summary, summary
        wait_until(lambda: len(consumer.estimates) == FRAMES - 1, 60, "a pose per frame")
    finally:
        stop_spinning(executor, spinner, consumer)
        stop_process(node)

    poses = ground_truth(scene_bag)
    stamps = make_bag.stamps(FRAMES, 10.0)
    rotation_errors, direction_errors = [], []
    for stamp, estimate, scale in consumer.estimates:
        b = stamps.index(stamp)
        R_true, t_true = _relative(poses[b - 1], poses[b])
        assert estimate.ok, estimate.message
        rotation, direction = vo.pose_errors(estimate.R, estimate.t, R_true, t_true)
        rotation_errors.append(rotation)
        direction_errors.append(direction)
    print(f"VO against ground truth over {len(rotation_errors)} consecutive pairs: rotation error "
          f"median {np.median(rotation_errors):.3f} deg (max {max(rotation_errors):.3f}), "
          f"translation direction median {np.median(direction_errors):.2f} deg "
          f"(max {max(direction_errors):.2f})")
    assert max(rotation_errors) < 0.5
    assert np.median(direction_errors) < 5.0 and max(direction_errors) < 15.0
    assert consumer.odometry.lost == 0 and len(consumer.path.poses) == FRAMES - 1


def _relative(T_a: np.ndarray, T_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """X_b = R X_a + t for world-to-camera poses T_a, T_b."""
    T = T_b @ np.linalg.inv(T_a)
    return T[:3, :3], T[:3, 3]


@pytest.fixture(scope="module")
def stereo_bag(tmp_path_factory):
    from match_node.groundtruth import scene
    world = scene.load_motorcycle()
    poses = scene.trajectory(FRAMES, seed=0, step_m=0.06)
    K = scene.scale_intrinsics(world.K, world.size, SIZE)
    pairs = [scene.stereo_pair(world, T, world.baseline_m, SIZE) for T in poses]
    path = tmp_path_factory.mktemp("vo") / "stereo"
    return make_bag.write_sequence_bag(path, [left for left, _ in pairs],
                                       make_bag.stamps(FRAMES, 10.0), K, poses=poses,
                                       right_frames=[right for _, right in pairs],
                                       baseline=float(world.baseline_m))


def test_stereo_replay_gives_metric_scale(ros, stereo_bag):
    from match_node.ros.vo_node import VoExample

    node = subprocess.Popen(
        node_command(stereo=True) + [
            "--ros-args", "-r", "__ns:=/stereo", "-r", "left/image:=/stereo/left/image_raw",
            "-r", "right/image:=/stereo/right/image_raw", "-p", "device:=cpu",
            "-p", "max_keypoints:=1024", "-p", "allow_download:=false",
            "-p", "stereo_epipolar_tolerance_px:=1.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    consumer = VoExample(cli_args=[
        "--ros-args", "-r", "correspondences:=/stereo/correspondences/temporal",
        "-r", "correspondences/stereo:=/stereo/correspondences/stereo",
        "-r", "camera_info:=/stereo/left/camera_info",
        "-r", "right/camera_info:=/stereo/right/camera_info"])
    executor = SingleThreadedExecutor()
    executor.add_node(consumer)
    spinner = spin_in_background(executor)
    try:
        replay = subprocess.run(
            [sys.executable, "-m", "match_node.ros.replay", str(stereo_bag),
             "--as-fast-as-consumed", "--wait-topic", "/stereo/correspondences/stereo",
             "--wait-subscribers", "60", "--timeout", "120"],
            capture_output=True, text=True, timeout=600)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        wait_until(lambda: len(consumer.estimates) == FRAMES - 1, 60, "a pose per frame")
    finally:
        stop_spinning(executor, spinner, consumer)
        stop_process(node)

    poses = ground_truth(stereo_bag)
    stamps = make_bag.stamps(FRAMES, 10.0)
    scale_errors = []
    for stamp, estimate, scale in consumer.estimates:
        b = stamps.index(stamp)
        _, t_true = _relative(poses[b - 1], poses[b])
        assert estimate.ok and scale is not None
        scale_errors.append(abs(scale - np.linalg.norm(t_true)) / np.linalg.norm(t_true))
    print(f"stereo scale: median relative error {np.median(scale_errors):.3f} "
          f"(max {max(scale_errors):.3f}) over {len(scale_errors)} steps")
    assert np.median(scale_errors) < 0.05 and max(scale_errors) < 0.15
    assert consumer.odometry.is_metric
