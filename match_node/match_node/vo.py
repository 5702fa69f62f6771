"""Two-view visual odometry on matched keypoints: relative pose and triangulation.

    from match_node.vo import relative_pose
    estimate = relative_pose(result.keypoints0, result.keypoints1, K)   # MatchResult of a pair
    if estimate.ok:
        R, t = estimate.R, estimate.t        # X_cur = R @ X_ref + s * t, |t| = 1

Conventions: pixel coordinates put integer values at pixel centres (OpenCV's); camera frames
are x right, y down, z forward; a relative motion (R, t) maps reference-camera coordinates to
current-camera coordinates. Monocular translation has no scale: `t` is a unit vector and
triangulated points come in units of the (unknown) baseline, until a metric depth source,
such as a stereo pair, fixes the scale: vo_metric.py (stereo depth, scale, PnP, trajectory).
No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_INLIERS = 8

# USAC_ACCURATE (OpenCV >= 4.5) runs local optimisation and a final least-squares fit;
# plain RANSAC is the fallback for older builds.
_ESSENTIAL_METHOD = getattr(cv2, "USAC_ACCURATE", cv2.RANSAC)


@dataclass
class PoseEstimate:
    """Relative motion from a reference view to a current view: X_cur = R @ X_ref + s * t."""
    R: np.ndarray                 # 3 x 3 rotation
    t: np.ndarray                 # unit 3-vector (translation direction; scale s unknown)
    inliers: np.ndarray           # bool per input correspondence
    num_inliers: int
    ok: bool
    message: str
    votes: tuple[int, ...] = ()   # cheirality votes of the four (R, t) candidates, best first
    parallax_deg: float = 0.0     # median angle between inlier rays after derotation

    @property
    def T(self) -> np.ndarray:
        """4 x 4 reference-to-current transform with the unit translation."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T


def failed_estimate(n: int, message: str, R: np.ndarray | None = None,
                    t: np.ndarray | None = None, inliers: np.ndarray | None = None,
                    **extra) -> PoseEstimate:
    """A refused estimate (ok=False) of `n` correspondences with the reason `message`; R, t
    and the inliers default to identity, zero and none."""
    inliers = np.zeros(n, dtype=bool) if inliers is None else inliers
    return PoseEstimate(R=np.eye(3) if R is None else R, t=np.zeros(3) if t is None else t,
                        inliers=inliers, num_inliers=int(inliers.sum()), ok=False,
                        message=message, **extra)


