"""Small ROS 2 bags of real images with ground truth, for tests, demos and the offline runner.

    python -m match_node.bags.make OUT --kind mono|stereo|mono3d [--frames N] [--storage sqlite3|mcap]
                                  [--size 320x240] [--photo coffee] [--rate 10] [--compressed png|jpeg]
                                  [--step PX] [--step-m M] [--log-delay-ms MS] [--seed N]

No ROS needed (rosbags writes the bag). Topics written:

  mono    /camera/image_raw           sensor_msgs/Image (rgb8), frame_id camera_optical
          /camera/camera_info         sensor_msgs/CameraInfo, with every image
  stereo  /stereo/left/image_raw      sensor_msgs/Image (rgb8), frame_id stereo_left_optical
          /stereo/left/camera_info
          /stereo/right/image_raw     frame_id stereo_right_optical
          /stereo/right/camera_info   P[0,3] = -fx * baseline (the ROS stereo convention)
  ground truth (when the scene has it):
          /ground_truth/pose          geometry_msgs/PoseStamped: camera-to-world pose of the
                                      (left) camera's optical frame (x right, y down, z forward)
                                      in frame_id "world", stamped like the image; i.e. the
                                      position of the camera centre in the world and the
                                      rotation taking camera axes to world axes
          /ground_truth/homography    std_msgs/Float64MultiArray, 3x3 row-major (layout dims
                                      "rows" 3 / "cols" 3): the homography from the source
                                      photograph to this frame (planar scenes). The
                                      correspondence from frame a to frame b is H_b @ inv(H_a).
                                      Float64MultiArray has no header: it is recorded at the
                                      same log time as its image, which is how readers pair them

`--kind mono` is a planar scene (match_node.groundtruth.planar.make_sequence: a camera moving over a real
photograph with exact homographies). Its CameraInfo is nominal (fx = fy = width, principal point
at the centre): a homography sequence has no metric camera. `--kind stereo` (and `mono3d`, its
left camera alone on the mono topics) renders the 3D scene of match_node.groundtruth.scene (a real
Middlebury stereo photograph with measured depth) along a 6-DoF path, with its true K, poses
and baseline; `render_scene` is the one adapter to that renderer.

Motion per frame: `--step` pixels for mono (default 6), `--step-m` metres for stereo and mono3d
(default 0.06: the project's VO test uses 6 cm; the renderer's own 2-3 cm leave too little
parallax at 320x240 for a reliable monocular direction).

Each image is stamped at `start + i / rate` and recorded (log time) `--log-delay-ms` later
(default 5 ms), as if received over a network; camera infos and ground truth share their
image's log time.

From Python, `write_sequence_bag` takes any frames (a renderer's, a camera's) and writes the
same layout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import msgtypes, rosbag as bags

MONO_IMAGE = "/camera/image_raw"
MONO_INFO = "/camera/camera_info"
LEFT_IMAGE = "/stereo/left/image_raw"
LEFT_INFO = "/stereo/left/camera_info"
RIGHT_IMAGE = "/stereo/right/image_raw"
RIGHT_INFO = "/stereo/right/camera_info"
GROUND_TRUTH_POSE = "/ground_truth/pose"
GROUND_TRUTH_HOMOGRAPHY = "/ground_truth/homography"
WORLD_FRAME = "world"

START_NS = 1_700_000_000 * 1_000_000_000


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a 3x3 rotation matrix."""
    R = np.asarray(R, np.float64)
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = np.array([(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s,
                      (R[1, 0] - R[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        q[3] = (R[k, j] - R[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def quaternion_to_rotation(q: Sequence[float]) -> np.ndarray:
    """3x3 rotation of a quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_fields(world_to_camera: np.ndarray, stamp_ns: int) -> dict:
    """PoseStamped fields (camera-to-world, frame "world") of a 4x4 world-to-camera pose."""
    T = np.linalg.inv(np.asarray(world_to_camera, np.float64).reshape(4, 4))
    x, y, z = T[:3, 3]
    qx, qy, qz, qw = rotation_to_quaternion(T[:3, :3])
    return {"header": msgtypes.header_fields(stamp_ns, WORLD_FRAME),
            "pose": {"position": {"x": x, "y": y, "z": z},
                     "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}}


def pose_from_message(msg: Any) -> np.ndarray:
    """4x4 world-to-camera pose of a PoseStamped written by pose_fields (its inverse)."""
    o, p = msg.pose.orientation, msg.pose.position
    T = np.eye(4)
    T[:3, :3] = quaternion_to_rotation([o.x, o.y, o.z, o.w])
    T[:3, 3] = [p.x, p.y, p.z]
    return np.linalg.inv(T)


def homography_fields(H: np.ndarray) -> dict:
    return {"layout": {"dim": [{"label": "rows", "size": 3, "stride": 9},
                               {"label": "cols", "size": 3, "stride": 3}],
                       "data_offset": 0},
            "data": np.asarray(H, np.float64).reshape(-1)}


def nominal_K(width: int, height: int) -> np.ndarray:
    """fx = fy = width (about 53 degrees horizontal field of view), centred principal point
    (pixel centres at integers, as the Correspondences coordinates)."""
    return np.array([[width, 0, (width - 1) / 2], [0, width, (height - 1) / 2], [0, 0, 1]], float)


def write_sequence_bag(path: str | Path, frames: Sequence[np.ndarray], stamps_ns: Sequence[int],
                       K: np.ndarray, poses: Sequence[np.ndarray] | None = None,
                       right_frames: Sequence[np.ndarray] | None = None,
                       baseline: float | None = None,
                       homographies: Sequence[np.ndarray] | None = None,
                       storage: str = "sqlite3", *, compressed: str | None = None,
                       log_delay_ns: int = 5_000_000, frame_id: str | None = None) -> Path:
    """Write a mono (or, with `right_frames` and `baseline`, stereo) sequence as a bag.

    frames / right_frames: RGB uint8 HxWx3 (or gray HxW) images; stamps_ns: increasing
    header stamps; K: 3x3 intrinsics (both cameras of a rectified pair); poses: 4x4
    world-to-camera (of the left camera), written camera-to-world on /ground_truth/pose;
    homographies: 3x3 source-to-frame, written on /ground_truth/homography. `compressed`
    ("png" or "jpeg") writes CompressedImage on `<image topic>/compressed` instead of Image.
    Returns the bag path. See the module docstring for topics and conventions.
    """
    n = len(frames)
    stamps = [int(s) for s in stamps_ns]
    if n == 0 or len(stamps) != n:
        raise ValueError(f"need one stamp per frame, got {len(stamps)} stamps for {n} frames")
    if any(b <= a for a, b in zip(stamps, stamps[1:])):
        raise ValueError("stamps must increase strictly")
    stereo = right_frames is not None
    if stereo and (len(right_frames) != n or baseline is None or baseline <= 0):
        raise ValueError("stereo needs as many right frames as left frames and a baseline > 0")
    for name, items in (("poses", poses), ("homographies", homographies)):
        if items is not None and len(items) != n:
            raise ValueError(f"need one of {name} per frame, got {len(items)} for {n} frames")
    K = np.asarray(K, np.float64).reshape(3, 3)
    height, width = frames[0].shape[:2]
    for frame in list(frames) + list(right_frames or []):
        # One image size for the whole bag, and images, not rows of one.
        if frame.shape != frames[0].shape or frame.ndim not in (2, 3) or min(height, width) < 8:
            raise ValueError(f"frames must be images of one size (at least 8x8); got "
                             f"{frame.shape} and {frames[0].shape}")
    ts = msgtypes.typestore()

    if stereo:
        cameras = [(LEFT_IMAGE, LEFT_INFO, frame_id or "stereo_left_optical", frames, 0.0),
                   (RIGHT_IMAGE, RIGHT_INFO, "stereo_right_optical", right_frames,
                    -K[0, 0] * float(baseline))]
    else:
        cameras = [(MONO_IMAGE, MONO_INFO, frame_id or "camera_optical", frames, 0.0)]
    image_type = msgtypes.COMPRESSED_IMAGE if compressed else msgtypes.IMAGE
    suffix = "/compressed" if compressed else ""

    with bags.BagWriter(path, storage=storage, ts=ts) as bag:
        for image_topic, info_topic, _, _, _ in cameras:
            bag.add_topic(image_topic + suffix, image_type)
            bag.add_topic(info_topic, msgtypes.CAMERA_INFO)
        if poses is not None:
            bag.add_topic(GROUND_TRUTH_POSE, msgtypes.POSE_STAMPED)
        if homographies is not None:
            bag.add_topic(GROUND_TRUTH_HOMOGRAPHY, msgtypes.FLOAT64_MULTI_ARRAY)
        for i, stamp in enumerate(stamps):
            log_time = stamp + int(log_delay_ns)
            for image_topic, info_topic, fid, images, tx in cameras:
                image = images[i]
                if image.shape[:2] != (height, width):
                    raise ValueError(f"frame {i} is {image.shape[1]}x{image.shape[0]}, "
                                     f"expected {width}x{height}")
                if compressed:
                    msg = msgtypes.compressed_image_message(ts, image, stamp, fid, compressed)
                else:
                    msg = msgtypes.image_message(ts, image, stamp, fid,
                                             "rgb8" if image.ndim == 3 else "mono8")
                bag.write(image_topic + suffix, log_time, msg)
                P = np.hstack([K, [[tx], [0.0], [0.0]]])
                bag.write(info_topic, log_time,
                          msgtypes.camera_info_message(ts, K, width, height, stamp, fid, P))
            if poses is not None:
                bag.write_fields(GROUND_TRUTH_POSE, log_time, pose_fields(poses[i], stamp))
            if homographies is not None:
                bag.write_fields(GROUND_TRUTH_HOMOGRAPHY, log_time,
                                 homography_fields(homographies[i]))
    return Path(path)


def stamps(num_frames: int, rate_hz: float, start_ns: int = START_NS) -> list[int]:
    period = int(round(1e9 / rate_hz))
    return [start_ns + i * period for i in range(num_frames)]


def mono_bag(path: str | Path, num_frames: int = 10, size: tuple[int, int] = (320, 240),
             photo: str = "coffee", step: float = 6.0, rate_hz: float = 10.0,
             storage: str = "sqlite3", seed: int = 0, compressed: str | None = None,
             log_delay_ns: int = 5_000_000) -> Path:
    """A planar real-image sequence (sequence.make_sequence) with its homographies."""
    from ..groundtruth.planar import make_sequence

    sequence = make_sequence(photo, num_frames=num_frames, size=size, step=step, seed=seed)
    return write_sequence_bag(path, sequence.frames, stamps(num_frames, rate_hz),
                              nominal_K(*size), homographies=sequence.homographies,
                              storage=storage, compressed=compressed,
                              log_delay_ns=log_delay_ns)


DEFAULT_STEP_M = 0.06


def render_scene(kind: str, num_frames: int, size: tuple[int, int], seed: int,
                 step_m: float = DEFAULT_STEP_M) -> dict:
    """Frames of the 3D renderer (match_node.groundtruth.scene) as write_sequence_bag's keyword arguments:
    frames, K, poses (world-to-camera) and, for stereo, right_frames and baseline.

    This is the one place that knows the renderer's API (load_motorcycle, trajectory,
    scale_intrinsics, render, stereo_pair); adapt it here when that changes.
    """
    try:
        from ..groundtruth import scene as renderer
        world = renderer.load_motorcycle()
        poses = renderer.trajectory(num_frames, seed=seed, step_m=step_m)
        K = renderer.scale_intrinsics(world.K, world.size, size)
        if kind == "stereo":
            baseline = float(world.baseline_m)
            pairs = [renderer.stereo_pair(world, T, baseline, size) for T in poses]
            return {"frames": [left for left, _ in pairs], "K": K, "poses": poses,
                    "right_frames": [right for _, right in pairs], "baseline": baseline}
        return {"frames": [renderer.render(world, T, size)[0] for T in poses], "K": K,
                "poses": poses}
    except (ImportError, AttributeError, TypeError) as error:
        raise SystemExit(f"error: --kind {kind} needs the 3D renderer match_node.groundtruth.scene with "
                         f"the API make_bag.render_scene expects ({type(error).__name__}: "
                         f"{error})") from None


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError("size must be at least 32x32")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m match_node.bags.make",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("out", help="bag directory to create (must not exist)")
    parser.add_argument("--kind", choices=("mono", "stereo", "mono3d"), default="mono",
                        help="mono: planar scene with homographies; stereo: 3D scene "
                             "(match_node.groundtruth.scene) with poses; mono3d: its left camera alone")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--storage", choices=bags.STORAGES, default="sqlite3")
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT")
    parser.add_argument("--photo", default="coffee", help="scikit-image photograph (mono)")
    parser.add_argument("--step", type=float, default=6.0, help="motion per frame in pixels (mono)")
    parser.add_argument("--step-m", type=float, default=DEFAULT_STEP_M, metavar="M",
                        help="camera motion per frame in metres (stereo, mono3d; default "
                             f"{DEFAULT_STEP_M:g})")
    parser.add_argument("--log-delay-ms", type=float, default=5.0, metavar="MS",
                        help="log (receive) time after each image's stamp (default 5)")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compressed", choices=("png", "jpeg"),
                        help="write CompressedImage on <topic>/compressed instead of Image")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.rate <= 0:
        print("error: --frames must be >= 1 and --rate > 0", file=sys.stderr)
        return 2
    if args.step <= 0 or args.step_m <= 0 or args.log_delay_ms < 0:
        print("error: --step and --step-m must be > 0, --log-delay-ms >= 0", file=sys.stderr)
        return 2
    log_delay_ns = int(round(args.log_delay_ms * 1e6))
    if Path(args.out).exists():
        print(f"error: {args.out} exists already", file=sys.stderr)
        return 2
    if args.kind == "mono":
        path = mono_bag(args.out, args.frames, args.size, args.photo, args.step, args.rate,
                        args.storage, args.seed, args.compressed, log_delay_ns=log_delay_ns)
    else:
        scene = render_scene("stereo" if args.kind == "stereo" else "mono", args.frames,
                             args.size, args.seed, args.step_m)
        path = write_sequence_bag(args.out, stamps_ns=stamps(args.frames, args.rate),
                                  storage=args.storage, compressed=args.compressed,
                                  log_delay_ns=log_delay_ns, **scene)
    for topic, info in sorted(bags.topics(path).items()):
        print(f"{topic:32s} {info.count:4d}  {info.msgtype}")
    print(f"wrote {path} ({args.storage})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
