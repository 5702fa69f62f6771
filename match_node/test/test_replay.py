"""The replay tool over real DDS: flow control into the real node, recorded rate, /clock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")

from rosutil import spin_in_background, stop_spinning, wait_until  # noqa: E402  (sets the DDS domain)
from test_node import node_command  # noqa: E402

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402

from match_node.bags import msgtypes, rosbag as bags  # noqa: E402
from match_node.bags import make as make_bag
from match_node.ros.replay_logic import header_stamp_ns  # noqa: E402

FRAMES = 6




@pytest.fixture(scope="module")
def mono_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "mono"
    return make_bag.mono_bag(path, num_frames=FRAMES, size=(320, 240), step=5, storage="mcap")


class Collector:
    """Subscribes to topics (raw CDR bytes) and keeps what arrives, spun in the background."""

    def __init__(self, topics: dict[str, tuple[type, QoSProfile]]) -> None:
        import os
        import random
        self.node = Node(f"test_replay_{os.getpid()}_{random.randint(0, 1 << 30)}")
        self.received: dict[str, list[bytes]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        self.subscriptions = {
            t: self.node.create_subscription(kind, t, lambda data, t=t: self._on(t, data), qos,
                                             raw=True)
            for t, (kind, qos) in topics.items()}
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = spin_in_background(self.executor)

    def _on(self, topic: str, data: bytes) -> None:
        with self._lock:
            self.received[topic].append(data)

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.received[topic])

    def close(self) -> None:
        stop_spinning(self.executor, self.thread, self.node)


def done_line(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("[replay] done: "))
    return json.loads(line.split(": ", 1)[1])


def test_header_stamp_from_cdr():
    ts = msgtypes.typestore()
    msg = msgtypes.camera_info_message(ts, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], 4, 3,
                                   1_700_000_000_987_654_321, "cam")
    data = bytes(ts.serialize_cdr(msg, msgtypes.CAMERA_INFO))
    assert header_stamp_ns(data) == 1_700_000_000_987_654_321
    big = bytes(ts.serialize_cdr(msg, msgtypes.CAMERA_INFO, little_endian=False))
    assert header_stamp_ns(big) == 1_700_000_000_987_654_321


def test_replay_feeds_the_node_without_loss(ros, mono_bag):
    """A real node process fed by the replay tool with flow control gets every frame."""
    from match_node_msgs.msg import Correspondences

    node = subprocess.Popen(
        node_command() + ["--ros-args", "-r", "__ns:=/camera", "-r", "image:=/camera/image_raw",
                          "-p", "device:=cpu", "-p", "max_keypoints:=512",
                          "-p", "allow_download:=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    collector = Collector({"/camera/correspondences": (
        Correspondences, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))})
    replay = None
    try:
        wait_until(lambda: collector.subscriptions["/camera/correspondences"].get_publisher_count() > 0,
                   60, "the node's correspondences publisher")
        replay = subprocess.run(
            [sys.executable, "-m", "match_node.ros.replay", str(mono_bag), "--as-fast-as-consumed",
             "--wait-topic", "/camera/correspondences", "--wait-subscribers", "60",
             "--timeout", "60"],
            capture_output=True, text=True, timeout=240)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        done = done_line(replay.stdout)
        assert done["frames"] == FRAMES and done["acked"] == FRAMES - 1 and done["timeouts"] == 0
        wait_until(lambda: collector.count("/camera/correspondences") >= FRAMES - 1, 30,
                   "all messages")
    finally:
        collector.close()
        node.send_signal(signal.SIGINT)
        try:
            output, _ = node.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            output, _ = node.communicate()
    from rclpy.serialization import deserialize_message
    received = [deserialize_message(d, Correspondences)
                for d in collector.received["/camera/correspondences"]]
    images = list(bags.read_images(mono_bag, decode=False))
    assert len(received) == FRAMES - 1, output
    for t, msg in enumerate(received, start=1):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        reference = msg.reference_stamp.sec * 10**9 + msg.reference_stamp.nanosec
        assert (stamp, reference) == (images[t].stamp_ns, images[t - 1].stamp_ns)
        assert msg.header.frame_id == "camera_optical"
        assert msg.dropped_frames == 0 and msg.frame_index == t
        assert len(msg.current_x) > 100
    assert node.returncode == 0, output


def test_replay_at_recorded_rate_with_clock(ros, tmp_path):
    """--rate 1.0: every message goes out once, in the recorded order, with the original
    stamps and bytes; /clock is the bag's log time and never goes back. (Nothing here
    depends on how fast the machine is.)"""
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image

    frames = 10
    path = make_bag.mono_bag(tmp_path / "rate", num_frames=frames, size=(320, 240),
                             rate_hz=10.0, storage="sqlite3")
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    collector = Collector({make_bag.MONO_IMAGE: (Image, qos_profile_sensor_data),
                           make_bag.MONO_INFO: (CameraInfo, reliable),
                           "/clock": (Clock, reliable)})
    try:
        replay = subprocess.run(
            [sys.executable, "-m", "match_node.ros.replay", str(path), "--rate", "1.0",
             "--clock", "--wait-subscribers", "30"],
            capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        done = done_line(replay.stdout)
        wait_until(lambda: collector.count(make_bag.MONO_INFO) == frames, 10, "camera infos")
    finally:
        collector.close()
    recorded = [m for m in bags.messages(path, [make_bag.MONO_INFO])]
    assert done["messages"] == 2 * frames and done["frames"] == frames
    assert done["passes"] == 1 and done["timeouts"] == 0 and not done["interrupted"]
    assert done["bag_duration_s"] == pytest.approx((recorded[-1].log_time_ns
                                                    - recorded[0].log_time_ns) / 1e9)
    # The recorded bytes went out unchanged (identical stamps and payload) on the reliable
    # topic; DDS delivers the payload padded with zeros to a multiple of 4 bytes.
    received = collector.received[make_bag.MONO_INFO]
    assert len(received) == len(recorded)
    for got, sent in zip(received, recorded):
        assert got[:len(sent.data)] == sent.data and not got[len(sent.data):].strip(b"\0")
        assert len(got) - len(sent.data) < 4
    images = collector.received[make_bag.MONO_IMAGE]
    assert len(images) >= frames // 2  # best effort: most arrive; their stamps are the bag's
    image_stamps = [header_stamp_ns(d) for d in images]
    assert set(image_stamps) <= {m.log_time_ns - 5_000_000 for m in recorded}
    assert image_stamps == sorted(set(image_stamps))  # in order, each once
    from rclpy.serialization import deserialize_message
    clock = [deserialize_message(d, Clock).clock for d in collector.received["/clock"]]
    clock_ns = [c.sec * 10**9 + c.nanosec for c in clock]
    assert clock_ns and recorded[0].log_time_ns <= min(clock_ns)
    assert max(clock_ns) == recorded[-1].log_time_ns
    assert clock_ns == sorted(clock_ns)


class Process:
    """A replay (or node) process in its own session, its merged output collected by a
    thread, so the test can wait for a line and then signal it like a terminal's Ctrl-C."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        try:
            wait_until(lambda: text in self.output or self.process.poll() is not None,
                       timeout, f"{text!r} in the output")
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{self.output}") from None
        assert text in self.output, self.output

    def interrupt(self, times: int = 1) -> None:
        for _ in range(times):
            os.killpg(self.process.pid, signal.SIGINT)
            time.sleep(0.02)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"did not end within {timeout} s:\n{self.output}") from None
        self.reader.join(10)
        return code


