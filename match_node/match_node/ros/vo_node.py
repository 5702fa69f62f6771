"""Example VO consumer: Correspondences + CameraInfo in, camera poses and a trajectory out.

It proves the message carries what visual odometry needs: pixel coordinates in the original
image (so CameraInfo's K and D apply directly), stamps of both frames, and keypoint indices
that join temporal and stereo matches of the same left image for metric scale.

    ros2 run match_node vo_example --ros-args -r correspondences:=/cam/correspondences \
        -r camera_info:=/cam/camera_info

Subscribes   correspondences          sequential or temporal matches (previous -> current)
             correspondences/stereo   optional: left -> right of the same stamp, for scale
             camera_info              of the (left) camera; the right one for the baseline
             right/camera_info
Publishes    vo/pose (geometry_msgs/PoseStamped), vo/odometry (nav_msgs/Odometry),
             vo/path (nav_msgs/Path): the camera pose in `world_frame`, the first camera's
             frame (camera-to-world, optical axes: z forward). Without stereo each step has
             unit length (monocular scale ambiguity); with stereo it is metric.
"""
from __future__ import annotations

import signal
import sys
from collections import OrderedDict, deque
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import Pose, PoseStamped
from match_node_msgs.msg import Correspondences
from nav_msgs.msg import Odometry as OdometryMsg
from nav_msgs.msg import Path
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo

from .. import vo, vo_metric
# messages, not conversions: conversions brings the pipeline and torch, which a consumer
# never needs (it would start in seconds instead of a fraction of one).
from ..messages import msg_arrays, time_to_ns


def stamp_to_ns(stamp: Any) -> int:
    return time_to_ns(stamp.sec, stamp.nanosec)


