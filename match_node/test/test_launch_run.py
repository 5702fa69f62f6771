"""Run the installed launch files for real and check what they start, over real DDS.

Needs `launch` and `launch_ros`, which are not on PyPI: skipped where they are absent (CI).
The logic these launch files delegate (parameter lists, replay plans, the replay's start and
stop) is tested without them in test_launch_support.py, test_replay_logic.py and
test_replay.py.

Each launch runs in its own session and is stopped like a terminal's Ctrl-C: SIGINT to the
whole process group (the launch and every process it started). Every launch's output is
checked for ERROR lines, tracebacks, aborts and SIGTERM/SIGKILL escalation. No test measures
time: conditions are awaited with generous timeouts.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")
pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; on a robot it "
                    "comes with the ROS 2 distribution")

from rosutil import Harness, image_msg, wait_until  # noqa: E402  (sets the DDS domain)

import rclpy  # noqa: E402

from match_node.groundtruth.planar import make_sequence  # noqa: E402

FRAME_SIZE = (320, 240)
LAUNCH_ARGUMENTS = {"namespace": "lt", "image_topic": "/lt/cam/image_raw",
                    "output_topic": "/lt/matches", "device": "cpu"}

# What `ros2 launch match_node match_node.launch.py name:=value ...` does, without ros2cli:
# include the installed launch file with the given arguments and run a LaunchService.
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


class Launch:
    """`ros2 launch match_node NAME args...` in its own session (like a terminal's foreground
    job), its output in a file."""

    def __init__(self, tmp_path: Path, name: str, **arguments: object) -> None:
        self.log_path = tmp_path / f"{name}.{time.monotonic_ns()}.log"
        env = {**os.environ, "ROS_LOG_DIR": str(tmp_path / "ros_log"), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUNNER, str(installed_launch_file(name))]
                + [f"{k}:={v}" for k, v in arguments.items()],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        wait_until(lambda: text in self.output or self.process.poll() is not None, timeout,
                   f"{text!r} in the launch output")
        assert text in self.output, self.output[-4000:]

    def ctrl_c(self, times: int = 1) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        for _ in range(times):
            try:
                os.killpg(self.process.pid, signal.SIGINT)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the launch to end by itself; on timeout, stop everything and fail."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the launch did not end within {timeout} s:\n"
                                 f"{self.output[-4000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def assert_clean(output: str) -> None:
    """No process wrote an ERROR line or a traceback, none aborted, none had to be escalated
    to SIGTERM/SIGKILL, and every started process finished cleanly (exit 0)."""
    for bad in ("ERROR", "Traceback", "terminate called", "KeyboardInterrupt", "escalating",
                "process has died"):
        assert bad not in output, f"{bad!r} in the launch output:\n{output[-6000:]}"
    started = re.findall(r"\[INFO\] \[([\w-]+)\]: process started with pid \[(\d+)\]", output)
    assert started, output[-4000:]
    for name, pid in started:
        assert f"[INFO] [{name}]: process has finished cleanly [pid {pid}]" in output, \
            f"{name} did not finish cleanly:\n{output[-6000:]}"


def done_line(output: str) -> dict:
    line = next(line for line in output.splitlines() if "[replay] done: " in line)
    return json.loads(line.split("[replay] done: ", 1)[1])


def get_parameters(node, fq_name: str, names: list[str], timeout: float = 120.0) -> dict:
    """Parameters of a running node, read back over its parameter service."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = node.create_client(GetParameters, f"{fq_name}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=timeout), f"{fq_name} has no parameter service"
        future = client.call_async(GetParameters.Request(names=names))
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        assert future.done(), f"{fq_name} did not answer"
        return {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}
    finally:
        node.destroy_client(client)


