"""Publish a bag's camera topics over ROS 2, at the recorded rate or as fast as a node consumes.

    python -m match_node.ros.replay BAG [--topics T ...] [--rate 1.0 | --as-fast-as-consumed]
        [--wait-topic /ns/correspondences] [--timeout 30] [--clock] [--loop]
        [--wait-subscribers SECONDS]

A thin convenience over `ros2 bag play` that also works where ros2cli and rosbag2 are not
installed (it reads the bag with rosbags, sqlite3 or MCAP). It publishes the bag's Image,
CompressedImage and CameraInfo topics (or `--topics`, any type whose Python message package is
installed) with the recorded CDR bytes unchanged, so header stamps and frame ids are the
original ones. Images go out with sensor-data QoS (best effort, as the node subscribes),
everything else reliable.

Timing:
  --rate R                 (default 1.0) the recorded receive times (bag log times), scaled
                           by R: 2.0 plays twice as fast.
  --as-fast-as-consumed    flow control instead of a clock: the next frame (image stamp) is
                           published only after a message stamped like the previous frame
                           arrived on `--wait-topic` (default: <camera namespace>/correspondences
                           of the first image topic), so a node with a one-frame buffer drops
                           nothing and processes every frame. The first frame of each pass has
                           no reference and so gives no message: the next frame follows after
                           `--first-frame-wait` seconds (or its ack, if one comes). A frame
                           whose ack does not come within `--timeout` is reported and the replay
                           goes on (exit status 3 at the end).
Options:
  --clock                  also publish /clock (rosgraph_msgs/Clock) from the bag's log time,
                           before each message and at --clock-hz while waiting (use_sim_time).
  --loop                   play again from the start until interrupted (stamps then go back:
                           the node restarts tracking, see on_stamp_backwards).
  --wait-subscribers S     before starting, wait up to S seconds until every image topic has
                           a subscriber (and, with flow control, the wait topic a publisher).

Ends with a line `[replay] done: {json}` (frames, messages, elapsed and bag duration in
seconds, acknowledged frames, timeouts).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import bags

DEFAULT_WAIT_TYPE = bags.CORRESPONDENCES


def header_stamp_ns(data: bytes) -> int:
    """header.stamp of a serialized message whose first field is a std_msgs/Header (Image,
    CompressedImage, CameraInfo, Correspondences), read from the CDR bytes directly."""
    if len(data) < 12:
        raise ValueError("message too short for a header")
    little = data[1] & 1  # encapsulation: 0x0001 CDR little-endian, 0x0000 big-endian
    sec, nanosec = struct.unpack("<iI" if little else ">iI", data[4:12])
    return sec * 1_000_000_000 + nanosec


def message_class(msgtype: str) -> Any:
    """The rclpy message class of 'pkg/msg/Name'."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"error: message type {msgtype} is not installed ({error})") from None


@dataclass
class Acks:
    """Stamps seen on the wait topic, for flow control."""
    stamps: set[int] = field(default_factory=set)
    condition: threading.Condition = field(default_factory=threading.Condition)

    def add(self, data: bytes) -> None:
        try:
            stamp = header_stamp_ns(data)
        except ValueError:
            return
        with self.condition:
            self.stamps.add(stamp)
            self.condition.notify_all()

    def clear(self) -> None:
        with self.condition:
            self.stamps.clear()

    def wait(self, stamp: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.condition:
            while stamp not in self.stamps:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.condition.wait(remaining)
            return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m match_node.ros.replay",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("bag", help="bag directory, or a .db3/.mcap file")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC",
                        help="topics to publish (default: image and camera_info topics)")
    timing = parser.add_mutually_exclusive_group()
    timing.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded timing")
    timing.add_argument("--as-fast-as-consumed", action="store_true",
                        help="publish each frame after the previous one's message arrived")
    parser.add_argument("--wait-topic", help="flow control topic (default: "
                        "<namespace of the first image topic>/correspondences)")
    parser.add_argument("--wait-type", default=DEFAULT_WAIT_TYPE,
                        help="its message type (first field a std_msgs/Header)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a frame's message before going on")
    parser.add_argument("--first-frame-wait", type=float, default=1.0,
                        help="seconds after the first frame of a pass (it gives no message)")
    parser.add_argument("--wait-subscribers", type=float, metavar="SECONDS",
                        help="wait up to this long for subscribers before starting "
                             "(default: 30 with --as-fast-as-consumed, else 0)")
    parser.add_argument("--clock", action="store_true", help="publish /clock from the bag time")
    parser.add_argument("--clock-hz", type=float, default=40.0)
    parser.add_argument("--loop", action="store_true", help="play again until interrupted")
    parser.add_argument("--quiet", action="store_true")
    return parser