def camera_matrix(info: CameraInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """K and the distortion coefficients (None when all zero) of a CameraInfo."""
    K = np.asarray(info.k, np.float64).reshape(3, 3)
    dist = np.asarray(info.d, np.float64)
    return K, (dist if dist.size and np.any(dist) else None)


def stereo_baseline(right_info: CameraInfo) -> float | None:
    """Baseline in metres of a rectified pair: ROS puts P_right[0, 3] = -fx * baseline."""
    p = np.asarray(right_info.p, np.float64)
    return float(-p[3] / p[0]) if p.size == 12 and p[0] and p[3] else None


def estimate_motion(temporal: Correspondences, info: CameraInfo,
                    stereo: Correspondences | None = None, baseline: float | None = None,
                    threshold_px: float = 1.0) -> tuple[vo.PoseEstimate, float | None]:
    """Relative motion (reference -> current frame) from one Correspondences message, and its
    metric length when the stereo message of the *reference* frame and the baseline are given.

    Monocular: the essential matrix (scale unknown). Stereo: the reference keypoints' stereo
    depths make them 3D points, and PnP on their current pixels gives the metric motion. The
    stereo and temporal matches of the reference left image share its keypoint indices
    (`reference_index`), which is how the two messages are joined.
    """
    arrays = msg_arrays(temporal)
    K, dist = camera_matrix(info)
    if stereo is not None and baseline:
        stereo_arrays = msg_arrays(stereo)
        points = vo_metric.stereo_points(stereo_arrays["reference_xy"],
                                         stereo_arrays["current_xy"], K, baseline)
        point_of = dict(zip(stereo_arrays["reference_index"].tolist(), points))
        no_point = np.full(3, np.nan)
        points_ref = np.array([point_of.get(int(i), no_point)
                               for i in arrays["reference_index"]]).reshape(-1, 3)
        estimate, scale = vo_metric.pose_from_points(points_ref, arrays["current_xy"], K,
                                                     dist, threshold_px)
        if estimate.ok:
            return estimate, scale
    estimate = vo.relative_pose(arrays["reference_xy"], arrays["current_xy"], K, dist,
                                threshold_px=threshold_px)
    return estimate, None


def _pose_msg(camera_to_world: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = map(float, camera_to_world[:3, 3])
    R = camera_to_world[:3, :3]
    # Rotation matrix to quaternion (Shepperd's method, stable for any angle).
    trace = np.trace(R)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
        w = (R[k, j] - R[j, k]) / s
        x, y, z = q
    pose.orientation.w, pose.orientation.x = float(w), float(x)
    pose.orientation.y, pose.orientation.z = float(y), float(z)
    return pose


class VoExample(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("vo_example", **kwargs)
        self.world_frame = self.declare_parameter("world_frame", "odom").value
        self.threshold_px = self.declare_parameter("ransac_threshold_px", 1.0).value
        self.odometry = vo_metric.Odometry()
        self.info: CameraInfo | None = None
        self.right_info: CameraInfo | None = None
        self.stereo: OrderedDict[int, Correspondences] = OrderedDict()  # by left stamp
        self.estimates: list[tuple[int, vo.PoseEstimate, float | None]] = []
        # Correspondences that arrive before the first CameraInfo wait for it (a bag replay or
        # a launch can start publishing before this node's camera_info subscription matches).
        self.waiting: deque[Correspondences] = deque(maxlen=100)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Correspondences, "correspondences", self._on_temporal, reliable)
        self.create_subscription(Correspondences, "correspondences/stereo", self._on_stereo,
                                 reliable)
        # Best effort connects to reliable and best-effort camera drivers alike.
        self.create_subscription(CameraInfo, "camera_info", self._on_info, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, "right/camera_info", self._on_right_info,
                                 qos_profile_sensor_data)
        self.pose_publisher = self.create_publisher(PoseStamped, "vo/pose", 10)
        self.odometry_publisher = self.create_publisher(OdometryMsg, "vo/odometry", 10)
        self.path_publisher = self.create_publisher(Path, "vo/path", 10)
        self.path = Path()
        self.path.header.frame_id = self.world_frame

    def _on_info(self, msg: CameraInfo) -> None:
        first = self.info is None
        self.info = msg
        if first:
            while self.waiting:
                self._on_temporal(self.waiting.popleft())

    def _on_right_info(self, msg: CameraInfo) -> None:
        self.right_info = msg

    def _on_stereo(self, msg: Correspondences) -> None:
        self.stereo[stamp_to_ns(msg.reference_stamp)] = msg
        while len(self.stereo) > 30:
            self.stereo.popitem(last=False)

    def _on_temporal(self, msg: Correspondences) -> None:
        if self.info is None:
            self.get_logger().warning("no camera_info yet: correspondences wait for it",
                                      throttle_duration_sec=5.0)
            self.waiting.append(msg)
            return
        if msg.tracks_reset and len(self.odometry.poses) > 1:
            self.get_logger().info("tracking restarted upstream; the trajectory continues")
        stereo = self.stereo.get(stamp_to_ns(msg.reference_stamp))
        baseline = stereo_baseline(self.right_info) if self.right_info else None
        estimate, scale = estimate_motion(msg, self.info, stereo, baseline, self.threshold_px)
        if not estimate.ok:
            self.get_logger().warning(f"no pose for this frame: {estimate.message}",
                                      throttle_duration_sec=2.0)
        world_to_camera = self.odometry.update(estimate, scale)
        self.estimates.append((stamp_to_ns(msg.header.stamp), estimate, scale))
        camera_to_world = np.linalg.inv(world_to_camera)

        stamped = PoseStamped()
        stamped.header.stamp = msg.header.stamp
        stamped.header.frame_id = self.world_frame
        stamped.pose = _pose_msg(camera_to_world)
        self.pose_publisher.publish(stamped)
        odometry = OdometryMsg()
        odometry.header = stamped.header
        odometry.child_frame_id = msg.header.frame_id
        odometry.pose.pose = stamped.pose
        self.odometry_publisher.publish(odometry)
        self.path.header.stamp = msg.header.stamp
        self.path.poses.append(stamped)
        self.path_publisher.publish(self.path)


class _StopFlag:
    """Ctrl-C and SIGTERM set a flag that the spin loop polls; no exception is raised into
    whatever runs (an interrupted callback or clean-up prints a traceback), and a second
    signal changes nothing."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def main(args: list[str] | None = None) -> int:
    """The program (args None: the command line; the process ends after it) or an
    in-process call with `args`."""
    stop = _StopFlag()
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(args, stop)
    finally:
        # Ending the process: keep ignoring Ctrl-C while the interpreter finalises (it resets
        # Python-level handlers to the default, and a second Ctrl-C would then kill the
        # process, exit -2, after a clean end). In process: the previous handlers again.
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if args is None and signum == signal.SIGINT
                          else handler)


def _run(args: list[str] | None, stop: _StopFlag) -> int:
    # rclpy's own handlers would shut the context down under a running callback.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = None
    try:
        if stop.requested:
            return 0
        node = VoExample()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # the flag is seen within 0.1 s
    except ExternalShutdownException:
        pass
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
