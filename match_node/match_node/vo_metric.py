"""Metric visual odometry on top of vo.py: depth from a rectified stereo pair, the scale of a
unit-scale reconstruction, metric pose from stereo points (PnP), and a trajectory of steps.

    from match_node.vo import relative_pose
    from match_node.vo_metric import Odometry, scale_from_depths, stereo_depth
    odometry = Odometry()
    odometry.update(relative_pose(ref_xy, cur_xy, K), scale)       # scale None: unit steps

Conventions are vo.py's: pixel centres at integers, camera x right, y down, z forward, and a
relative motion (R, t) maps reference-camera to current-camera coordinates. No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .vo import MIN_INLIERS, PoseEstimate, failed_estimate, normalize_points


def stereo_depth(left_xy: np.ndarray, right_xy: np.ndarray, fx: float, baseline: float,
                 doffs: float = 0.0, max_row_error: float | None = 1.0) -> np.ndarray:
    """Depths (in the units of `baseline`) of points matched across a rectified stereo pair:
    Z = fx * baseline / (x_left - x_right + doffs). NaN where the disparity is not positive,
    or where the rows differ by more than `max_row_error` pixels (not a rectified match).
    `doffs` is the principal points' x offset cx_right - cx_left (0 for identical cameras)."""
    left_xy = np.asarray(left_xy, np.float64).reshape(-1, 2)
    right_xy = np.asarray(right_xy, np.float64).reshape(-1, 2)
    disparity = left_xy[:, 0] - right_xy[:, 0] + doffs
    ok = disparity > 0
    if max_row_error is not None:
        ok &= np.abs(left_xy[:, 1] - right_xy[:, 1]) <= max_row_error
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, fx * baseline / np.where(ok, disparity, 1.0), np.nan)


def scale_from_depths(points_ref: np.ndarray, depths_ref: np.ndarray) -> float:
    """Metric scale of a unit-scale reconstruction: the median ratio of metric depths (for
    example from `stereo_depth`) to the triangulated depths of the same points (N x 3, in the
    reference camera). Multiply a PoseEstimate's t by it. NaN when no pair is usable
    (non-finite or non-positive depths). The median shrugs off a minority of bad matches."""
    z = np.asarray(points_ref, np.float64).reshape(-1, 3)[:, 2]
    depths = np.asarray(depths_ref, np.float64).reshape(-1)
    usable = np.isfinite(z) & np.isfinite(depths) & (z > 0) & (depths > 0)
    if not usable.any():
        return float("nan")
    return float(np.median(depths[usable] / z[usable]))


@dataclass
class Odometry:
    """Chains relative poses into a trajectory of world-to-camera poses (4 x 4), the world
    being the first camera: X_cam_k = poses[k][:3, :3] @ X_world + poses[k][:3, 3].

    Each step's unit translation is multiplied by its metric scale when one is given (e.g.
    from `scale_from_depths`); otherwise the step counts as one unit, so a monocular
    trajectory has the right shape per step but an arbitrary and, across steps, inconsistent
    scale (the classic monocular scale ambiguity). A failed estimate (ok=False) adds the
    previous pose again (no motion assumed) and counts as lost.
    """
    poses: list[np.ndarray] = field(default_factory=lambda: [np.eye(4)])
    metric: list[bool] = field(default_factory=list)   # per step: was a scale given
    lost: int = 0

    def update(self, estimate: PoseEstimate, scale: float | None = None) -> np.ndarray:
        """Append the pose after `estimate` (previous frame -> this frame); returns it."""
        if not estimate.ok:
            self.lost += 1
            self.metric.append(False)
            self.poses.append(self.poses[-1].copy())
            return self.poses[-1]
        scaled = scale is not None and np.isfinite(scale) and scale > 0
        step = np.eye(4)
        step[:3, :3] = estimate.R
        step[:3, 3] = np.asarray(estimate.t, np.float64) * (scale if scaled else 1.0)
        self.metric.append(bool(scaled))
        self.poses.append(step @ self.poses[-1])
        return self.poses[-1]

    @property
    def positions(self) -> np.ndarray:
        """N x 3 camera centres in the world frame: C = -R^T t."""
        return np.array([-T[:3, :3].T @ T[:3, 3] for T in self.poses])

    @property
    def is_metric(self) -> bool:
        """True when every step so far had a metric scale."""
        return all(self.metric)


def stereo_points(left_xy: np.ndarray, right_xy: np.ndarray, K: np.ndarray,
                  baseline: float, max_row_error: float | None = 1.0) -> np.ndarray:
    """N x 3 points in the left camera frame (units of `baseline`) from matches across a
    rectified pair with intrinsics K (both cameras); NaN rows where the match is not usable."""
    depth = stereo_depth(left_xy, right_xy, K[0, 0], baseline, max_row_error=max_row_error)
    rays = normalize_points(left_xy, K)
    return np.concatenate([rays, np.ones((len(rays), 1))], 1) * depth[:, None]


def pose_from_points(points_ref: np.ndarray, cur_xy: np.ndarray, K: np.ndarray,
                     dist: np.ndarray | None = None, threshold_px: float = 1.0,
                     min_inliers: int = MIN_INLIERS) -> tuple[PoseEstimate, float]:
    """Metric relative pose from 3D points of the reference camera (e.g. from stereo) and
    their pixels in the current image: PnP with RANSAC, refined on the inliers.

    Returns a PoseEstimate with a unit t, like relative_pose, and the metric length of the
    translation (so X_cur = R X_ref + scale * t). Stereo VO's usual step: the scale comes
    from the stereo depth of every inlier, not from a ratio of two noisy reconstructions.
    """
    points_ref = np.asarray(points_ref, np.float64).reshape(-1, 3)
    cur_xy = np.asarray(cur_xy, np.float64).reshape(-1, 2)
    usable = np.isfinite(points_ref).all(1) & (points_ref[:, 2] > 0)
    n = len(points_ref)
    if usable.sum() < min_inliers:
        return failed_estimate(n, f"only {int(usable.sum())} points with depth "
                                  f"(need {min_inliers})"), float("nan")
    index = np.flatnonzero(usable)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points_ref[index], cur_xy[index], K, dist, reprojectionError=threshold_px,
        iterationsCount=1000, confidence=0.9999, flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inliers is None or len(inliers) < min_inliers:
        return failed_estimate(n, "PnP found no consistent pose"), float("nan")
    inliers = inliers.reshape(-1)
    rvec, tvec = cv2.solvePnPRefineLM(points_ref[index[inliers]], cur_xy[index[inliers]], K,
                                      dist, rvec, tvec)
    R, _ = cv2.Rodrigues(rvec)
    t = tvec.reshape(3)
    scale = float(np.linalg.norm(t))
    mask = np.zeros(n, dtype=bool)
    mask[index[inliers]] = True
    if scale < 1e-12:
        return failed_estimate(n, "no translation", R=R, inliers=mask), 0.0
    return PoseEstimate(R=R, t=t / scale, inliers=mask, num_inliers=int(mask.sum()), ok=True,
                        message="ok"), scale
