"""Camera and matcher on different hosts: two network namespaces joined by a veth pair.

The camera side (a flow-controlled bag replay and a recorder of the node's output) runs in
one namespace, the match_node in the other. Their networks share nothing but the veth link:
each namespace has only its own loopback and its end of the link, on a private /24; and each
side has its own /dev/shm, as two machines do (see Network.start). Both
sides use the shipped Fast DDS profile and the settings a user needs across machines (README,
"Across machines"):

    FASTDDS_DEFAULT_PROFILES_FILE=<share>/match_node/config/fastdds_large_images.xml
    RMW_IMPLEMENTATION=rmw_fastrtps_cpp
    ROS_DOMAIN_ID=<the same on both hosts>
    ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET       (or LOCALHOST, see below)
    ROS_STATIC_PEERS=<the other host's address>

Two discovery set-ups are run:
  * subnet: SUBNET plus the peers list, for a LAN (multicast discovery; the peers list makes
    it independent of multicast getting through);
  * peers_only: LOCALHOST plus the peers list: no automatic discovery beyond the machine,
    the other host is found only because it is listed (Wi-Fi or VPN links without multicast,
    or other subnets). Without ROS_STATIC_PEERS this one finds nothing (checked by hand).

The test asserts that every frame of the bag but the first (a mono node has nothing to match
the first frame to) gives exactly one correspondence message on the camera side, in order,
with the frame's stamp and its predecessor's as reference, and that the images really went
over the link (the veth byte counters), not through shared memory.

Needs root (network namespaces); CI runs as root. Skipped only without root or `ip netns`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("match_node_msgs.msg", reason="match_node_msgs not built (run scripts/setup.sh)")

from match_node.bags import make as make_bag  # noqa: E402
from match_node.bags import rosbag as bags  # noqa: E402
from test_replay import Process  # noqa: E402

FRAMES = 8
SIZE = (320, 240)
PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
# Generous: model loading and matching on a loaded 2-core machine; nothing here measures speed.
START_TIMEOUT_S = 180
FRAME_TIMEOUT_S = 60


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _netns_unavailable() -> str | None:
    """Why this machine cannot run the test (None: it can)."""
    if os.name != "posix" or os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"mn_probe_{os.getpid()}"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"`ip netns` is unavailable: {error}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Host:
    """One side: a network namespace, its end of the veth link, its address and its own
    /dev/shm (a directory bind-mounted over /dev/shm in each of its processes)."""

    def __init__(self, netns: str, device: str, address: str, shm: Path) -> None:
        self.netns, self.device, self.address, self.shm = netns, device, address, shm

    def link_bytes(self) -> dict[str, int]:
        """rx/tx bytes of this side's veth end."""
        out = _ip("-n", self.netns, "-s", "-j", "link", "show", "dev", self.device).stdout
        stats = json.loads(out)[0]["stats64"]
        return {"rx": int(stats["rx"]["bytes"]), "tx": int(stats["tx"]["bytes"])}


class Network:
    """Two namespaces joined by a veth pair, torn down by close() whatever happened."""

    def __init__(self, root: Path) -> None:
        tag = f"{os.getpid()}_{random.randint(0, 9999)}"
        net = 10 + os.getpid() % 240  # 10.213.<net>.0/24: private; only in these namespaces
        self.camera = Host(f"mn_camera_{tag}", f"mnc{tag}"[:15], f"10.213.{net}.1",
                           root / "shm_camera")
        self.robot = Host(f"mn_node_{tag}", f"mnn{tag}"[:15], f"10.213.{net}.2",
                          root / "shm_node")
        self.made: list[str] = []
        self.processes: list[Proc] = []

    def up(self) -> None:
        for host in (self.camera, self.robot):
            host.shm.mkdir(mode=0o1777)
            _ip("netns", "add", host.netns)
            self.made.append(host.netns)
        # The pair is created inside the camera namespace with its peer in the node's: the
        # machine's own namespace never sees it, and deleting a namespace deletes its end.
        _ip("-n", self.camera.netns, "link", "add", self.camera.device, "type", "veth",
            "peer", "name", self.robot.device, "netns", self.robot.netns)
        for host in (self.camera, self.robot):
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.device)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "link", "set", host.device, "up")

    def start(self, host: Host, command: list[str], env: dict[str, str], name: str) -> "Proc":
        # Two hosts do not share /dev/shm, but two network namespaces do, and Fast DDS keeps
        # state there named after UDP port numbers (its shared-memory ports), which each
        # namespace assigns from the same start. With one /dev/shm, a participant that joined
        # a few seconds after the other side's was mostly never discovered (by hand: 10 of 12
        # tries; 0 of 4 with separate ones). So each host's processes get their own /dev/shm
        # (`ip netns exec` runs the command in a private mount namespace: the bind mount ends
        # with the process).
        wrapped = ["sh", "-c", 'mount --bind "$0" /dev/shm && exec "$@"', str(host.shm), *command]
        process = Proc(["ip", "netns", "exec", host.netns, *wrapped], env, name)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for netns in reversed(self.made):
            _ip("netns", "del", netns, check=False)
        self.made.clear()


