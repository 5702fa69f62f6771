"""The running node at a camera's rate: image in to message out, over DDS, as a robot sees it.

    python -m bench.node_rate [--config cpu_realtime.yaml] [--rate 10] [--frames 40]
                              [--photos coffee,motorcycle,gravel] [--warmup 8]
                              [--output bench/results] [--name node_rate]

Starts match_node as its own process with a config file (the installed executable, as
`ros2 run` would; the demo's start-up), publishes 640x480 frames rendered from real
photographs along smooth camera paths (known homographies, groundtruth/planar.py) at `--rate`
Hz, each stamped with the wall time at which it is published, and records when each
Correspondences message arrives. Per message: latency = arrival time - image stamp (the
image's transport, the node's queue and work, and the message's transport back), and
precision against the exact homography between the frame and its reference (the frame the
node matched it to, which is not the previous one when frames were superseded). A camera
path per photograph, one after another with a pause between them; messages whose reference
lies on another path are left out of the precision. Frames of the first `--warmup` of each
path are left out of the latency (model warm-up, the budget's calibration).

"Sustains the rate" means every published frame after the first gets its own message (none
superseded) with p95 latency at most the frame period. Writes <name>.md and <name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from match_node_msgs.msg import Correspondences  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from match_node.groundtruth.planar import make_sequence, reprojection_errors  # noqa: E402
from match_node.ros.conversions import msg_arrays, stamp_to_ns  # noqa: E402
from match_node.ros.demo import node_command, shut_down, to_image_msg  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "match_node" / "config"
CORRECT_PX = 3.0


def run(args: argparse.Namespace) -> dict:
    paths = {photo: make_sequence(photo, num_frames=args.frames, size=(640, 480), step=6,
                                  seed=1) for photo in args.photos.split(",")}
    config = CONFIG_DIR / args.config
    command = node_command() + ["--ros-args", "--params-file", str(config),
                                "-r", "__ns:=/bench", "-r", "image:=/bench/camera/image_raw"]
    print(f"[node_rate] starting the node: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command)
    rclpy.init()
    node = Node("node_rate_bench")
    arrivals: list[tuple[int, Correspondences]] = []
    diagnostics: list[DiagnosticArray] = []
    node.create_subscription(Correspondences, "/bench/correspondences",
                             lambda msg: arrivals.append((time.time_ns(), msg)),
                             QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    publisher = node.create_publisher(Image, "/bench/camera/image_raw", qos_profile_sensor_data)
    period_ns = int(1e9 / args.rate)
    published: dict[int, tuple[str, int]] = {}  # stamp -> (photo, frame index)
    try:
        deadline = time.monotonic() + 180
        while not (publisher.get_subscription_count() > 0 and diagnostics):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the node did not start")
            rclpy.spin_once(node, timeout_sec=0.05)
        for photo, sequence in paths.items():
            messages = [to_image_msg(np.ascontiguousarray(f), 0, "camera_optical")
                        for f in sequence.frames]
            next_ns = time.time_ns() + period_ns
            for index, msg in enumerate(messages):
                while (now := time.time_ns()) < next_ns:
                    rclpy.spin_once(node, timeout_sec=min(0.005, (next_ns - now) / 1e9))
                stamp = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                publisher.publish(msg)
                published[stamp] = (photo, index)
                next_ns += period_ns
            settle = time.monotonic() + 2.0  # the last frames' messages, and a pause
            while time.monotonic() < settle:
                rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        shut_down(node, process)
    return summarise(arrivals, published, paths, args)


def summarise(arrivals, published, paths, args) -> dict:
    latencies, matched, correct, node_total, cross_path = [], 0, 0, [], 0
    stages: dict[str, list[float]] = {k: [] for k in ("preprocess_ms", "extract_ms",
                                                      "match_ms", "refine_ms")}
    per_photo: dict[str, int] = {photo: 0 for photo in paths}
    for arrived_ns, msg in arrivals:
        stamp, reference = stamp_to_ns(msg.header.stamp), stamp_to_ns(msg.reference_stamp)
        if stamp not in published or reference not in published:
            continue
        photo, index = published[stamp]
        per_photo[photo] += 1
        if index >= args.warmup:
            latencies.append((arrived_ns - stamp) / 1e6)
            node_total.append(msg.total_ms)
            for key, values in stages.items():
                values.append(getattr(msg, key))
        ref_photo, ref_index = published[reference]
        if ref_photo != photo:
            cross_path += 1
            continue
        arrays = msg_arrays(msg)
        errors = reprojection_errors(paths[photo].relative(ref_index, index),
                                     arrays["reference_xy"], arrays["current_xy"])
        matched += len(errors)
        correct += int((errors < CORRECT_PX).sum())
    expected = len(published) - 1  # the first frame only becomes a reference
    latencies_np = np.array(latencies)
    return {
        "config": args.config, "rate_hz": args.rate, "frames_published": len(published),
        "messages": len(arrivals), "messages_expected": expected,
        "superseded_or_lost": expected - len(arrivals),
        "messages_per_photo": per_photo, "messages_across_paths": cross_path,
        "latency_ms": {"median": float(np.median(latencies_np)),
                       "p95": float(np.percentile(latencies_np, 95)),
                       "max": float(latencies_np.max()), "n": int(len(latencies_np))},
        "node_total_ms": {"median": float(np.median(node_total)),
                          "p95": float(np.percentile(node_total, 95))},
        "node_stage_median_ms": {k: float(np.median(v)) for k, v in stages.items()},
        "matches_per_message": matched / max(1, len(arrivals) - cross_path),
        "precision": correct / max(1, matched),
        "machine": f"{os.cpu_count()}-core {platform.machine()}",
    }


def write(result: dict, args: argparse.Namespace) -> None:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    lat, tot = result["latency_ms"], result["node_total_ms"]
    period = 1000.0 / result["rate_hz"]
    sustained = (result["superseded_or_lost"] == 0 and lat["p95"] <= period)
    lines = [
        f"The running node with config/{result['config']}, fed 640x480 frames at "
        f"{result['rate_hz']:g} Hz over DDS (python -m bench.node_rate; {result['machine']}, "
        f"photos {args.photos}, {args.frames} frames each, the first {args.warmup} of each "
        "left out of the latency).", "",
        "| frames published | messages (expected) | superseded or lost | latency median ms | "
        "latency p95 ms | latency max ms | node total_ms median / p95 | matches/message | "
        "precision@3px | sustains the rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['frames_published']} | {result['messages']} ({result['messages_expected']})"
        f" | {result['superseded_or_lost']} | {lat['median']:.0f} | {lat['p95']:.0f} | "
        f"{lat['max']:.0f} | {tot['median']:.0f} / {tot['p95']:.0f} | "
        f"{result['matches_per_message']:.0f} | {result['precision']:.3f} | "
        f"{'yes' if sustained else 'no'} |", "",
        "Latency: arrival of the message - the image's stamp (set when it was published): the "
        "image's transport, the node's queue and work, and the message's transport back. "
        "Node stages (medians, ms): " + ", ".join(
            f"{k[:-3]} {v:.0f}" for k, v in result["node_stage_median_ms"].items()) + ".",
    ]
    (output / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (output / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu_realtime.yaml",
                        help="a file in match_node/config")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=40, help="frames per photograph")
    parser.add_argument("--photos", default="coffee,motorcycle,gravel")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--output", default="bench/results")
    parser.add_argument("--name", default="node_rate")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except RuntimeError as error:
        print(f"[node_rate] error: {error}", file=sys.stderr)
        return 1
    write(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
