"""The Motorcycle scene: calibration, ground-truth consistency with the real right image,
rendering, and the test trajectory."""

import cv2
import numpy as np
import pytest

from match_node.groundtruth.scene import (FULL_FOCAL_PX, FULL_SIZE, load_motorcycle, relative_motion,
                              render, render_depth, right_camera, scale_intrinsics,
                              stereo_pair, trajectory, true_correspondences)


@pytest.fixture(scope="module")
def scene():
    return load_motorcycle()


def pixel_grid(w, h):
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def absdiff(a, b):
    """Per-pixel absolute difference in grey levels, averaged over RGB."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)


def test_calibration_matches_the_downsampled_images(scene):
    w, h = scene.size
    assert (w, h) == (741, 500)
    # skimage downsampled the 2964 x 2000 originals by exactly 4 in both directions.
    assert FULL_SIZE[0] / w == FULL_SIZE[1] / h == 4
    assert scene.K[0, 0] == scene.K[1, 1] == pytest.approx(FULL_FOCAL_PX / 4)
    # skimage's docstring lists 994.978 / 311.193 / 254.877 / 31.086 (calib.txt / 4); our
    # principal point is 0.375 px lower, the pixel-centre correction of the block mean.
    assert scene.K[0, 0] == pytest.approx(994.978, abs=1e-3)
    assert scene.K[0, 2] == pytest.approx(311.193 - 0.375, abs=1e-3)
    assert scene.K[1, 2] == pytest.approx(254.877 - 0.375, abs=1e-3)
    assert scene.doffs_px == pytest.approx(31.086, abs=1e-3)
    depth = scene.depth[scene.valid]
    assert 0.9 < scene.valid.mean() < 0.95
    assert 2.0 < depth.min() and depth.max() < 5.1  # a motorcycle in front of a wall
    assert scale_intrinsics(scene.K, scene.size, scene.size) == pytest.approx(scene.K)


def test_disparity_maps_the_real_right_image_onto_the_left(scene):
    """Ground truth against the real photographs: the left pixel x sees what the right
    image shows at x - d. (skimage's docstring says x + d; the images say otherwise.)"""
    w, h = scene.size
    xs, ys = pixel_grid(w, h)
    d = np.nan_to_num(scene.disparity).astype(np.float32)

    def error(shift: float) -> np.ndarray:
        map_x = xs - d + np.float32(shift)
        warped = cv2.remap(scene.right_image, map_x, ys, cv2.INTER_LINEAR)
        inside = scene.valid & (xs - d >= 1) & (xs - d <= w - 2)
        return absdiff(warped, scene.image)[inside]

    exact = error(0.0)
    # Tolerance: the cameras differ in exposure and sensor noise, and the disparity includes
    # half-occluded pixels (seen only in the left image). Measured: median 3, 75th pct. 5.
    assert np.median(exact) <= 4.0 and np.percentile(exact, 75) <= 8.0
    # The exact disparity beats the unwarped image, the opposite sign and sub-pixel offsets:
    # the disparity's scale and origin match this resolution.
    unwarped = absdiff(scene.right_image, scene.image)[scene.valid]
    assert np.median(unwarped) > 3 * np.median(exact)
    assert np.mean(error(-0.5)) > np.mean(exact) and np.mean(error(0.5)) > np.mean(exact)
    wrong_sign = cv2.remap(scene.right_image, xs + d, ys, cv2.INTER_LINEAR)
    assert np.median(absdiff(wrong_sign, scene.image)[scene.valid]) > 3 * np.median(exact)


def test_render_at_identity_reproduces_the_photograph(scene):
    image, mask = render(scene, np.eye(4))
    assert image.shape == scene.image.shape and image.dtype == np.uint8
    # Every pixel that sees a surface samples the photograph at its own position: exact up
    # to rounding; the handful seeing none (inpainted) lie in holes of the ground truth.
    error = absdiff(image, scene.image)
    assert error[mask].max() <= 1.0
    assert (error <= 1.0).mean() > 0.9999
    # The mask is the ground truth's coverage, less a few isolated far pixels among near
    # ones, which the renderer takes for background seen through a gap in the foreground.
    assert (mask == scene.valid).mean() > 0.999 and not (mask & ~scene.valid).any()
    depth, real = render_depth(scene, np.eye(4))
    both = real & scene.valid
    # Exact but for 0.04%: the same far pixels, refilled with their near neighbours' depth.
    assert np.isclose(depth[both], scene.depth[both], rtol=1e-6).mean() > 0.999


def test_render_smaller_view_scales_intrinsics(scene):
    image, mask = render(scene, np.eye(4), size=(370, 250))
    assert image.shape == (250, 370, 3)
    reference = cv2.resize(scene.image, (370, 250), interpolation=cv2.INTER_AREA)
    error = absdiff(image, reference)[mask]
    # Different resampling filters (Gaussian + bilinear vs box): small differences.
    assert np.median(error) <= 1.0 and np.percentile(error, 95) <= 6.0


def warp_with_depth(image_a, K, depth_b, T_a, T_b):
    """View a resampled into view b through b's depth and the known motion b -> a."""
    h, w = depth_b.shape
    xs, ys = pixel_grid(w, h)
    rays = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.linalg.inv(K).T
    R, t = relative_motion(T_b, T_a)
    in_a = (rays * np.nan_to_num(depth_b, nan=1.0)[..., None]) @ R.T + t
    projected = in_a @ K.T
    map_x = (projected[..., 0] / projected[..., 2]).astype(np.float32)
    map_y = (projected[..., 1] / projected[..., 2]).astype(np.float32)
    return cv2.remap(image_a, map_x, map_y, cv2.INTER_LINEAR), map_x, map_y, in_a[..., 2]


def test_views_agree_through_depth_and_motion(scene):
    """Two rendered views (neither the original) are related by the known geometry: warping
    view a into view b with b's depth and the relative motion reproduces view b."""
    poses = trajectory(6)
    T_a, T_b = poses[2], poses[5]  # 6 cm and 1.3 degrees apart
    image_a, mask_a = render(scene, T_a)
    image_b, mask_b = render(scene, T_b)
    depth_a, _ = render_depth(scene, T_a)
    depth_b, _ = render_depth(scene, T_b)
    warped, map_x, map_y, z_in_a = warp_with_depth(image_a, scene.K, depth_b, T_a, T_b)
    w, h = scene.size
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    valid_in_a = cv2.remap(mask_a.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0
    # Visible in a too: a's own depth there agrees (not hidden behind something else).
    seen_depth = cv2.remap(np.nan_to_num(depth_a), map_x, map_y, cv2.INTER_NEAREST)
    visible = np.abs(seen_depth - z_in_a) < 0.02 * z_in_a
    both = mask_b & inside & valid_in_a & visible
    assert both.mean() > 0.8
    error = absdiff(warped, image_b)[both]
    # Tolerance: two bilinear resamplings and the per-pixel depth of nearest-point splatting
    # (measured: median 0.7, 95th percentile 5.7 grey levels; without the warp 9.7 / 89).
    assert np.median(error) <= 1.5 and np.percentile(error, 95) <= 10.0
    assert np.median(absdiff(image_a, image_b)[both]) > 5 * max(np.median(error), 1.0)


def test_true_correspondences_land_on_the_same_texture(scene):
    poses = trajectory(4)
    image_a, _ = render(scene, poses[1])
    image_b, _ = render(scene, poses[3])
    grid = np.stack(np.meshgrid(np.arange(4, 737, 6.5), np.arange(4, 496, 6.5)), -1)
    points_a = grid.reshape(-1, 2)
    points_b, known = true_correspondences(scene, poses[1], poses[3], points_a)
    assert known.mean() > 0.8

    def sample(image, points):
        p = points.astype(np.float32)[None]
        return cv2.remap(image, p[..., 0], p[..., 1], cv2.INTER_LINEAR)[0]

    error = absdiff(sample(image_a, points_a)[None], sample(image_b, points_b)[None])[0][known]
    assert np.median(error) <= 1.5 and np.percentile(error, 90) <= 8.0
    # The same points displaced by 2 px in b do not match as well.
    shifted = absdiff(sample(image_a, points_a)[None],
                      sample(image_b, points_b + 2.0)[None])[0][known]
    assert np.median(shifted) > 2 * max(np.median(error), 1.0)


def test_stereo_pair_has_the_disparity_of_its_baseline(scene):
    pose = trajectory(3)[2]
    baseline = 0.1
    left, right = stereo_pair(scene, pose, baseline)
    right_mask = render(scene, right_camera(pose, baseline))[1]
    depth, real = render_depth(scene, pose)
    disparity = np.nan_to_num(scene.K[0, 0] * baseline / depth).astype(np.float32)
    xs, ys = pixel_grid(*scene.size)
    warped = cv2.remap(right, xs - disparity, ys, cv2.INTER_LINEAR)
    seen = cv2.remap(right_mask.astype(np.uint8), xs - disparity, ys, cv2.INTER_NEAREST) > 0
    both = real & seen & (xs - disparity >= 0)
    error = absdiff(warped, left)[both]
    assert np.median(error) <= 1.5
    # The right camera sits at +baseline along the left camera's x axis.
    R, t = relative_motion(pose, right_camera(pose, baseline))
    assert np.allclose(R, np.eye(3)) and np.allclose(t, [-baseline, 0, 0])


def test_trajectory_is_smooth_vo_motion_over_the_scene(scene):
    poses = trajectory(24, seed=0)
    assert len(poses) == 24 and np.array_equal(poses[0], np.eye(4))
    steps, angles = [], []
    for previous, current in zip(poses, poses[1:]):
        R, t = relative_motion(previous, current)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9)
        steps.append(np.linalg.norm(t))
        angles.append(np.degrees(np.abs(cv2.Rodrigues(R)[0].ravel())))
    steps, angles = np.array(steps), np.array(angles)
    assert 0.003 < steps.min() and steps.max() < 0.05 and 0.015 < np.median(steps)
    assert angles.max() <= 1.0  # per axis
    # Ground-truth points cover most of every frame (93% at the start).
    coverage = [render_depth(scene, pose)[1].mean() for pose in poses]
    assert min(coverage) > 0.85
    assert trajectory(5, seed=1)[3] == pytest.approx(trajectory(5, seed=1)[3])
    assert not np.allclose(trajectory(5, seed=1)[3], poses[3])
