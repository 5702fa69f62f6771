"""Sub-pixel refinement against exact ground truth: a real photograph under a known homography."""
import copy

import cv2
import numpy as np
import pytest

from match_node.engine.refine import (align_patches, refine_lk, refine_multiscale, refine_patch,
                                      to_gray)
from match_node.groundtruth.planar import load_photo, reprojection_errors

from conftest import warp

# Rotation of 10 degrees, scale 1.05 and some perspective about the centre of a 480x320 crop.
ANGLE, SCALE = np.deg2rad(10.0), 1.05
_ROTATE = np.array([[SCALE * np.cos(ANGLE), -SCALE * np.sin(ANGLE), 0],
                    [SCALE * np.sin(ANGLE), SCALE * np.cos(ANGLE), 0], [5e-5, -3e-5, 1]])
_CENTRE = np.array([[1, 0, -240], [0, 1, -160], [0, 0, 1]], float)
HOMOGRAPHY = np.linalg.inv(_CENTRE) @ _ROTATE @ _CENTRE


@pytest.fixture(scope="module")
def scene():
    photo = np.ascontiguousarray(load_photo("astronaut")[:320, :480])
    warped = warp(photo, HOMOGRAPHY)
    gray0 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(gray0, 400, 0.01, 8, blockSize=5)[:, 0]
    inside = np.all((corners > 20) & (corners < [460, 300]), axis=1)
    keypoints0 = corners[inside].astype(np.float32)
    truth = cv2.perspectiveTransform(keypoints0[None].astype(np.float64), HOMOGRAPHY)[0]
    rng = np.random.default_rng(0)
    noisy = (truth + rng.uniform(-1.2, 1.2, truth.shape)).astype(np.float32)  # detector noise
    return to_gray(photo), to_gray(warped), keypoints0, noisy


def test_patch_refinement_recovers_sub_pixel_positions(scene):
    gray0, gray1, keypoints0, noisy = scene
    before = reprojection_errors(HOMOGRAPHY, keypoints0, noisy)
    refined_points, refined, _ = refine_patch(gray0, gray1, keypoints0, noisy)
    after = reprojection_errors(HOMOGRAPHY, keypoints0, refined_points)
    # Measured: 96% refined, median error 0.93 px -> 0.02 px.
    assert len(keypoints0) > 150 and refined.mean() > 0.85
    assert np.median(before) > 0.6 and np.median(after[refined]) < 0.08
    assert np.percentile(after[refined], 90) < 0.25
    # What was not refined did not move.
    assert np.array_equal(refined_points[~refined], noisy[~refined])


def test_lk_is_the_cheaper_translation_only_method(scene):
    gray0, gray1, keypoints0, noisy = scene
    lk_points, lk_refined, _ = refine_lk(gray0, gray1, keypoints0, noisy)
    patch_points, _, _ = refine_patch(gray0, gray1, keypoints0, noisy)
    lk_error = reprojection_errors(HOMOGRAPHY, keypoints0, lk_points)[lk_refined]
    patch_error = reprojection_errors(HOMOGRAPHY, keypoints0, patch_points)[lk_refined]
    # Measured: from a median of 0.93 px, LK reaches 0.46 px under the 10 degree rotation
    # (its window is not rotated), the affine-aware patch 0.02 px on the same matches.
    assert lk_refined.mean() > 0.5 and np.median(lk_error) < 0.6
    assert np.median(patch_error) < np.median(lk_error)


def test_never_moves_more_than_the_limit_and_flat_patches_stay(scene):
    gray0, gray1, keypoints0, noisy = scene
    rng = np.random.default_rng(1)
    wrong = rng.uniform([20, 20], [460, 300], noisy.shape).astype(np.float32)  # outliers
    moved, refined, off = refine_patch(gray0, gray1, keypoints0, wrong, max_shift=2.0)
    assert np.all(np.linalg.norm(moved - wrong, axis=1) < 2.0)
    assert refined.mean() < 0.3  # most outliers find no aligned patch within 2 px
    blank = np.full_like(gray0, 0.5)
    still, refined, _ = refine_patch(blank, blank, keypoints0, noisy)
    assert not refined.any() and np.array_equal(still, noisy)
    empty, flags, _ = refine_patch(gray0, gray1, np.zeros((0, 2)), np.zeros((0, 2)))
    assert empty.shape == (0, 2) and flags.shape == (0,)