def write_config(path: Path, values: dict) -> Path:
    lines = ["/**:", "  ros__parameters:"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def probe(ros):
    node = rclpy.create_node(f"launch_probe_{os.getpid()}_{time.monotonic_ns()}")
    yield node
    node.destroy_node()


@pytest.fixture(scope="module")
def bags_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("launch_bags")


# --- match_node.launch.py / stereo.launch.py ---------------------------------------------------
def test_launch_file_starts_a_working_node(ros, tmp_path):
    sequence = make_sequence("coffee", num_frames=3, size=FRAME_SIZE)
    launch = Launch(tmp_path, "match_node.launch.py", **LAUNCH_ARGUMENTS)
    harness = None
    try:
        harness = Harness("/lt/cam/image_raw", "/lt/matches")
        harness.wait_for_subscriber(120)
        # The node runs under the namespace given to the launch file, with the launch file's name.
        wait_until(lambda: ("match_node", "/lt") in harness.node.get_node_names_and_namespaces(),
                   10, "node /lt/match_node in the ROS graph")
        stamps = [1_700_000_000_000_000_000 + i * 50_000_000 for i in range(len(sequence.frames))]
        for i, (frame, stamp) in enumerate(zip(sequence.frames, stamps)):
            harness.publisher.publish(image_msg(frame, stamp, "cam_optical"))
            if i > 0:  # flow control: one frame in flight, so nothing is dropped as stale
                wait_until(lambda: harness.count() >= i, 60, f"correspondences for frame {i}")
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
        launch.ctrl_c()
        assert launch.finish() == 0, launch.output[-4000:]
    finally:
        if harness is not None:
            harness.close()
        launch.kill()
    output = launch.output
    assert "on cpu" in output, output
    assert "listening on /lt/cam/image_raw, publishing /lt/matches" in output, output
    assert_clean(output)


def test_config_file_applies_when_arguments_are_not_given(probe, tmp_path):
    """config:= used to be partly ignored: the launch arguments' own defaults (device auto,
    image_transport raw) were passed after the file. Arguments left out must leave the file's
    values; a given argument overrides the file."""
    config = write_config(tmp_path / "user.yaml", {
        "device": "cpu", "image_transport": "compressed", "max_keypoints": 300,
        "allow_download": False})
    launch = Launch(tmp_path, "match_node.launch.py", namespace="cfg",
                    image_topic="/cfg/cam/image_raw", config=config)
    try:
        values = get_parameters(probe, "/cfg/match_node",
                                ["device", "image_transport", "max_keypoints"])
        assert values == {"device": "cpu", "image_transport": "compressed", "max_keypoints": 300}
        wait_until(lambda: probe.count_subscribers("/cfg/cam/image_raw/compressed") > 0, 60,
                   "the node's compressed subscription")
        assert probe.count_subscribers("/cfg/cam/image_raw") == 0
        launch.ctrl_c()
        assert launch.finish() == 0, launch.output[-4000:]
    finally:
        launch.kill()
    assert_clean(launch.output)


def test_stereo_launch_takes_the_file_and_given_arguments(probe, tmp_path):
    """stereo.launch.py: slop, transport and device from the file; the epipolar tolerance
    given as an argument wins over the file; topics remapped (compressed inputs too)."""
    config = write_config(tmp_path / "stereo.yaml", {
        "device": "cpu", "image_transport": "compressed", "stereo_slop_ms": 5.0,
        "stereo_epipolar_tolerance_px": 0.0, "allow_download": False})
    launch = Launch(tmp_path, "stereo.launch.py", namespace="sl", config=config,
                    left_topic="/rig/left/image_rect", right_topic="/rig/right/image_rect",
                    epipolar_tolerance_px="1.5")
    try:
        values = get_parameters(probe, "/sl/stereo_match_node", [
            "device", "image_transport", "stereo_slop_ms", "stereo_epipolar_tolerance_px"])
        assert values == {"device": "cpu", "image_transport": "compressed",
                          "stereo_slop_ms": 5.0, "stereo_epipolar_tolerance_px": 1.5}

        def ready() -> bool:
            return (probe.count_subscribers("/rig/left/image_rect/compressed") > 0
                    and probe.count_subscribers("/rig/right/image_rect/compressed") > 0
                    and probe.count_publishers("/sl/correspondences/stereo") > 0
                    and probe.count_publishers("/sl/correspondences/temporal") > 0)
        wait_until(ready, 60, "the stereo node with its remapped topics")
        launch.ctrl_c()
        assert launch.finish() == 0, launch.output[-4000:]
    finally:
        launch.kill()
    assert_clean(launch.output)


def test_bad_launch_argument_is_refused_by_name(tmp_path):
    launch = Launch(tmp_path, "stereo.launch.py", slop_ms="fast")
    assert launch.finish() != 0
    assert "launch argument 'slop_ms'" in launch.output, launch.output
    assert "process started" not in launch.output


# --- replay.launch.py --------------------------------------------------------------------------
def run_replay_launch(tmp_path, probe, pose_topic: str, **arguments) -> tuple[str, list]:
    """Run replay.launch.py until it ends by itself (the replay ended); return its output and
    the VO poses published meanwhile."""
    from geometry_msgs.msg import PoseStamped

    poses: list = []
    subscription = probe.create_subscription(PoseStamped, pose_topic, poses.append, 100)
    launch = Launch(tmp_path, "replay.launch.py", device="cpu", **arguments)
    try:
        deadline = time.monotonic() + 300
        while launch.process.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(probe, timeout_sec=0.1)
        code = launch.finish(timeout=5)
        for _ in range(20):  # poses still queued in this process
            rclpy.spin_once(probe, timeout_sec=0.05)
    finally:
        probe.destroy_subscription(subscription)
        launch.kill()
    output = launch.output
    assert code == 0, output[-4000:]
    return output, poses


def test_replay_launch_flow_control_ends_when_the_replay_ends(probe, tmp_path, bags_dir):
    """Flow control: every frame is matched, the VO consumer publishes a pose per matched
    frame, and the launch ends by itself when the replay is done (node and VO stopped)."""
    from match_node.bags import make as make_bag

    frames = 4
    bag = make_bag.mono_bag(bags_dir / "mono", num_frames=frames, size=FRAME_SIZE)
    output, poses = run_replay_launch(tmp_path, probe, "/rl/vo/pose", bag=bag, namespace="rl")
    done = done_line(output)
    assert (done["frames"], done["acked"], done["timeouts"]) == (frames, frames - 1, 0)
    assert len(poses) == frames - 1 and all(p.header.frame_id == "odom" for p in poses)
    assert "process[replay-3] was required: shutting down launched system" in output
    assert_clean(output)


def test_replay_launch_rate_mode_waits_for_the_node(probe, tmp_path, bags_dir):
    """rate:=1 used to give 0 messages (the replay started on a timer, before the node
    listened). Now the replay starts once the node is up, and waits for the node's message
    for the last frame before the launch ends."""
    from match_node.bags import make as make_bag

    frames = 6
    bag = make_bag.mono_bag(bags_dir / "rate", num_frames=frames, size=FRAME_SIZE)
    output, poses = run_replay_launch(tmp_path, probe, "/rr/vo/pose", bag=bag, namespace="rr",
                                      rate="1", clock="true")
    assert output.index("listening on /camera/image_raw") < output.index("[replay] playing")
    done = done_line(output)
    assert done["frames"] == frames and done["messages"] == 2 * frames
    assert done["timeouts"] == 0 and 1 <= done["acked"] <= frames - 1
    assert 1 <= len(poses) <= frames - 1
    stamps = [p.header.stamp.sec * 10**9 + p.header.stamp.nanosec for p in poses]
    assert stamps == sorted(set(stamps))  # in order, once each
    assert stamps[-1] == make_bag.stamps(frames, 10.0)[-1]  # the last frame was matched
    assert_clean(output)


def test_replay_launch_compressed_bag(probe, tmp_path, bags_dir):
    """A bag of CompressedImage on /camera/image_raw/compressed replays into the node (which
    then subscribes to exactly that topic), with flow control: nothing lost."""
    from match_node.bags import make as make_bag

    frames = 4
    bag = make_bag.mono_bag(bags_dir / "jpeg", num_frames=frames, size=FRAME_SIZE,
                            compressed="jpeg", storage="mcap")
    output, poses = run_replay_launch(tmp_path, probe, "/rc/vo/pose", bag=bag, namespace="rc")
    assert "mono bag, compressed images" in output
    assert "listening on /camera/image_raw/compressed" in output
    done = done_line(output)
    assert (done["frames"], done["acked"], done["timeouts"]) == (frames, frames - 1, 0)
    assert len(poses) == frames - 1
    assert_clean(output)


def test_replay_launch_stereo_bag(probe, tmp_path, bags_dir):
    """A stereo bag starts the stereo node (flow control on its stereo output, every pair
    acknowledged) and the VO consumer gets metric poses."""
    from match_node.bags import make as make_bag

    frames = 4
    bag = bags_dir / "stereo"
    made = subprocess.run([sys.executable, "-m", "match_node.bags.make", str(bag), "--kind",
                           "stereo", "--frames", str(frames), "--size", "320x240"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    output, poses = run_replay_launch(tmp_path, probe, "/stereo/vo/pose", bag=bag)
    assert "stereo bag, raw images" in output
    done = done_line(output)
    assert (done["frames"], done["acked"], done["timeouts"]) == (frames, frames, 0)
    assert len(poses) == frames - 1
    # Metric scale from stereo: each step as long as the true one (make_bag's default step is
    # 6 cm), not of unit length as monocular VO would give.
    import numpy as np
    from match_node.bags import rosbag as bags
    truth = [np.linalg.inv(make_bag.pose_from_message(bags.deserialize(m)))[:3, 3]
             for m in bags.messages(bag, [make_bag.GROUND_TRUTH_POSE])]
    true_steps = [np.linalg.norm(b - a) for a, b in zip(truth, truth[1:])]
    positions = [np.zeros(3)] + [np.array([p.pose.position.x, p.pose.position.y,
                                           p.pose.position.z]) for p in poses]
    steps = [np.linalg.norm(b - a) for a, b in zip(positions, positions[1:])]
    assert np.allclose(steps, true_steps, rtol=0.15), (steps, true_steps)
    assert make_bag.LEFT_IMAGE in output
    assert_clean(output)


def test_replay_launch_bad_bag_starts_nothing(tmp_path):
    launch = Launch(tmp_path, "replay.launch.py", bag=tmp_path / "no_such_bag", device="cpu")
    assert launch.finish() != 0
    output = launch.output
    assert f"bag {tmp_path / 'no_such_bag'} does not exist" in output, output
    assert "process started" not in output


# --- Ctrl-C --------------------------------------------------------------------------------------
@pytest.mark.parametrize("moment", ["node loading", "playing", "after the replay"])
def test_ctrl_c_ends_every_process_cleanly(probe, tmp_path, bags_dir, moment):
    """Ctrl-C while the node still loads its models (the replay waits), while the bag plays,
    and after the replay with keep_running:=true (node and VO kept up): every process ends by
    itself, exit 0, no ERROR line, no traceback, no escalation to SIGTERM. Ctrl-C is sent twice,
    as an impatient user does."""
    from match_node.bags import make as make_bag

    bag = bags_dir / "long"
    if not bag.exists():
        make_bag.mono_bag(bag, num_frames=40, size=FRAME_SIZE)
    arguments = {"bag": bag, "device": "cpu", "namespace": "cc", "rate": "0.5"}
    if moment == "after the replay":
        arguments.update(rate="4", keep_running="true")
    launch = Launch(tmp_path, "replay.launch.py", **arguments)
    try:
        if moment == "node loading":
            launch.wait_for("[replay] waiting up to")
            assert "listening on" not in launch.output
        elif moment == "playing":
            launch.wait_for("[replay] playing")
            wait_until(lambda: probe.count_publishers("/cc/vo/pose") > 0, 30, "the VO consumer")
        else:
            launch.wait_for("keep running (keep_running:=true)")
            assert ("match_node", "/cc") in probe.get_node_names_and_namespaces()
        launch.ctrl_c(times=2)
        assert launch.finish() == 0, launch.output[-4000:]
    finally:
        launch.kill()
    output = launch.output
    assert_clean(output)
    if moment != "after the replay":
        assert done_line(output)["interrupted"] is True