class Replay:
    def __init__(self, args: argparse.Namespace) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

        self.args = args
        available = bags.topics(args.bag)
        if args.topics:
            missing = [t for t in args.topics if t not in available]
            if missing:
                raise SystemExit(f"error: {args.bag} has no topic(s) {', '.join(missing)}; it has "
                                 + ", ".join(sorted(available)))
            chosen = list(args.topics)
        else:
            chosen = sorted(t for t, s in available.items()
                            if s.msgtype in bags.IMAGE_TYPES + (bags.CAMERA_INFO,))
        if not chosen:
            raise SystemExit(f"error: {args.bag} has no image or camera_info topics")
        self.topics = chosen
        self.image_topics = {t for t in chosen if available[t].msgtype in bags.IMAGE_TYPES}
        self.bag_duration_s = 0.0
        self.node = Node(f"match_node_replay_{os.getpid()}")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {
            t: self.node.create_publisher(
                message_class(available[t].msgtype), t,
                qos_profile_sensor_data if t in self.image_topics else reliable)
            for t in chosen}
        self.clock_publisher = None
        if args.clock:
            from rosgraph_msgs.msg import Clock
            self.clock_publisher = self.node.create_publisher(Clock, "/clock", reliable)
        self.acks = Acks()
        self.wait_topic = None
        if args.as_fast_as_consumed:
            if not self.image_topics:
                raise SystemExit("error: --as-fast-as-consumed needs an image topic")
            self.wait_topic = (args.wait_topic
                               or bags.correspondences_topic_for(sorted(self.image_topics)[0]))
            self.ack_subscription = self.node.create_subscription(
                message_class(args.wait_type), self.wait_topic, self.acks.add,
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self._spin, daemon=True)
        self.spinner.start()
        self.stats = {"frames": 0, "messages": 0, "acked": 0, "timeouts": 0, "passes": 0}

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[replay] {text}", file=sys.stderr, flush=True)

    def wait_for_subscribers(self, seconds: float) -> None:
        """Wait until every image topic has a subscriber (and, with flow control, the wait
        topic a publisher); camera_info and other topics are not waited for."""
        deadline = time.monotonic() + seconds
        waited = [self.publishers[t] for t in sorted(self.image_topics)] or \
            list(self.publishers.values())

        def missing() -> list[str]:
            out = [p.topic_name for p in waited if p.get_subscription_count() == 0]
            if self.wait_topic and self.ack_subscription.get_publisher_count() == 0:
                out.append(f"a publisher of {self.wait_topic}")
            return out

        while missing():
            if time.monotonic() > deadline:
                self.log(f"warning: still waiting for {', '.join(missing())} after "
                         f"{seconds:g} s; starting anyway")
                return
            time.sleep(0.05)
        # Discovery is asymmetric: the subscriber may not have matched us yet (best-effort
        # samples sent in between are lost); a short pause covers it.
        time.sleep(0.5)

    def publish_clock(self, log_time_ns: int) -> None:
        if self.clock_publisher is not None:
            from rosgraph_msgs.msg import Clock
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(int(log_time_ns), 1_000_000_000)
            self.clock_publisher.publish(msg)

    def sleep_until(self, wall: float, bag_time_at: Any) -> None:
        """Sleep until monotonic time `wall`, ticking /clock meanwhile (bag_time_at(wall))."""
        period = 1.0 / self.args.clock_hz if self.clock_publisher else None
        while True:
            now = time.monotonic()
            if now >= wall:
                return
            step = wall - now if period is None else min(period, wall - now)
            time.sleep(step)
            if period is not None and time.monotonic() < wall:
                self.publish_clock(bag_time_at(time.monotonic()))

    def wait_ack(self, stamp: int, first: bool) -> None:
        if first:
            # The first frame of a pass gives no message (nothing to match it to) unless the
            # consumer still holds an older frame: give it time to take the frame.
            self.acks.wait(stamp, self.args.first_frame_wait)
            return
        if self.acks.wait(stamp, self.args.timeout):
            self.stats["acked"] += 1
        else:
            self.stats["timeouts"] += 1
            self.log(f"warning: no message on {self.wait_topic} for the frame stamped "
                     f"{stamp / 1e9:.9f} within {self.args.timeout:.0f} s; going on")

    def play_once(self) -> None:
        args = self.args
        in_flight: int | None = None  # stamp of the last published frame, awaiting its ack
        first_frame = True
        start_wall = None
        first_log = None
        last_log = None
        self.acks.clear()  # a loop replays the same stamps: only this pass's messages count
        for message in bags.messages(args.bag, self.topics):
            if first_log is None:
                first_log, start_wall = message.log_time_ns, time.monotonic()
            last_log = message.log_time_ns
            if message.topic in self.image_topics:
                stamp = header_stamp_ns(message.data)
                if args.as_fast_as_consumed and in_flight is not None and stamp != in_flight:
                    self.wait_ack(in_flight, first_frame)
                    first_frame = False
                if stamp != in_flight:
                    self.stats["frames"] += 1
                in_flight = stamp
            if not args.as_fast_as_consumed:
                target = start_wall + (message.log_time_ns - first_log) / 1e9 / args.rate
                self.sleep_until(target, lambda wall, f=first_log, s=start_wall:
                                 f + int((wall - s) * args.rate * 1e9))
            self.publish_clock(message.log_time_ns)
            self.publishers[message.topic].publish(message.data)  # CDR bytes: publish_raw
            self.stats["messages"] += 1
        if args.as_fast_as_consumed and in_flight is not None and not first_frame:
            self.wait_ack(in_flight, False)
        if first_log is not None:
            self.bag_duration_s += (last_log - first_log) / 1e9
        self.stats["passes"] += 1

    def run(self) -> int:
        if shutil.which("ros2"):
            self.log("hint: `ros2 bag play` is available here as well; this tool adds "
                     "--as-fast-as-consumed flow control and needs no rosbag2")
        wait = self.args.wait_subscribers
        if wait is None:
            wait = 30.0 if self.args.as_fast_as_consumed else 0.0
        if wait > 0:
            self.wait_for_subscribers(wait)
        self.log(f"playing {', '.join(self.topics)} from {self.args.bag}"
                 + (f", flow control on {self.wait_topic}" if self.wait_topic
                    else f" at rate {self.args.rate:g}"))
        started = time.monotonic()
        try:
            while True:
                self.play_once()
                if not self.args.loop:
                    break
        except KeyboardInterrupt:
            pass
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # let the last best-effort samples leave before the process ends
        done = {**self.stats, "elapsed_s": round(elapsed, 3),
                "bag_duration_s": round(self.bag_duration_s, 3)}
        print("[replay] done: " + json.dumps(done), flush=True)
        return 3 if self.stats["timeouts"] else 0

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    # Started by launch_ros, the command line ends in --ros-args ...: those are rclpy's.
    from rclpy.utilities import remove_ros_args
    argv = remove_ros_args(["replay", *(sys.argv[1:] if argv is None else argv)])[1:]
    args = build_parser().parse_args(argv)
    if args.rate <= 0:
        print("error: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        bags.topics(args.bag)
    except (FileNotFoundError, bags.BagError, Exception) as error:  # noqa: BLE001 - any reader error
        print(f"error: cannot read {args.bag}: {error}", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.signals import SignalHandlerOptions

    # Ctrl-C and SIGTERM end the replay in the main thread (KeyboardInterrupt), which then
    # prints its summary and shuts ROS down itself; rclpy's handler would invalidate the
    # context under the publishing loop.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    replay = None
    try:
        replay = Replay(args)
        return replay.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if replay is not None:
            replay.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
