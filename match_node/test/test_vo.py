"""Visual odometry on the Motorcycle scene: exact correspondences, then real matches of
rendered frames, metric scale from a virtual stereo pair, and degenerate inputs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from match_node import Pipeline
from match_node.groundtruth.scene import (load_motorcycle, project, relative_motion, render,
                              render_depth, stereo_pair, trajectory)
from match_node.vo import PoseEstimate, pose_errors, relative_pose, triangulate
from match_node.vo_metric import Odometry, scale_from_depths, stereo_depth

REF, CUR = 0, 3          # trajectory frames of the two-view tests: 6.7 cm, 1.7 degrees apart
STEREO_BASELINE = 0.1    # metres


@pytest.fixture(scope="module")
def scene():
    return load_motorcycle()


@pytest.fixture(scope="module")
def poses():
    return trajectory(CUR + 1)


def synthetic_views(scene, T_a, T_b, count, noise_px, seed, dist=None):
    """Real 3D points of the scene projected into two poses, with Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    points = scene.points()
    points = points[rng.choice(len(points), count, replace=False)]
    w, h = scene.size

    def view(T):
        cam = points @ T[:3, :3].T + T[:3, 3]
        if dist is None:
            return project(scene.K, cam)
        return cv2.projectPoints(cam, np.zeros(3), np.zeros(3), scene.K, dist)[0].reshape(-1, 2)

    xy_a, xy_b = view(T_a), view(T_b)
    inside = ((xy_a >= 0) & (xy_a <= [w - 1, h - 1])).all(1) & \
             ((xy_b >= 0) & (xy_b <= [w - 1, h - 1])).all(1)
    xy_a = xy_a[inside] + rng.normal(0, noise_px, (inside.sum(), 2))
    xy_b = xy_b[inside] + rng.normal(0, noise_px, (inside.sum(), 2))
    return xy_a, xy_b, points[inside] @ T_a[:3, :3].T + T_a[:3, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_correspondences_give_the_true_motion(scene, poses, seed):
    # Measured over twelve noise seeds: rotation <= 0.04 degree; translation direction
    # 0.23 degree median, 0.83 at worst (seed 0: 0.81). That is the data's limit, not the
    # solver's: the estimate's Sampson cost is already below the true motion's.
    xy_a, xy_b, _ = synthetic_views(scene, poses[REF], poses[CUR], 3000, 0.3, seed)
    estimate = relative_pose(xy_a, xy_b, scene.K)
    assert estimate.ok, estimate.message
    R, t = relative_motion(poses[REF], poses[CUR])
    rotation_error, direction_error = pose_errors(estimate.R, estimate.t, R, t)
    assert rotation_error < 0.1 and direction_error < 1.0
    assert estimate.inliers.mean() > 0.98
    assert np.linalg.norm(estimate.t) == pytest.approx(1.0)
    assert np.allclose(estimate.R @ estimate.R.T, np.eye(3), atol=1e-9)
    # The vote is clear-cut: the other three candidates get (almost) nothing.
    assert estimate.votes[1] < 0.05 * estimate.votes[0]


def test_distorted_points_are_undistorted(scene, poses):
    dist = np.array([-0.12, 0.05, 0.001, -0.0005, 0.0])
    xy_a, xy_b, _ = synthetic_views(scene, poses[REF], poses[CUR], 3000, 0.3, 0, dist=dist)
    R, t = relative_motion(poses[REF], poses[CUR])
    estimate = relative_pose(xy_a, xy_b, scene.K, dist=dist)
    assert estimate.ok
    rotation_error, direction_error = pose_errors(estimate.R, estimate.t, R, t)
    assert rotation_error < 0.1 and direction_error < 1.0
    # Ignoring the distortion is clearly worse.
    ignored = relative_pose(xy_a, xy_b, scene.K)
    assert pose_errors(ignored.R, ignored.t, R, t)[1] > 2 * direction_error


def test_triangulation_and_metric_scale(scene, poses):
    xy_a, xy_b, points_a = synthetic_views(scene, poses[REF], poses[CUR], 500, 0.0, 0)
    R, t = relative_motion(poses[REF], poses[CUR])
    estimate = relative_pose(xy_a, xy_b, scene.K)
    unit_points = triangulate(xy_a, xy_b, scene.K, estimate.R, estimate.t)
    scale = scale_from_depths(unit_points, points_a[:, 2])
    assert scale == pytest.approx(np.linalg.norm(t), rel=1e-3)
    assert np.allclose(unit_points * scale, points_a, atol=1e-3)
    # A minority of wrong depths does not move the median.
    wrong = points_a[:, 2].copy()
    wrong[::5] *= 3
    assert scale_from_depths(unit_points, wrong) == pytest.approx(scale, rel=0.02)
    assert np.isnan(scale_from_depths(unit_points[:0], wrong[:0]))


def test_pure_rotation_is_refused_but_keeps_the_rotation(scene):
    xy_a, _, points = synthetic_views(scene, np.eye(4), np.eye(4), 2000, 0.0, 0)
    R = cv2.Rodrigues(np.array([0.01, -0.015, 0.005]))[0]
    rng = np.random.default_rng(0)
    xy_b = project(scene.K, points @ R.T) + rng.normal(0, 0.3, xy_a.shape)
    estimate = relative_pose(xy_a + rng.normal(0, 0.3, xy_a.shape), xy_b, scene.K)
    assert not estimate.ok and "parallax" in estimate.message
    assert pose_errors(estimate.R, estimate.t, R, np.ones(3))[0] < 0.1


def test_small_translations_are_refused_or_roughly_right(scene):
    """A rotation plus a small step at 2-5 m depth, 0.3 px noise, four noise draws each.
    Measured: 5 mm is refused 3 times of 4 (the fourth 6.7 degrees off; without the vote
    fraction check one draw came back 71 degrees off); 1 cm is accepted 1-4 degrees off,
    2 cm 0.3-2.2 degrees off."""
    _, _, points = synthetic_views(scene, np.eye(4), np.eye(4), 1000, 0.0, 0)
    R = cv2.Rodrigues(np.array([0.005, -0.01, 0.003]))[0]
    direction = np.array([1.0, 0.3, 0.2]) / np.linalg.norm([1.0, 0.3, 0.2])
    for step_m in (0.005, 0.02):
        outcomes = []
        for seed in range(4):
            rng = np.random.default_rng(seed)
            xy_a = project(scene.K, points) + rng.normal(0, 0.3, (len(points), 2))
            xy_b = project(scene.K, points @ R.T + step_m * direction) + \
                rng.normal(0, 0.3, (len(points), 2))
            estimate = relative_pose(xy_a, xy_b, scene.K)
            error = pose_errors(estimate.R, estimate.t, R, direction)[1]
            outcomes.append((estimate.ok, error))
            if estimate.ok:
                assert error < (10.0 if step_m < 0.01 else 3.0)
            else:
                assert "parallax" in estimate.message or "ambiguous" in estimate.message
        if step_m < 0.01:
            assert not all(ok for ok, _ in outcomes)
        else:
            assert all(ok for ok, _ in outcomes)


def test_a_small_step_whose_consensus_model_is_degenerate():
    """Real matches of a 1.2 cm step at 2-5 m (pair 18 of bench/pose.py: ALIKED + LightGlue
    with patch refinement, 886 matches, ~4 px of flow), stored as they were. One sample
    consensus run at 1 px kept a model 128 degrees off in translation (878 inliers, one fewer
    than the true model's, with 4x its residuals); relative_pose also runs at half the
    threshold and keeps the model with the lowest truncated cost."""
    data = np.load(Path(__file__).parent / "golden" / "vo_small_baseline_pair.npz")
    estimate = relative_pose(data["ref_xy"], data["cur_xy"], data["K"], threshold_px=1.0)
    assert estimate.ok, estimate.message
    rotation, direction = pose_errors(estimate.R, estimate.t, data["R"], data["t"])
    assert rotation < 0.1 and direction < 3.0, (rotation, direction)
    assert estimate.num_inliers > 0.95 * len(data["ref_xy"])


def test_degenerate_inputs_fail_without_exceptions(scene):
    rng = np.random.default_rng(0)
    cases = {
        "seven points": (rng.uniform(0, 500, (7, 2)), rng.uniform(0, 500, (7, 2))),
        "none": (np.zeros((0, 2)), np.zeros((0, 2))),
        "all identical": (np.full((50, 2), 200.0), np.full((50, 2), 210.0)),
        "identical per image": (rng.uniform(0, 500, (50, 2)), np.full((50, 2), 210.0)),
        "not finite": (np.full((50, 2), np.nan), rng.uniform(0, 500, (50, 2))),
        "random": (rng.uniform(0, 500, (12, 2)), rng.uniform(0, 500, (12, 2))),
    }
    for name, (a, b) in cases.items():
        estimate = relative_pose(a, b, scene.K)
        assert isinstance(estimate, PoseEstimate)
        assert not estimate.ok and estimate.message, name
        assert estimate.inliers.shape == (len(a),)
    with pytest.raises(ValueError):
        relative_pose(np.zeros((10, 2)), np.zeros((9, 2)), scene.K)


def test_stereo_depth_and_pose_errors():
    left = np.array([[100.0, 50.0], [300.0, 80.0], [10.0, 5.0], [40.0, 40.0]])
    right = np.array([[90.0, 50.0], [300.0, 80.0], [20.0, 5.0], [30.0, 43.0]])
    depth = stereo_depth(left, right, fx=500.0, baseline=0.1)
    assert depth[0] == pytest.approx(5.0)       # disparity 10 px
    assert np.isnan(depth[1:]).all()            # zero, negative disparity, rows apart
    R = cv2.Rodrigues(np.array([0.0, 0.02, 0.0]))[0]
    assert pose_errors(R, [1, 0, 0], R, [2, 0, 0]) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert pose_errors(np.eye(3), [1, 0, 0], R, [-1, 0, 0]) == \
        pytest.approx((np.degrees(0.02), 180.0))


def test_odometry_chains_relative_motions(poses):
    metric, unit = Odometry(), Odometry()
    for previous, current in zip(poses, poses[1:]):
        R, t = relative_motion(previous, current)
        step = PoseEstimate(R=R, t=t / np.linalg.norm(t), inliers=np.ones(1, bool),
                            num_inliers=1, ok=True, message="ok")
        metric.update(step, scale=np.linalg.norm(t))
        unit.update(step)
    assert np.allclose(metric.poses[-1], poses[-1]) and metric.is_metric
    assert not unit.is_metric
    # Without scale each step counts as one unit.
    assert np.allclose(np.linalg.norm(np.diff(unit.positions, axis=0), axis=1), 1.0)
    lost = PoseEstimate(R=np.eye(3), t=np.zeros(3), inliers=np.zeros(0, bool), num_inliers=0,
                        ok=False, message="no")
    assert np.array_equal(metric.update(lost), metric.poses[-2]) and metric.lost == 1
    assert metric.positions.shape == (len(poses) + 1, 3)


# --- real matches of rendered frames -------------------------------------------------------

@pytest.fixture(scope="module")
def vo_pipeline():
    return Pipeline(device="cpu", max_keypoints=1024, allow_download=False)


@pytest.fixture(scope="module")
def frames(scene, poses):
    return render(scene, poses[REF])[0], render(scene, poses[CUR])[0]


@pytest.fixture(scope="module")
def temporal_matches(vo_pipeline, frames):
    return vo_pipeline.match(*frames)


@pytest.fixture(scope="module")
def stereo_matches(vo_pipeline, scene, poses):
    left, right = stereo_pair(scene, poses[REF], STEREO_BASELINE)
    return vo_pipeline.match(left, right)


def test_rendered_frames_give_the_true_motion(scene, poses, temporal_matches):
    result = temporal_matches
    estimate = relative_pose(result.keypoints0, result.keypoints1, scene.K)
    assert estimate.ok, estimate.message
    R, t = relative_motion(poses[REF], poses[CUR])
    rotation_error, direction_error = pose_errors(estimate.R, estimate.t, R, t)
    # Measured: 0.008 / 0.16 degrees from ~830 matches (0.007-0.05 / 0.1-1.7 degrees over
    # other frame pairs 1-3 frames apart and thresholds of 0.5-1.5 px).
    assert rotation_error < 0.5 and direction_error < 5.0
    assert estimate.num_inliers > 0.8 * len(result) > 400


def test_stereo_matches_give_metric_depth(scene, poses, stereo_matches):
    result = stereo_matches
    depth = stereo_depth(result.keypoints0, result.keypoints1, scene.K[0, 0], STEREO_BASELINE)
    true_depth, real = render_depth(scene, poses[REF])
    u, v = np.rint(result.keypoints0).astype(int).T
    known = real[v, u] & np.isfinite(depth)
    assert known.sum() > 300
    relative_error = np.abs(depth[known] - true_depth[v, u][known]) / true_depth[v, u][known]
    # Measured: 0.4% median, 3% at the 90th percentile (disparities of 20-45 px).
    assert np.median(relative_error) < 0.05


def test_stereo_fixes_the_monocular_scale(scene, poses, temporal_matches, stereo_matches):
    """Monocular VO between two frames, scaled by stereo depths of the reference frame: the
    keypoints of the reference image are the same in both matches (same image, same
    extractor), so keypoint indices connect them."""
    temporal, stereo = temporal_matches, stereo_matches
    estimate = relative_pose(temporal.keypoints0, temporal.keypoints1, scene.K)
    depth = stereo_depth(stereo.keypoints0, stereo.keypoints1, scene.K[0, 0], STEREO_BASELINE)
    shared, in_temporal, in_stereo = np.intersect1d(temporal.indices0, stereo.indices0,
                                                    return_indices=True)
    assert np.allclose(temporal.keypoints0[in_temporal], stereo.keypoints0[in_stereo])
    use = estimate.inliers[in_temporal]
    points = triangulate(temporal.keypoints0[in_temporal][use],
                         temporal.keypoints1[in_temporal][use], scene.K, estimate.R, estimate.t)
    scale = scale_from_depths(points, depth[in_stereo][use])
    true_step = np.linalg.norm(relative_motion(poses[REF], poses[CUR])[1])
    assert len(shared) > 200
    assert scale == pytest.approx(true_step, rel=0.1)


def test_pnp_on_stereo_points_gives_the_metric_motion(scene, poses):
    from match_node.vo_metric import pose_from_points, stereo_points
    xy_a, xy_b, points_a = synthetic_views(scene, poses[REF], poses[CUR], 500, 0.3, 3)
    R, t = relative_motion(poses[REF], poses[CUR])
    # Stereo points of the reference camera: right view shifted by a 10 cm baseline.
    baseline = 0.1
    right_a = xy_a - np.c_[scene.K[0, 0] * baseline / points_a[:, 2], np.zeros(len(xy_a))]
    points = stereo_points(xy_a, right_a, scene.K, baseline)
    points[::7] = np.nan  # some keypoints had no stereo match
    estimate, scale = pose_from_points(points, xy_b, scene.K)
    rotation, direction = pose_errors(estimate.R, estimate.t, R, t)
    assert estimate.ok and rotation < 0.1 and direction < 2.0
    assert scale == pytest.approx(np.linalg.norm(t), rel=0.03)
    failed, _ = pose_from_points(points[:5], xy_b[:5], scene.K)
    assert not failed.ok and "points with depth" in failed.message