def assert_clean(output: str) -> None:
    for bad in ("Traceback", "terminate called", "KeyboardInterrupt", "ERROR", "error:"):
        assert bad not in output, output


def replay_command(bag, *options: str) -> list[str]:
    return [sys.executable, "-m", "match_node.ros.replay", str(bag), *options]


def test_rate_mode_waits_for_a_late_subscriber(ros, tmp_path):
    """The clock starts only once the image topic has a subscriber, in rate mode too (a replay
    launched next to a node that still loads its models published everything into nothing)."""
    from sensor_msgs.msg import CameraInfo, Image

    frames = 5
    path = make_bag.mono_bag(tmp_path / "late", num_frames=frames, size=(320, 240))
    replay = Process(replay_command(path, "--rate", "1", "--wait-subscribers", "120"))
    collector = None
    try:
        replay.wait_for("[replay] waiting up to 120 s for a subscriber on /camera/image_raw")
        assert "playing" not in replay.output
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        collector = Collector({make_bag.MONO_IMAGE: (Image, qos_profile_sensor_data),
                               make_bag.MONO_INFO: (CameraInfo, reliable)})
        assert replay.finish(120) == 0, replay.output
        wait_until(lambda: collector.count(make_bag.MONO_INFO) == frames, 30, "camera infos")
    finally:
        if collector is not None:
            collector.close()
        if replay.process.poll() is None:
            replay.process.kill()
    done = done_line(replay.output)
    assert done["frames"] == frames and done["messages"] == 2 * frames
    stamps = [header_stamp_ns(d) for d in collector.received[make_bag.MONO_INFO]]
    assert stamps == make_bag.stamps(frames, 10.0)
    assert collector.count(make_bag.MONO_IMAGE) >= 1
    assert_clean(replay.output)


