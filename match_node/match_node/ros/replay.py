"""Publish a bag's camera topics over ROS 2, at the recorded rate or as fast as a node consumes.

    python -m match_node.ros.replay BAG [--topics T ...] [--rate 1.0 | --as-fast-as-consumed]
        [--wait-topic /ns/correspondences] [--timeout 30] [--clock] [--loop]
        [--wait-subscribers SECONDS] [--wait-for-subscriber TOPIC ...]

A thin convenience over `ros2 bag play` that also works where ros2cli and rosbag2 are not
installed (it reads the bag with rosbags, sqlite3 or MCAP). It publishes the bag's Image,
CompressedImage and CameraInfo topics (or `--topics`, any type whose Python message package is
installed) with the recorded CDR bytes unchanged, so header stamps and frame ids are the
original ones. Images go out with sensor-data QoS (best effort, as the node subscribes),
everything else reliable.

Timing:
  --rate R                 (default 1.0) the recorded receive times (bag log times), scaled
                           by R: 2.0 plays twice as fast. The clock starts with the first
                           message, after the start conditions below. With --wait-topic, the
                           end of a pass waits (up to --timeout) for the node's message for
                           the last frame, and `acked` counts the frames that got one (a node
                           slower than the bag skips frames).
  --as-fast-as-consumed    flow control instead of a clock: the next frame (image stamp) is
                           published only after a message stamped like the previous frame
                           arrived on `--wait-topic`, so a node with a one-frame buffer drops
                           nothing and processes every frame. The default wait topic is
                           <camera namespace>/correspondences of the first image topic, and for
                           a stereo bag (.../left/... and .../right/... images) the stereo
                           node's <namespace>/correspondences/stereo. A mono node gives no
                           message for the first frame of a pass (nothing to match it to): the
                           next frame follows after `--first-frame-wait` seconds (or its ack,
                           if one comes). The stereo output (a wait topic ending in
                           /correspondences/stereo) acks every pair, the first too, which is
                           then awaited like any other. A frame whose ack does not come within
                           `--timeout` is reported and the replay goes on (exit status 3).
Start:
  In every mode, nothing is published (and the clock does not start) until every image topic
  has a subscriber (a match_node subscribes only once its models are loaded), the wait topic
  a publisher (with flow control, or when --wait-topic is given) and each
  --wait-for-subscriber topic a subscriber other than this tool: up to --wait-subscribers
  seconds (default 30; 0 = start at once). If they do not come, the replay names what is
  missing and exits with status 4 without publishing.
Options:
  --clock                  also publish /clock (rosgraph_msgs/Clock) from the bag's log time,
                           before each message and at --clock-hz while waiting (use_sim_time).
  --loop                   play again from the start until interrupted (stamps then go back:
                           the node restarts tracking, see on_stamp_backwards).

Ends with a line `[replay] done: {json}` (frames, messages, acknowledged frames, timeouts,
passes, whether it was interrupted, and the bag's duration and the wall time taken, in
seconds). Ctrl-C or SIGTERM, at any moment, stops it within a fraction of a second with that
line and exit status 0; a second Ctrl-C changes nothing.

Exit status: 0 done or interrupted, 2 bad arguments or unreadable bag, 3 some frames were not
acknowledged in time, 4 the subscribers did not come within --wait-subscribers.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import threading
import time
from typing import Any

from ..bags import msgtypes, rosbag as bags
from .replay_logic import (Acks, Interrupted, Stop, default_wait_topic, first_frame_acked,
                           header_stamp_ns, not_ready, wait_until_ready)

DEFAULT_WAIT_TYPE = msgtypes.CORRESPONDENCES
EXIT_TIMEOUTS = 3
EXIT_NOT_READY = 4


def message_class(msgtype: str) -> Any:
    """The rclpy message class of 'pkg/msg/Name'."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"error: message type {msgtype} is not installed ({error})") from None


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
    parser.add_argument("--wait-topic", help="flow control topic (default: the stereo node's "
                        "<rig>/correspondences/stereo for a left/right pair, else <namespace of "
                        "the first image topic>/correspondences); with --rate, a topic whose "
                        "publisher must exist before the replay starts")
    parser.add_argument("--wait-type", default=DEFAULT_WAIT_TYPE,
                        help="its message type (first field a std_msgs/Header)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a frame's message before going on")
    parser.add_argument("--first-frame-wait", type=float, default=1.0,
                        help="seconds after the first frame of a pass when the wait topic gives "
                             "no message for it (a mono node's output)")
    parser.add_argument("--wait-subscribers", type=float, default=30.0, metavar="SECONDS",
                        help="wait up to this long for the subscribers (and the wait topic's "
                             "publisher) before starting, in every mode; 0 = start at once "
                             "(default: 30)")
    parser.add_argument("--wait-for-subscriber", nargs="+", action="extend", default=[],
                        metavar="TOPIC", help="also wait for a subscriber (other than this "
                        "tool) on these topics, e.g. a consumer of the node's output")
    parser.add_argument("--clock", action="store_true", help="publish /clock from the bag time")
    parser.add_argument("--clock-hz", type=float, default=40.0)
    parser.add_argument("--loop", action="store_true", help="play again until interrupted")
    parser.add_argument("--quiet", action="store_true")
    return parser