@pytest.fixture(scope="module")
def blurred_scene():
    """The scene defocused (sigma 5 px), at 30% contrast, with 1 DN of sensor noise per frame
    (the textureless paths' frames), and matches ~2 px off (XFeat's error on such frames)."""
    photo = np.ascontiguousarray(load_photo("astronaut")[:320, :480])

    def degrade(image: np.ndarray, seed: int) -> np.ndarray:
        blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 5.0)
        flat = blurred.mean() + 0.3 * (blurred - blurred.mean())
        noisy = flat + np.random.default_rng(seed).normal(0.0, 1.0, flat.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    gray0, gray1 = to_gray(degrade(photo, 0)), to_gray(degrade(warp(photo, HOMOGRAPHY), 1))
    smooth = cv2.GaussianBlur(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), (0, 0), 5.0)
    corners = cv2.goodFeaturesToTrack(smooth, 300, 0.01, 10, blockSize=9)[:, 0]
    keypoints0 = corners[np.all((corners > 30) & (corners < [450, 290]), axis=1)]
    truth = cv2.perspectiveTransform(keypoints0[None].astype(np.float64), HOMOGRAPHY)[0]
    rng = np.random.default_rng(0)
    noisy = (truth + rng.uniform(-2.5, 2.5, truth.shape)).astype(np.float32)
    return gray0, gray1, keypoints0.astype(np.float32), noisy


def test_multiscale_alignment_recovers_matches_on_a_blurred_noisy_frame(blurred_scene):
    gray0, gray1, keypoints0, noisy = blurred_scene
    before = reprojection_errors(HOMOGRAPHY, keypoints0, noisy)
    full, refined, _ = refine_patch(gray0, gray1, keypoints0, noisy)
    # Measured: full resolution refines 39% and leaves the median at 1.96 px (from 2.06)...
    assert len(keypoints0) > 150 and np.median(before) > 1.8
    assert np.median(reprojection_errors(HOMOGRAPHY, keypoints0, full)) > 1.5
    # ... two pyramid levels first take 98% of them to a median of 0.23 px (90%: 0.72 px).
    points, stderr = refine_multiscale(gray0, gray1, keypoints0, noisy, levels=2)
    after = reprojection_errors(HOMOGRAPHY, keypoints0, points)
    moved = np.isfinite(stderr)
    assert moved.mean() > 0.9 and np.median(after) < 0.4 and np.percentile(after, 90) < 1.2
    assert np.array_equal(points[~moved], noisy[~moved])  # unmoved ones are where they were
    # levels=0 is the full-resolution alignment alone (under the same rule): not enough.
    only_full, _ = refine_multiscale(gray0, gray1, keypoints0, noisy, levels=0)
    assert np.median(reprojection_errors(HOMOGRAPHY, keypoints0, only_full)) > 0.5


def test_multiscale_alignment_keeps_full_resolution_precision_on_a_sharp_frame(scene):
    gray0, gray1, keypoints0, noisy = scene
    points, stderr = refine_multiscale(gray0, gray1, keypoints0, noisy, levels=2)
    errors = reprojection_errors(HOMOGRAPHY, keypoints0, points)
    # Measured: 99% moved, median 0.065 px (refine_patch: 0.071 px on the 93% it refines).
    assert np.isfinite(stderr).mean() > 0.9 and np.median(errors) < 0.1
    assert np.all(np.linalg.norm(points - noisy, axis=1) < 3.0 * 4)  # within the search range


def test_standard_error_tells_a_corner_from_an_edge():
    """align_patches' standard error: an edge's position along itself is unknown to a patch,
    however well the patch correlates; a corner's is not."""
    ys, xs = np.mgrid[0:120, 0:120].astype(np.float32)
    corner = ((xs > 60) & (ys > 60)).astype(np.float32)
    edge = (xs > 60).astype(np.float32)
    rng = np.random.default_rng(0)
    points = np.array([[60.5, 60.5]], np.float32)
    errors = {}
    for name, image in (("corner", corner), ("edge", edge)):
        image = cv2.GaussianBlur(image, (0, 0), 1.5)
        noisy0 = image + rng.normal(0, 0.01, image.shape).astype(np.float32)
        noisy1 = image + rng.normal(0, 0.01, image.shape).astype(np.float32)
        aligned = align_patches(noisy0, noisy1, points, points + 0.5)
        errors[name] = float(aligned.stderr[0])
        assert aligned.ncc[0] > 0.95
    assert errors["corner"] < 0.1 and errors["edge"] > 10 * errors["corner"]


def test_stream_reports_one_position_per_keypoint():
    """A keypoint refined as the current frame's is reported at that same position when its
    frame is the next pair's reference, so multi-frame tracks see one position per frame."""
    from match_node import Pipeline, SequentialMatcher
    from match_node.groundtruth.planar import make_sequence
    sequence = make_sequence("coffee", num_frames=3, size=(320, 240), step=4)
    stream = SequentialMatcher(Pipeline(device="cpu", max_keypoints=300, allow_download=False))
    results = [stream.push(frame, t).result for t, frame in enumerate(sequence.frames)][1:]
    first, second = results
    assert first.refined.mean() > 0.5 and first.timings["refine_ms"] > 0
    current = {i: p for i, p in zip(first.indices1.tolist(), first.keypoints1)}
    shared = [(current[i], p) for i, p in zip(second.indices0.tolist(), second.keypoints0)
              if i in current]
    assert len(shared) > 50 and all(np.array_equal(a, b) for a, b in shared)
    for t, result in enumerate(results, start=1):
        errors = reprojection_errors(sequence.relative(t - 1, t), result.keypoints0,
                                     result.keypoints1)
        assert np.median(errors) < 0.15 and (errors < 3).mean() > 0.95