def normalize_points(xy: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """N x 2 normalised image coordinates (z = 1 plane) of pixels `xy`, undistorted when
    distortion coefficients `dist` (OpenCV's model) are given."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(K, dtype=np.float64)
    if dist is not None and np.any(np.asarray(dist) != 0) and len(xy):
        return cv2.undistortPoints(xy.reshape(-1, 1, 2), K, np.asarray(dist, np.float64)
                                   ).reshape(-1, 2)
    homogeneous = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ np.linalg.inv(K).T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def _midpoint_depths(n_ref: np.ndarray, n_cur: np.ndarray, R: np.ndarray, t: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Depths (z) of each correspondence in the reference and current cameras by the
    midpoint method: the closest points of the two rays. NaN for parallel rays."""
    a = np.concatenate([n_ref, np.ones((len(n_ref), 1))], axis=1) @ R.T  # ref rays, cur frame
    b = np.concatenate([n_cur, np.ones((len(n_cur), 1))], axis=1)
    # Minimise |z_ref a + t - z_cur b|^2: 2 x 2 normal equations per point, by Cramer's rule.
    aa, bb, ab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
    at, bt = a @ t, b @ t
    det = aa * bb - ab * ab
    with np.errstate(divide="ignore", invalid="ignore"):
        good = det > 1e-14 * aa * bb
        det = np.where(good, det, np.nan)
        z_ref = (-at * bb + ab * bt) / det
        z_cur = (aa * bt - ab * at) / det
    # Both rays were built with z = 1 in their own camera (a before rotation), so the
    # multipliers are the depths in each camera.
    return z_ref, z_cur


def _parallax_deg(n_ref: np.ndarray, n_cur: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Angle between each pair of rays once the rotation is removed: the triangulation
    angle, which is what makes a depth (and its sign) measurable."""
    a = np.concatenate([n_ref, np.ones((len(n_ref), 1))], axis=1) @ R.T
    b = np.concatenate([n_cur, np.ones((len(n_cur), 1))], axis=1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def triangulate(ref_xy: np.ndarray, cur_xy: np.ndarray, K: np.ndarray, R: np.ndarray,
                t: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """N x 3 points in the reference camera frame, in the units of `t` (unit scale for a
    PoseEstimate's t): midpoints of the closest approach of each pair of rays. Rows are NaN
    where the rays are parallel (no parallax)."""
    R = np.asarray(R, np.float64)
    t = np.asarray(t, np.float64).reshape(3)
    n_ref = normalize_points(ref_xy, K, dist)
    n_cur = normalize_points(cur_xy, K, dist)
    z_ref, z_cur = _midpoint_depths(n_ref, n_cur, R, t)
    on_ref = np.concatenate([n_ref, np.ones((len(n_ref), 1))], 1) * z_ref[:, None]
    on_cur = np.concatenate([n_cur, np.ones((len(n_cur), 1))], 1) * z_cur[:, None]
    # Bring the current ray's closest point into the reference frame: X_ref = R^T (X_cur - t).
    return 0.5 * (on_ref + (on_cur - t) @ R)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _sampson(n_ref: np.ndarray, n_cur: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Signed Sampson distances (normalised units) of correspondences to E = [t]x R: the
    first-order distance to the epipolar constraint, what the RANSAC threshold measures."""
    E = _skew(t) @ R
    x0 = np.concatenate([n_ref, np.ones((len(n_ref), 1))], axis=1)
    x1 = np.concatenate([n_cur, np.ones((len(n_cur), 1))], axis=1)
    Ex0 = x0 @ E.T
    Etx1 = x1 @ E
    algebraic = (x1 * Ex0).sum(1)
    norm = np.sqrt(Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2)
    return algebraic / np.maximum(norm, 1e-300)


def _refine(n_ref: np.ndarray, n_cur: np.ndarray, R: np.ndarray, t: np.ndarray,
            threshold: float, iterations: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on the 5 degrees of freedom of (R, unit t), minimising Huber-
    weighted Sampson distances. The sample-based estimate leaves the translation direction
    several times less accurate than the data allow (about 1 degree instead of 0.1 degree
    for 2000 points with 0.3 px noise and a 3 cm step at 3 m); this closes the gap."""
    def residuals(R_: np.ndarray, t_: np.ndarray) -> np.ndarray:
        return _sampson(n_ref, n_cur, R_, t_)

    def perturb(delta: np.ndarray, R_: np.ndarray, t_: np.ndarray, basis: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        moved = t_ + basis @ delta[3:]
        return cv2.Rodrigues(delta[:3].reshape(3, 1))[0] @ R_, moved / np.linalg.norm(moved)

    damping = 1e-3
    r = residuals(R, t)
    for _ in range(iterations):
        # Two directions orthogonal to t: the unit translation's tangent plane.
        basis = np.linalg.svd(t.reshape(1, 3))[2][1:].T
        # Huber weights: quadratic within the inlier threshold, linear beyond.
        weights = np.minimum(1.0, threshold / np.maximum(np.abs(r), 1e-300))
        cost = float((weights * r * r).sum())
        step = 1e-7
        J = np.stack([(residuals(*perturb(step * e, R, t, basis)) - r) / step
                      for e in np.eye(5)], axis=1)
        JtW = J.T * weights
        A, g = JtW @ J, JtW @ r
        improved = False
        while damping < 1e8:
            delta = np.linalg.solve(A + damping * np.diag(np.diag(A) + 1e-12), -g)
            R_new, t_new = perturb(delta, R, t, basis)
            r_new = residuals(R_new, t_new)
            if float((weights * r_new * r_new).sum()) < cost:
                R, t, r, improved = R_new, t_new, r_new, True
                damping = max(damping / 10, 1e-9)
                break
            damping *= 10
        if not improved or np.abs(delta).max() < 1e-10:
            break
    return R, t


def _essential_models(n_ref: np.ndarray, n_cur: np.ndarray, threshold: float, prob: float,
                      min_inliers: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(3x3 essential matrix, its inlier mask) of sample consensus runs on normalised
    points, at `threshold` and at half of it, and why there are none if so.

    At VO baselines a small rotation looks like a sideways translation. With OpenCV's default
    1000 iterations USAC_ACCURATE returned a degenerate model (R ~ I, wrong t, 96% inliers) on
    a real pair of bench/pose.py; 10000 found the true one. On another (a 1.2 cm step at 2-5 m,
    ~4 px of flow) even that kept a model 128 degrees off: at 1 px it has 878 inliers, one
    fewer than the true model, and median residuals of 0.14 px against 0.03 px. The run at
    half the threshold finds the true one, and the caller keeps the model with the lowest
    truncated cost."""
    models, failure = [], "essential matrix estimation found no solution"
    for scale in (1.0, 0.5):
        try:
            E, mask = cv2.findEssentialMat(n_ref, n_cur, cameraMatrix=np.eye(3),
                                           method=_ESSENTIAL_METHOD, prob=prob,
                                           threshold=threshold * scale, maxIters=10000)
        except cv2.error as error:
            failure = f"essential matrix estimation failed: {error.err}"
            continue
        if E is None or mask is None or E.shape[0] < 3 or E.shape[0] % 3:
            continue
        epipolar = mask.ravel().astype(bool)
        if epipolar.sum() < min_inliers:
            if scale == 1.0:
                failure = f"only {int(epipolar.sum())} inliers (need {min_inliers})"
            continue
        models += [(E[3 * k:3 * k + 3], epipolar) for k in range(E.shape[0] // 3)]
    return models, failure


def relative_pose(ref_xy: np.ndarray, cur_xy: np.ndarray, K: np.ndarray,
                  dist: np.ndarray | None = None, threshold_px: float = 1.0,
                  prob: float = 0.99999, min_inliers: int = MIN_INLIERS,
                  min_parallax_deg: float | None = None, min_vote_fraction: float = 0.25,
                  ambiguity_ratio: float = 0.5) -> PoseEstimate:
    """Relative pose of the current view with respect to the reference view from matched
    pixels (K x 2 each), camera matrix K and optional distortion coefficients.

    The essential matrix comes from cv2.findEssentialMat (USAC_ACCURATE, else RANSAC) on
    normalised coordinates, with the inlier threshold `threshold_px` converted by the mean
    focal length, and from a second run at half that threshold. Each model's motion is then
    refined on its inliers (Levenberg-Marquardt on Huber-weighted Sampson distances; this
    matters most for the RANSAC fallback), the one with the lowest truncated Sampson cost
    over all correspondences is kept, the inliers are re-selected with it, and its
    essential matrix decomposed here
    (cv2.decomposeEssentialMat). The (R, t) candidate is chosen by cheirality: the one with
    the most inliers triangulated (midpoint method) in front of both cameras, by a margin of
    1% of the baseline.
    cv2.recoverPose does the same vote but has been seen to pick a wrong candidate for very
    small baselines (OpenCV 5); doing it here also lets the vote be checked:

    * only inliers whose rays meet at an angle of at least `min_parallax_deg` vote (default:
      twice the threshold's angle, threshold_px / f): for smaller angles noise alone can put
      a point behind a camera;
    * the translation is refused as unobservable (too small for the depth, e.g. a pure
      rotation, where t is noise) when fewer than `min_vote_fraction` of the inliers (and
      fewer than `min_inliers`) vote for the winner, and the vote is ambiguous when the
      runner-up gets more than `ambiguity_ratio` times the winner's votes. With 0.3 px noise
      and 1000 points at 2-5 m depth, 5 mm steps are mostly refused; 1 cm steps pass with
      directions 1-4 degrees off, 2 cm steps 0.3-2 degrees off.

    Refused with ok=False and a message, never an exception, for fewer than `min_inliers`
    correspondences or inliers, degenerate points (all in one spot), too little parallax
    or an ambiguous vote
    (ValueError only for arrays of different lengths: a caller's bug). `inliers` excludes
    points that voted against the chosen candidate (confidently behind a camera).
    On those two R and t are still the winning candidate's, for callers that want the
    rotation of a (nearly) pure rotation, but t is then meaningless.
    """
    ref_xy = np.asarray(ref_xy, dtype=np.float64).reshape(-1, 2)
    cur_xy = np.asarray(cur_xy, dtype=np.float64).reshape(-1, 2)
    if len(ref_xy) != len(cur_xy):
        raise ValueError(f"{len(ref_xy)} reference points but {len(cur_xy)} current points")
    K = np.asarray(K, dtype=np.float64)
    n = len(ref_xy)
    finite = np.isfinite(ref_xy).all(1) & np.isfinite(cur_xy).all(1)
    if finite.sum() < min_inliers:
        return failed_estimate(
            n, f"need at least {min_inliers} correspondences, got {int(finite.sum())}")
    index = np.flatnonzero(finite)
    n_ref = normalize_points(ref_xy[index], K, dist)
    n_cur = normalize_points(cur_xy[index], K, dist)
    focal = 0.5 * (K[0, 0] + K[1, 1])
    threshold = threshold_px / focal
    # Points bunched within one threshold in either image carry no geometry (and make the
    # solvers divide by zero).
    if min(np.ptp(n_ref, axis=0).max(), np.ptp(n_cur, axis=0).max()) < threshold:
        return failed_estimate(n, "degenerate correspondences: the points do not spread out")
    if min_parallax_deg is None:
        min_parallax_deg = 2.0 * np.degrees(threshold)

    models, failure = _essential_models(n_ref, n_cur, threshold, prob, min_inliers)
    if not models:
        return failed_estimate(n, failure)

    # Every model (both thresholds' runs, and the stacked solutions a minimal sample can
    # leave) is refined on its own inliers, and the one with the lowest truncated Sampson
    # cost over all correspondences is kept: the sample consensus counts inliers at one
    # threshold, which does not separate a true model with ~0.03 px residuals from a
    # degenerate one with ~0.14 px (see _essential_models).
    best = None
    for E, epipolar in models:
        R1, _, t_unit = cv2.decomposeEssentialMat(E)
        # The Sampson distance does not depend on which of the four candidates is used.
        R_fit, t_fit = _refine(n_ref[epipolar], n_cur[epipolar], R1,
                               t_unit.ravel() / np.linalg.norm(t_unit), threshold)
        residuals = np.abs(_sampson(n_ref, n_cur, R_fit, t_fit))
        fits = residuals <= threshold
        if fits.sum() < min_inliers:
            continue
        cost = float((np.minimum(residuals, threshold) ** 2).sum())
        if best is None or cost < best[0]:
            best = (cost, R_fit, t_fit, fits)
    if best is None:
        return failed_estimate(n, f"fewer than {min_inliers} inliers after refinement")
    _, R_fit, t_fit, fits = best
    R1, R2, t_unit = cv2.decomposeEssentialMat(_skew(t_fit) @ R_fit)
    t_unit = t_unit.ravel() / np.linalg.norm(t_unit)
    votes = []
    for R, t in ((R1, t_unit), (R1, -t_unit), (R2, t_unit), (R2, -t_unit)):
        z_ref, z_cur = _midpoint_depths(n_ref[fits], n_cur[fits], R, t)
        parallax = _parallax_deg(n_ref[fits], n_cur[fits], R)
        confident = parallax >= min_parallax_deg
        # Depths are in baselines (|t| = 1): a point in front sits clearly ahead of both
        # centres, not on them.
        front = confident & (z_ref > 1e-2) & (z_cur > 1e-2)
        behind = confident & ~front
        votes.append((int(front.sum()), R, t, behind, parallax))
    # Ties (no votes at all under pure rotation) go to the rotation that explains the rays
    # best: the twisted pair turns them by ~180 degrees about t.
    votes.sort(key=lambda v: (-v[0], float(np.median(v[4]))))
    count, R, t, behind, parallax = votes[0]
    runner_up = votes[1][0]
    inliers = np.zeros(n, dtype=bool)
    inliers[index[np.flatnonzero(fits)[~behind]]] = True
    extra = dict(votes=tuple(v[0] for v in votes),
                 parallax_deg=float(np.median(parallax[~behind])) if (~behind).any() else 0.0)
    needed = max(min_inliers, int(np.ceil(min_vote_fraction * fits.sum())))
    if count < needed:
        return failed_estimate(n, f"too little parallax: {count} of {int(fits.sum())} inliers "
                               f"triangulate in front of both cameras (need {needed}); "
                               "translation too small for the depth (pure rotation?)",
                               R=R, t=t, inliers=inliers, **extra)
    if runner_up > ambiguity_ratio * count:
        return failed_estimate(n, f"ambiguous cheirality (votes {extra['votes']})", R=R, t=t,
                               inliers=inliers, **extra)
    if inliers.sum() < min_inliers:
        return failed_estimate(n, f"only {int(inliers.sum())} inliers in front of both "
                               f"cameras (need {min_inliers})", R=R, t=t, inliers=inliers,
                               **extra)
    return PoseEstimate(R=R, t=t, inliers=inliers, num_inliers=int(inliers.sum()), ok=True,
                        message="ok", **extra)


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees."""
    cos = (np.trace(np.asarray(R, np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def pose_errors(R_est: np.ndarray, t_est: np.ndarray, R_true: np.ndarray,
                t_true: np.ndarray) -> tuple[float, float]:
    """(rotation error, translation direction error) in degrees: the angle of
    R_est R_true^T, and the angle between t_est and t_true (NaN if either is zero). The
    direction's sign counts: a reversed translation is 180 degrees off."""
    rotation_error = rotation_angle_deg(np.asarray(R_est) @ np.asarray(R_true).T)
    a = np.asarray(t_est, np.float64).reshape(3)
    b = np.asarray(t_true, np.float64).reshape(3)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms < 1e-12:
        return rotation_error, float("nan")
    cos = float(a @ b) / norms
    return rotation_error, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