class Proc(Process):
    """test_replay's child process (own session, output collected), started with its own
    environment, and stopped with its whole process group."""

    def __init__(self, command: list[str], env: dict[str, str], name: str) -> None:
        super().__init__(command, env)
        self.name = name

    def stop(self, timeout: float = 20.0) -> None:
        """Ctrl-C for the process group; killed if it does not end in time."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        self.reader.join(10)


# The camera side's consumer of the node's output: one JSON line per message.
RECORDER = textwrap.dedent('''
    import json, sys
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from match_node_msgs.msg import Correspondences

    def stamp_ns(stamp):
        return stamp.sec * 1_000_000_000 + stamp.nanosec

    def on_message(msg):
        print(json.dumps({"stamp": stamp_ns(msg.header.stamp),
                          "reference": stamp_ns(msg.reference_stamp),
                          "frame_id": msg.header.frame_id, "frame_index": msg.frame_index,
                          "dropped_frames": msg.dropped_frames,
                          "matches": len(msg.current_x)}), flush=True)

    rclpy.init()
    node = Node("camera_side_recorder")
    subscription = node.create_subscription(
        Correspondences, sys.argv[1], on_message,
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    ready = False
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if not ready and subscription.get_publisher_count() > 0:
                print("READY", flush=True)
                ready = True
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print("END", flush=True)
''')


def dds_env(peer: Host, domain_id: int, discovery_range: str) -> dict[str, str]:
    """The environment of a process on one host, as the README tells a user to set it."""
    env = dict(os.environ)
    for stale in ("ROS_LOCALHOST_ONLY", "FASTRTPS_DEFAULT_PROFILES_FILE",
                  "ROS_DISCOVERY_SERVER", "FASTDDS_ENVIRONMENT_FILE"):
        env.pop(stale, None)
    env.update({
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE),
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": discovery_range,
        "ROS_STATIC_PEERS": peer.address,
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture
def network(tmp_path):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(tmp_path)
    try:
        net.up()
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return make_bag.mono_bag(tmp_path_factory.mktemp("netns") / "camera", num_frames=FRAMES,
                             size=SIZE, step=5, storage="mcap")


@pytest.mark.parametrize("discovery_range", ["SUBNET", "LOCALHOST"],
                         ids=["subnet", "peers_only"])
def test_node_in_another_namespace_gets_every_frame(network, bag, tmp_path, discovery_range):
    from test_node import node_command

    assert PROFILE.is_file(), PROFILE
    # Nothing else can reach these namespaces; a per-run domain anyway (0..101: ports below
    # Linux's ephemeral range).
    domain_id = random.Random(os.getpid()).randint(1, 101)
    camera_env = dds_env(network.robot, domain_id, discovery_range)
    robot_env = dds_env(network.camera, domain_id, discovery_range)
    before = network.camera.link_bytes()

    node = network.start(network.robot, node_command() + [
        "--ros-args", "-r", "__ns:=/camera", "-r", "image:=/camera/image_raw",
        "-p", "device:=cpu", "-p", "max_keypoints:=256", "-p", "allow_download:=false"],
        robot_env, "node")
    recorder_script = tmp_path / "recorder.py"
    recorder_script.write_text(RECORDER)
    recorder = network.start(network.camera, [sys.executable, str(recorder_script),
                                              "/camera/correspondences"], camera_env, "recorder")
    # The recorder matches the node's publisher only across the link: discovery works.
    recorder.wait_for("READY", START_TIMEOUT_S)

    replay = network.start(network.camera, [
        sys.executable, "-m", "match_node.ros.replay", str(bag), "--as-fast-as-consumed",
        "--wait-topic", "/camera/correspondences", "--wait-subscribers", str(FRAME_TIMEOUT_S),
        "--timeout", str(FRAME_TIMEOUT_S), "--first-frame-wait", "2"], camera_env, "replay")
    code = replay.finish((FRAMES + 2) * FRAME_TIMEOUT_S)
    assert code == 0, f"replay exited {code}:\n{replay.output}\nnode:\n{node.output}"
    done = json.loads(next(line for line in replay.lines
                           if line.startswith("[replay] done: ")).split(": ", 1)[1])
    assert done["frames"] == FRAMES and done["timeouts"] == 0, (replay.output, node.output)
    assert done["acked"] == FRAMES - 1, (replay.output, node.output)

    # Give a duplicate or late message time to show up, then stop the recorder.
    time.sleep(2.0)
    recorder.stop()
    node.stop()
    after = network.camera.link_bytes()

    messages = [json.loads(line) for line in recorder.lines if line.startswith("{")]
    images = list(bags.read_images(bag, decode=False))
    assert len(images) == FRAMES
    assert [m["stamp"] for m in messages] == [i.stamp_ns for i in images[1:]], \
        f"recorder:\n{recorder.output}\nnode:\n{node.output}"
    for t, message in enumerate(messages, start=1):
        assert message["reference"] == images[t - 1].stamp_ns
        assert message["frame_index"] == t and message["dropped_frames"] == 0
        assert message["frame_id"] == "camera_optical"
        assert message["matches"] > 50, message
    assert node.process.returncode == 0, node.output
    # Every image crossed the veth link as UDP (not shared memory, which two real hosts
    # cannot share): the camera side sent at least all pixel bytes.
    image_bytes = FRAMES * SIZE[0] * SIZE[1] * 3
    assert after["tx"] - before["tx"] >= image_bytes, (before, after)