def test_budget_skips_refinement_when_time_is_short():
    from match_node import Pipeline
    pipeline = Pipeline(device="cpu", max_keypoints=128, allow_download=False)
    pipeline._refine_ms_per_match[False] = 1.0  # as if measured: 1 ms per match
    assert pipeline.refine_fits(1000, pipeline.budget.clock())  # no budget: always
    pipeline.budget.configure(50.0, 95.0, 64, 128, 320, 1024, 3)
    now = pipeline.budget.clock()
    assert pipeline.refine_fits(10, now) and not pipeline.refine_fits(100, now)


def test_motion_blurred_frames_do_not_raise_the_refinement_cost_of_sharp_ones():
    """The latency budget predicts a keypoint frame's refinement from a cost per match learned
    on the frames refined so far. A motion-blurred frame's coarse-to-fine step costs several
    times that; learning from it would make sharp frames' refinement look too slow, and a
    refinement the budget skips is never measured again. It is left out of the estimate."""
    from match_node import Pipeline
    from match_node.groundtruth.lowtexture import make_pair
    settings = dict(device="cpu", max_keypoints=256, allow_download=False, matcher="lightglue")
    pipeline = Pipeline(settings, refine="none")
    blurred = make_pair("astronaut", "motion_blur", seed=0, size=(480, 360))
    sharp = make_pair("astronaut", "original", seed=0, size=(480, 360))
    gray = {name: (to_gray(p.image0), to_gray(p.image1))
            for name, p in (("blurred", blurred), ("sharp", sharp))}
    results = {name: pipeline.match(p.image0, p.image1)
               for name, p in (("blurred", blurred), ("sharp", sharp))}
    from match_node.engine.refine import refine_keypoint_matches
    goes_coarse = {name: refine_keypoint_matches(*gray[name], r.keypoints0, r.keypoints1)[3]
                   for name, r in results.items()}
    assert goes_coarse == {"blurred": True, "sharp": False}
    pipeline.update(refine="patch")
    pipeline.refine_result(copy.deepcopy(results["sharp"]), *gray["sharp"])
    learned = pipeline._refine_ms_per_match[False]
    assert learned > 0
    blurred_result = copy.deepcopy(results["blurred"])
    pipeline.refine_result(blurred_result, *gray["blurred"])
    assert blurred_result.timings["refine_ms"] > 0
    assert pipeline._refine_ms_per_match[False] == learned
    pipeline.refine_result(copy.deepcopy(results["sharp"]), *gray["sharp"])
    assert pipeline._refine_ms_per_match[False] != learned  # sharp frames keep teaching it


def test_matches_displaced_beyond_the_search_range_are_found_off(scene):
    gray0, gray1, keypoints0, noisy = scene
    truth = cv2.perspectiveTransform(keypoints0[None].astype(np.float64), HOMOGRAPHY)[0]
    rng = np.random.default_rng(2)
    angle = rng.uniform(0, 2 * np.pi, len(truth))
    displaced = (truth + 2.6 * np.stack([np.cos(angle), np.sin(angle)], 1)).astype(np.float32)
    _, refined, off = refine_patch(gray0, gray1, keypoints0, displaced, max_shift=2.0)
    # Measured: 2.6 px from the truth, the alignment walks back towards it (the patch is
    # found >= 2 px away) for most; none of them is accepted as refined.
    assert off.mean() > 0.6 and not (refined & off).any()
    _, refined, off = refine_patch(gray0, gray1, keypoints0, noisy, max_shift=2.0)
    assert off.mean() < 0.02 and refined.mean() > 0.85  # within 1.2 px: refined, not off


