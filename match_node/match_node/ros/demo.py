"""Demo: replay a real-image sequence through the real node and summarise what it published.

    python -m match_node.ros.demo [--frames 12] [--photo coffee] [--output out/demo]

Starts match_node as its own process (the installed executable, as `ros2 run` would), publishes
a sequence rendered from a real photograph along a smooth camera path (known homographies),
one frame at a time as fast as the node consumes them, and checks every Correspondences
message against the ground truth. Prints a line per frame and a summary, and writes a picture
of the matches of one frame pair and of the longest tracks.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from match_node_msgs.msg import Correspondences  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ..groundtruth.planar import make_sequence, reprojection_errors  # noqa: E402
from ..viz import draw_matches  # noqa: E402
from .conversions import msg_arrays, stamp_to_ns  # noqa: E402


def node_command() -> list[str]:
    """`ros2 run match_node match_node` when ros2cli exists, else the installed executable."""
    for root in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        executable = Path(root) / "lib" / "match_node" / "match_node"
        if root and executable.is_file():
            return [sys.executable, str(executable)]
    return [sys.executable, "-m", "match_node.ros.node"]


def config_file() -> str | None:
    for root in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        path = Path(root) / "share" / "match_node" / "config" / "match_node.yaml"
        if root and path.is_file():
            return str(path)
    return None


def to_image_msg(frame: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = frame.shape[:2]
    msg.encoding, msg.step = "rgb8", frame.shape[1] * 3
    msg.data = frame.tobytes()
    return msg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--photo", default="coffee", help="skimage photo: coffee, astronaut, ...")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="out/demo", help="folder for the pictures")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per frame")
    args = parser.parse_args(argv)

    sequence = make_sequence(args.photo, num_frames=args.frames, size=(640, 480), step=8)
    command = node_command() + ["--ros-args", "-r", "__ns:=/demo", "-r", "image:=/demo/camera/image_raw",
                                "-p", f"device:={args.device}"]
    config = config_file()
    if config:
        command[-4:-4] = ["--params-file", config]
    print(f"[demo] starting the node: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command)

    rclpy.init()
    node = Node("match_node_demo")
    received: list[Correspondences] = []
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(Correspondences, "/demo/correspondences", received.append,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    publisher = node.create_publisher(Image, "/demo/camera/image_raw", qos_profile_sensor_data)

    def spin_until(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if process.poll() is not None:
                raise RuntimeError(f"the node exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            rclpy.spin_once(node, timeout_sec=0.05)

    status = 0
    try:
        spin_until(lambda: publisher.get_subscription_count() > 0 and diagnostics, 180,
                   "the node to start")
        time.sleep(0.5)  # let the node's subscription match our publisher too
        start_ns = time.time_ns()
        stamps = [start_ns + i * 100_000_000 for i in range(args.frames)]  # a 10 Hz camera
        print(f"[demo] publishing {args.frames} frames of 640x480 rendered from skimage "
              f"'{args.photo}' with known homographies", flush=True)
        print(f"{'frame':>5} {'matches':>7} {'kpts':>5} {'prec@3px':>8} {'med err':>7} "
              f"{'exit':>5} {'extract':>8} {'match':>7} {'total':>7} {'new tracks':>10}")
        highest_track = 0
        for i, frame in enumerate(sequence.frames):
            publisher.publish(to_image_msg(frame, stamps[i], "camera_optical"))
            if i == 0:
                time.sleep(0.3)  # the first frame is only the reference
                continue
            spin_until(lambda: len(received) >= i, args.timeout, f"correspondences of frame {i}")
            msg = received[i - 1]
            arrays = msg_arrays(msg)
            reference = stamps.index(stamp_to_ns(msg.reference_stamp))
            current = stamps.index(stamp_to_ns(msg.header.stamp))
            errors = reprojection_errors(sequence.relative(reference, current),
                                         arrays["reference_xy"], arrays["current_xy"])
            precision = float((errors < 3).mean()) if len(errors) else float("nan")
            new_tracks = int((arrays["track_id"] > highest_track).sum())
            highest_track = max([highest_track, *arrays["track_id"].tolist()])
            print(f"{current:>5} {len(errors):>7} {msg.current_num_keypoints:>5} {precision:>8.3f} "
                  f"{np.median(errors) if len(errors) else float('nan'):>7.2f} "
                  f"{msg.exit_layer:>2}/{msg.num_layers:<2} {msg.extract_ms:>6.0f}ms "
                  f"{msg.match_ms:>5.0f}ms {msg.total_ms:>5.0f}ms {new_tracks:>10}", flush=True)
        summarise(received, sequence, stamps, Path(args.output))
    except (RuntimeError, TimeoutError) as error:
        print(f"[demo] error: {error}", file=sys.stderr)
        status = 1
    finally:
        shut_down(node, process)
    return status


def shut_down(node: Node, process: subprocess.Popen) -> None:
    """Close our side, then stop the node's process like Ctrl-C (killed after 20 s)."""
    node.destroy_node()
    rclpy.try_shutdown()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def summarise(received: list[Correspondences], sequence, stamps: list[int], output: Path) -> None:
    all_errors, lengths = [], {}
    for msg in received:
        arrays = msg_arrays(msg)
        a = stamps.index(stamp_to_ns(msg.reference_stamp))
        b = stamps.index(stamp_to_ns(msg.header.stamp))
        all_errors.append(reprojection_errors(sequence.relative(a, b), arrays["reference_xy"],
                                              arrays["current_xy"]))
        for track in arrays["track_id"].tolist():
            lengths[track] = lengths.get(track, 1) + 1  # frames a track was seen in
    errors = np.concatenate(all_errors) if all_errors else np.zeros(0)
    totals = np.array([m.total_ms for m in received])
    print(f"[demo] summary: {len(received)} Correspondences messages for {len(stamps)} frames; "
          f"{len(errors)} matches, {np.mean([len(e) for e in all_errors]):.0f} per frame; "
          f"precision@3px {np.mean(errors < 3):.3f}, median reprojection error "
          f"{np.median(errors):.2f} px; {len(lengths)} tracks, longest seen in "
          f"{max(lengths.values())} frames, {sum(v >= 5 for v in lengths.values())} tracks seen "
          f"in 5+ frames; total latency p50 {np.percentile(totals, 50):.0f} ms "
          f"(p95 {np.percentile(totals, 95):.0f} ms) on {received[0].extractor} + "
          f"{received[0].matcher}")
    output.mkdir(parents=True, exist_ok=True)
    msg = received[len(received) // 2]
    arrays = msg_arrays(msg)
    a = stamps.index(stamp_to_ns(msg.reference_stamp))
    b = stamps.index(stamp_to_ns(msg.header.stamp))
    picture = draw_matches(sequence.frames[a], sequence.frames[b], arrays["reference_xy"],
                           arrays["current_xy"], arrays["confidence"],
                           f"frames {a}->{b}: {len(arrays['confidence'])} matches from the node")
    path = output / "demo_matches.png"
    cv2.imwrite(str(path), picture)
    tracks_path = output / "demo_tracks.png"
    cv2.imwrite(str(tracks_path), draw_tracks(received, sequence.frames[-1]))
    print(f"[demo] wrote {path} and {tracks_path}")


def draw_tracks(received: list[Correspondences], last_frame: np.ndarray) -> np.ndarray:
    """Polylines of every track over the last frame, coloured by track id."""
    canvas = cv2.cvtColor(last_frame, cv2.COLOR_RGB2BGR)
    paths: dict[int, list[tuple[float, float]]] = {}
    for msg in received:
        arrays = msg_arrays(msg)
        for track, ref, cur in zip(arrays["track_id"].tolist(), arrays["reference_xy"],
                                   arrays["current_xy"]):
            path = paths.setdefault(track, [tuple(ref)])
            path.append(tuple(cur))
    for track, path in paths.items():
        if len(path) < 3:
            continue
        colour = tuple(int(c) for c in np.random.default_rng(track).integers(64, 256, 3))
        points = np.round(np.array(path)).astype(np.int32)
        cv2.polylines(canvas, [points], False, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, tuple(points[-1]), 2, colour, -1, cv2.LINE_AA)
    return canvas


if __name__ == "__main__":
    sys.exit(main())