def test_replay_gives_up_when_nobody_subscribes(ros, tmp_path):
    path = make_bag.mono_bag(tmp_path / "alone", num_frames=2, size=(64, 48))
    replay = Process(replay_command(path, "--rate", "1", "--wait-subscribers", "0.5"))
    assert replay.finish() == 4, replay.output
    assert ("[replay] error: gave up after 0.5 s waiting for a subscriber on /camera/image_raw; "
            "nothing was published") in replay.output
    assert "playing" not in replay.output and "Traceback" not in replay.output


@pytest.mark.parametrize("moment", ["waiting", "playing", "flow control"])
def test_ctrl_c_ends_the_replay_cleanly(ros, tmp_path, moment):
    """Ctrl-C (twice, as a terminal and a launch file both send it, or an impatient user)
    while waiting for subscribers, while playing, or waiting for an ack: exit 0 with the
    summary line, no traceback, no abort from a spin thread left running ('terminate called
    without an active exception'), no death by the second signal. Repeated, as the abort
    came in 2 of 8 runs."""
    from sensor_msgs.msg import CameraInfo, Image

    path = make_bag.mono_bag(tmp_path / "stop", num_frames=4, size=(64, 48))
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    collector = None
    if moment != "waiting":
        collector = Collector({make_bag.MONO_IMAGE: (Image, qos_profile_sensor_data),
                               make_bag.MONO_INFO: (CameraInfo, reliable)})
    options = {"waiting": ["--rate", "1", "--wait-subscribers", "600"],
               "playing": ["--rate", "0.5", "--loop"],
               # Nobody answers: the replay sits in its wait for the first ack.
               "flow control": ["--as-fast-as-consumed", "--wait-topic", "/nobody/answers",
                                "--wait-subscribers", "0", "--first-frame-wait", "600"]}[moment]
    marker = {"waiting": "[replay] waiting", "playing": "[replay] playing",
              "flow control": "[replay] playing"}[moment]
    try:
        for attempt in range(3):
            replay = Process(replay_command(path, *options))
            replay.wait_for(marker)
            if moment == "playing":
                wait_until(lambda: collector.count(make_bag.MONO_INFO) > 4 * attempt, 60,
                           "messages from the replay")
            if attempt == 0:
                replay.interrupt(times=2)
            else:  # the second Ctrl-C while the process ends (it once died of it, exit -2)
                replay.interrupt()
                replay.wait_for("[replay] done")
                replay.interrupt()
            assert replay.finish() == 0, replay.output
            assert_clean(replay.output)
            done = done_line(replay.output)
            assert done["interrupted"] is True
            assert "[replay] interrupted (SIGINT)" in replay.output
    finally:
        if collector is not None:
            collector.close()


def test_ctrl_c_ends_the_vo_example_cleanly(ros):
    """The VO consumer: Ctrl-C twice, once it is up: exit 0, nothing on stderr but its logs."""
    from rclpy.node import Node as RclpyNode

    probe = RclpyNode(f"vo_probe_{os.getpid()}")
    try:
        for _ in range(2):
            vo = Process([sys.executable, "-m", "match_node.ros.vo_node", "--ros-args",
                          "-r", "__ns:=/vo_stop"])
            wait_until(lambda: probe.count_subscribers("/vo_stop/correspondences") > 0, 60,
                       "the VO consumer's subscription")
            vo.interrupt(times=2)  # the second while it stops or ends
            assert vo.finish() == 0, vo.output
            assert_clean(vo.output)
            wait_until(lambda: probe.count_subscribers("/vo_stop/correspondences") == 0, 30,
                       "the VO consumer gone from the graph")
    finally:
        probe.destroy_node()