@pytest.mark.parametrize("method", ["patch", "lk"])
def test_refine_outliers_drop_removes_exactly_the_matches_found_off(scene, method):
    """The full-resolution rule (refine_coarse_levels 0): matches moved 2 px or more are
    found off. (With coarse levels the chain places them instead: see the next test.)"""
    from match_node import Pipeline
    photo = np.ascontiguousarray(load_photo("astronaut")[:320, :480])
    image1 = warp(photo, HOMOGRAPHY)
    settings = dict(device="cpu", max_keypoints=512, allow_download=False, refine=method,
                    refine_coarse_levels=0)
    kept = Pipeline(settings, refine_outliers="keep").match(photo, image1)
    dropped = Pipeline(settings, refine_outliers="drop").match(photo, image1)
    pairs = set(zip(dropped.indices0.tolist(), dropped.indices1.tolist()))
    remaining = np.array([pair in pairs for pair in zip(kept.indices0.tolist(),
                                                        kept.indices1.tolist())])
    # 'drop' removes matches and changes nothing else.
    assert remaining.sum() == len(dropped) and 0 < len(dropped) < len(kept)
    assert not kept.refined[~remaining].any()  # with 'keep' they are published unrefined
    errors = reprojection_errors(HOMOGRAPHY, kept.keypoints0, kept.keypoints1)
    # The dropped matches are the imprecise ones: well over a pixel off, where the rest are
    # at a few hundredths (patch) or tenths (lk: translation only, under a 10 degree
    # rotation) of a pixel.
    assert np.median(errors[~remaining]) > max(1.5, 2 * np.median(errors[remaining]))


def test_a_sharp_pair_keeps_the_full_resolution_refinement():
    """refine_coarse_levels reaches a keypoint matcher's matches only on a blurred frame: on
    a sharp real pair refine_patch finds 1% of ALIKED's matches off (under
    BLURRED_OFF_SHARE), so the result is the same with 2 levels (the default) as with 0.
    (On sharp real 3D frames the coarse levels made the consecutive-frame pose worse.)"""
    from match_node import Pipeline
    from match_node.engine.refine import BLURRED_OFF_SHARE, refine_keypoint_matches
    photo = np.ascontiguousarray(load_photo("astronaut")[:320, :480])
    image1 = warp(photo, HOMOGRAPHY)
    settings = dict(device="cpu", max_keypoints=512, allow_download=False, refine="patch")
    full = Pipeline(settings, refine_coarse_levels=0).match(photo, image1)
    default = Pipeline(settings).match(photo, image1)
    assert 0 < full.off_dropped < BLURRED_OFF_SHARE * (len(full) + full.off_dropped)
    np.testing.assert_array_equal(default.indices0, full.indices0)
    np.testing.assert_array_equal(default.keypoints1, full.keypoints1)
    # The trigger itself: the same matches with a share it reaches do go coarse to fine.
    unrefined = Pipeline(settings, refine="none", refine_coarse_levels=0).match(photo, image1)
    gray0, gray1 = to_gray(photo), to_gray(image1)
    _, _, off, coarse = refine_keypoint_matches(gray0, gray1, unrefined.keypoints0,
                                                unrefined.keypoints1)
    assert not coarse and off.any()
    assert refine_keypoint_matches(gray0, gray1, unrefined.keypoints0, unrefined.keypoints1,
                                   blurred_share=off.mean())[3]


def test_keypoint_matches_on_a_motion_blurred_pair_are_aligned_coarse_to_fine():
    """ALIKED + LightGlue on a motion-blurred pair (astronaut, 12-20 px of motion in each
    frame, 480x360, exact homography): the detector places keypoints along the blur, where
    full resolution sees a ramp. Measured: full resolution alone (refine_coarse_levels 0)
    finds 39 matches off and publishes 48, 62% within 3 px (median 2.41 px); with the
    default 2 levels the matches it leaves imprecise go coarse to fine: 1 off, 86
    published, 81% within 3 px (median 1.57 px)."""
    from match_node import Pipeline
    from match_node.groundtruth.lowtexture import make_pair
    pair = make_pair("astronaut", "motion_blur", seed=0, size=(480, 360))
    settings = dict(device="cpu", max_keypoints=512, allow_download=False, matcher="lightglue")
    results = {levels: Pipeline(settings, refine_coarse_levels=levels).match(pair.image0,
                                                                            pair.image1)
               for levels in (0, 2)}
    errors = {levels: reprojection_errors(pair.homography, r.keypoints0, r.keypoints1)
              for levels, r in results.items()}
    assert results[0].off_dropped > 3 * results[2].off_dropped + 20
    assert len(results[2]) > 1.5 * len(results[0])
    assert np.mean(errors[2] < 3) > np.mean(errors[0] < 3) + 0.1
    assert np.median(errors[2]) < 0.75 * np.median(errors[0])


def test_closed_form_singular_values_match_the_svd():
    from match_node.engine.refine import singular_values_2x2
    matrices = np.random.default_rng(0).normal(size=(500, 2, 2)).astype(np.float32)
    matrices[:3] = [[[1, 0], [0, 1]], [[2, 0], [0, 0]], [[0, -3], [0.5, 0]]]  # edge cases
    smallest, largest = singular_values_2x2(matrices)
    expected = np.linalg.svd(matrices.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(largest, expected[:, 0], atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(smallest, expected[:, 1], atol=2e-6, rtol=1e-5)