class Replay:
    """One replay: a node publishing the chosen topics of a bag, its /clock and its ack
    subscription, and the loop that plays the bag (`run`)."""

    def __init__(self, args: argparse.Namespace, stop: Stop | None = None) -> None:
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

        self.args = args
        self.stop = stop or Stop()
        available = bags.topics(args.bag)
        if args.topics:
            missing = [t for t in args.topics if t not in available]
            if missing:
                raise SystemExit(f"error: {args.bag} has no topic(s) {', '.join(missing)}; it has "
                                 + ", ".join(sorted(available)))
            chosen = list(args.topics)
        else:
            chosen = sorted(t for t, s in available.items()
                            if s.msgtype in msgtypes.IMAGE_TYPES + (msgtypes.CAMERA_INFO,))
        if not chosen:
            raise SystemExit(f"error: {args.bag} has no image or camera_info topics")
        self.topics = chosen
        self.image_topics = {t for t in chosen if available[t].msgtype in msgtypes.IMAGE_TYPES}
        self.bag_duration_s = 0.0
        # The name may be remapped (a launch file's `name=`): see node.get_name().
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
        self.ack_subscription = None
        if args.as_fast_as_consumed and not self.image_topics:
            raise SystemExit("error: --as-fast-as-consumed needs an image topic")
        if args.as_fast_as_consumed or args.wait_topic:
            self.wait_topic = args.wait_topic or default_wait_topic(self.image_topics)
            self.ack_subscription = self.node.create_subscription(
                message_class(args.wait_type), self.wait_topic, self.acks.add,
                QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        self.ack_first = bool(self.wait_topic) and first_frame_acked(self.wait_topic)
        self.executor = None
        self.spinner: threading.Thread | None = None
        self.stats = {"frames": 0, "messages": 0, "acked": 0, "timeouts": 0, "passes": 0}

    def start_spinning(self) -> None:
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self._spin, name="replay_spin", daemon=True)
        self.spinner.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[replay] {text}", file=sys.stderr, flush=True)

    def _subscribers_but_me(self, topic: str) -> int:
        me = (self.node.get_name(), self.node.get_namespace())
        return sum(1 for info in self.node.get_subscriptions_info_by_topic(topic)
                   if (info.node_name, info.node_namespace) != me)

    def missing(self) -> list[str]:
        """What is not there yet for the start (see not_ready)."""
        waited = sorted(self.image_topics) or sorted(self.publishers)
        image_subscribers = {t: self.publishers[t].get_subscription_count() for t in waited}
        wait_publishers = (self.ack_subscription.get_publisher_count()
                           if self.ack_subscription is not None else 0)
        others = {}
        for topic in self.args.wait_for_subscriber:
            resolved = self.node.resolve_topic_name(topic)
            others[resolved] = self._subscribers_but_me(resolved)
        return not_ready(image_subscribers, self.wait_topic, wait_publishers, others)

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
            if not self.stop.sleep(step):
                raise Interrupted
            if period is not None and time.monotonic() < wall:
                self.publish_clock(bag_time_at(time.monotonic()))

    def wait_ack(self, stamp: int, first: bool) -> None:
        if first and not self.ack_first:
            # The first frame of a pass gives no message (nothing to match it to) unless the
            # consumer still holds an older frame: give it time to take the frame.
            if self.acks.wait(stamp, self.args.first_frame_wait, self.stop):
                self.stats["acked"] += 1
            return
        if self.acks.wait(stamp, self.args.timeout, self.stop):
            self.stats["acked"] += 1
        else:
            self.stats["timeouts"] += 1
            self.log(f"warning: no message on {self.wait_topic} for the frame stamped "
                     f"{stamp / 1e9:.9f} within {self.args.timeout:.0f} s; going on")

    def play_once(self) -> None:
        args = self.args
        flow = args.as_fast_as_consumed
        in_flight: int | None = None  # stamp of the last published frame, awaiting its ack
        first_frame = True
        pass_stamps: set[int] = set()
        start_wall = None
        first_log = None
        last_log = None
        self.acks.clear()  # a loop replays the same stamps: only this pass's messages count
        try:
            for message in bags.messages(args.bag, self.topics):
                if self.stop.requested:
                    raise Interrupted
                if first_log is None:
                    first_log, start_wall = message.log_time_ns, time.monotonic()
                last_log = message.log_time_ns
                if message.topic in self.image_topics:
                    stamp = header_stamp_ns(message.data)
                    if flow and in_flight is not None and stamp != in_flight:
                        self.wait_ack(in_flight, first_frame)
                        first_frame = False
                    if stamp != in_flight:
                        self.stats["frames"] += 1
                        pass_stamps.add(stamp)
                    in_flight = stamp
                if not flow:
                    target = start_wall + (message.log_time_ns - first_log) / 1e9 / args.rate
                    self.sleep_until(target, lambda wall, f=first_log, s=start_wall:
                                     f + int((wall - s) * args.rate * 1e9))
                self.publish_clock(message.log_time_ns)
                self.publishers[message.topic].publish(message.data)  # CDR bytes: publish_raw
                self.stats["messages"] += 1
            if flow and in_flight is not None:
                self.wait_ack(in_flight, first_frame)
            elif self.wait_topic and in_flight is not None and len(pass_stamps) > 1:
                # Recorded timing: the node skips frames it had no time for, but always
                # processes the newest one; wait for it so that the pass's results are out
                # before the replay (and with it a replay launch) ends.
                if not self.acks.wait(in_flight, args.timeout, self.stop):
                    self.stats["timeouts"] += 1
                    self.log(f"warning: no message on {self.wait_topic} for the last frame "
                             f"within {args.timeout:.0f} s")
                with self.acks.condition:
                    self.stats["acked"] += len(pass_stamps & self.acks.stamps)
        finally:
            if first_log is not None:
                self.bag_duration_s += (last_log - first_log) / 1e9
        self.stats["passes"] += 1

    def run(self) -> int:
        if shutil.which("ros2"):
            self.log("hint: `ros2 bag play` is available here as well; this tool adds "
                     "--as-fast-as-consumed flow control and needs no rosbag2")
        self.start_spinning()
        interrupted = False
        started = None
        try:
            wait = self.args.wait_subscribers
            if wait > 0:
                missing = wait_until_ready(self.missing, wait, self.stop, self.log)
                if missing:
                    self.log(f"error: gave up after {wait:g} s waiting for "
                             f"{', '.join(missing)}; nothing was published. Is the node "
                             f"running, with these topic names? (it subscribes once its "
                             f"models are loaded: --wait-subscribers SECONDS waits longer, "
                             f"0 starts without waiting)")
                    return EXIT_NOT_READY
            self.log(f"playing {', '.join(self.topics)} from {self.args.bag}"
                     + (f", flow control on {self.wait_topic}" if self.args.as_fast_as_consumed
                        else f" at rate {self.args.rate:g}"))
            started = time.monotonic()
            while True:
                self.play_once()
                if not self.args.loop:
                    break
        except Interrupted:
            interrupted = True
        elapsed = time.monotonic() - started if started is not None else 0.0
        if not interrupted:
            self.stop.sleep(0.3)  # let the last best-effort samples leave before the end
        interrupted = interrupted or self.stop.requested
        done = {**self.stats, "interrupted": interrupted, "elapsed_s": round(elapsed, 3),
                "bag_duration_s": round(self.bag_duration_s, 3)}
        print("[replay] done: " + json.dumps(done), flush=True)
        if interrupted:
            self.log(f"interrupted ({self.stop.signal_name or 'stop'}) after "
                     f"{self.stats['frames']} frames")
            return 0
        return EXIT_TIMEOUTS if self.stats["timeouts"] else 0

    def close(self) -> None:
        """Stop the spin thread and wait for it, then destroy the node: a thread left inside
        rclpy when the process ends aborts it ('terminate called without an active
        exception')."""
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
        if self.spinner is not None:
            self.spinner.join(timeout=2.0)
        self.node.destroy_node()


def main(argv: list[str] | None = None) -> int:
    """The program (argv None: the command line; the process ends after it) or an in-process
    call with `argv`."""
    # First of all: Ctrl-C and SIGTERM only set a flag from now on (see Stop).
    stop = Stop()
    stop.install()
    try:
        return _main(argv, stop)
    finally:
        stop.uninstall(exiting=argv is None)


def _main(argv: list[str] | None, stop: Stop) -> int:
    # Started by launch_ros, the command line ends in --ros-args ...: those are rclpy's.
    from rclpy.utilities import remove_ros_args
    full = ["replay", *(sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(remove_ros_args(full)[1:])
    if args.rate <= 0:
        print("error: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        bags.topics(args.bag)
    except Exception as error:  # noqa: BLE001 - any reader error, named in the message
        print(f"error: cannot read {args.bag}: {error}", file=sys.stderr)
        return 2
    if stop.requested:
        return 0
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # rclpy's handlers would shut the context down under the publishing loop: the replay
    # stops itself (Stop) and then shuts ROS down in order.
    rclpy.init(args=full, signal_handler_options=SignalHandlerOptions.NO)
    replay = None
    try:
        replay = Replay(args, stop)
        return replay.run()
    finally:
        if replay is not None:
            replay.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
