"""The low-texture pair generator (exact homographies, deterministic) and matcher 'auto''s
textureless path without a LoFTR file: SIFT on contrast-normalised images, nearest
neighbours, the epipolar check and refinement, and its fallback (XFeat + LighterGlue)."""
import contextlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from match_node import Pipeline, SequentialMatcher
from match_node.engine.results import MatchResult
from match_node.groundtruth.lowtexture import (FRAME_KINDS, KINDS, blank_wall, degrade_frame,
                                               degrade_frames, make_pair, render,
                                               repetitive_scene, view_pair)
from match_node.groundtruth.planar import make_sequence, replay, reprojection_errors
from match_node.engine.families import FALLBACK_MIN_CONFIDENCE
from match_node.engine.texture import (TEXTURELESS_DIRECT, TEXTURELESS_SIFT, TEXTURELESS_XFEAT,
                                       contrast_normalise,
                                       epipolar_agreement, epipolar_inliers,
                                       geometric_agreement, gradient_tensor, measure_texture)
from match_node.engine.refine import to_gray

CONFIG = Path(__file__).resolve().parents[1] / "config" / "match_node.yaml"


@contextlib.contextmanager
def overridden(pipeline: Pipeline, **changes):
    """`pipeline` with the run-time parameters `changes`, restored afterwards."""
    before = {name: pipeline.params[name] for name in changes}
    pipeline.update(**changes)
    try:
        yield pipeline
    finally:
        pipeline.update(**before)


def blob_photo(spacing: int = 72, sigma: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A dark photo with Gaussian blobs on a grid, and the blob centres (photo pixels)."""
    w, h = 480, 360
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    centres = np.array([(x + 0.37 * (y // spacing % 2), y + 0.21)
                        for y in range(spacing // 2, h - 20, spacing)
                        for x in range(spacing // 2, w - 20, spacing)], np.float64)
    photo = np.full((h, w), 20.0, np.float32)
    for cx, cy in centres:
        window = (slice(int(cy) - 15, int(cy) + 16), slice(int(cx) - 15, int(cx) + 16))
        photo[window] += 200 * np.exp(-((xs[window] - cx) ** 2 + (ys[window] - cy) ** 2)
                                      / (2 * sigma ** 2))
    return np.clip(photo, 0, 255).astype(np.uint8), centres


def centroid(image: np.ndarray, point: np.ndarray, radius: int) -> np.ndarray | None:
    """Intensity centroid (background removed) of the blob near `point`, or None near a border."""
    gray = image.astype(np.float64).mean(-1)
    x, y = np.round(point).astype(int)
    if not (radius <= x < gray.shape[1] - radius and radius <= y < gray.shape[0] - radius):
        return None
    patch = gray[y - radius:y + radius + 1, x - radius:x + radius + 1]
    weights = np.clip(patch - np.median(gray), 0, None)
    steps = np.arange(-radius, radius + 1)
    return np.array([x + (weights.sum(0) * steps).sum() / weights.sum(),
                     y + (weights.sum(1) * steps).sum() / weights.sum()])


@pytest.mark.parametrize("kind", ["original", "blur", "motion_blur"])
def test_homography_is_exact(kind):
    """Blob centroids found in image 0, mapped by the pair's homography, land on the
    centroids found in image 1 (symmetric blurs move no point), at 320x240."""
    photo, _ = blob_photo()
    pair = make_pair(photo, kind, seed=3, size=(320, 240), name="blobs")
    gray0 = pair.image0.astype(np.float64).mean(-1)
    # Blob peaks of image 0: local maxima well above the background.
    peaks = (gray0 == cv2.dilate(gray0, np.ones((25, 25)))) & (gray0 > np.median(gray0) + 10)
    errors = []
    for y, x in zip(*np.nonzero(peaks)):
        c0 = centroid(pair.image0, np.array([x, y], float), 20)
        if c0 is None:
            continue
        predicted = cv2.perspectiveTransform(c0[None, None], pair.homography)[0, 0]
        c1 = centroid(pair.image1, predicted, 20)
        if c1 is not None:
            errors.append(np.linalg.norm(c1 - predicted))
    assert len(errors) >= 4
    assert np.median(errors) < 0.1 and max(errors) < 0.25, errors


def test_views_map_through_the_homography_to_the_same_photo_point():
    """Rendering the photo's own coordinates: pixel p of frame 0 and pixel H p of frame 1
    show the same photo point (bilinear, so exact up to OpenCV's 1/32 px interpolation)."""
    w, h = 600, 400
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    coords = np.dstack([xs, ys, np.zeros_like(xs)])
    h0, h1 = view_pair((w, h), (320, 240), np.random.default_rng(7))
    frame0, frame1 = render(coords, h0, (320, 240)), render(coords, h1, (320, 240))
    u, v = np.meshgrid(np.arange(10, 310, 9.0), np.arange(10, 230, 9.0))
    points = np.stack([u.ravel(), v.ravel()], 1)
    mapped = cv2.perspectiveTransform(points[None], h1 @ np.linalg.inv(h0))[0]
    inside = np.all((mapped > 1) & (mapped < [318, 238]), axis=1)
    assert inside.sum() > 200
    seen0 = frame0[v.ravel().astype(int), u.ravel().astype(int), :2][inside]
    seen1 = cv2.remap(frame1, mapped[inside, :1].astype(np.float32),
                      mapped[inside, 1:].astype(np.float32), cv2.INTER_LINEAR)[:, 0, :2]
    assert np.abs(seen0 - seen1).max() < 0.08


def test_pairs_are_deterministic_and_low_texture_kinds_differ():
    a = make_pair("coffee", "dark", seed=1, size=(160, 120))
    b = make_pair("coffee", "dark", seed=1, size=(160, 120))
    assert np.array_equal(a.image0, b.image0) and np.array_equal(a.homography, b.homography)
    c = make_pair("coffee", "dark", seed=2, size=(160, 120))
    assert not np.array_equal(a.homography, c.homography)
    for kind in KINDS:
        pair = make_pair("coffee", kind, seed=0, size=(160, 120))
        assert pair.image0.shape == (120, 160, 3) and pair.image0.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown"):
        make_pair("coffee", "snow")


def test_severity_scales_each_degradation_on_the_same_views():
    def detail(image: np.ndarray) -> float:  # gradient energy (at 1 px, above the noise)
        return float(np.trace(gradient_tensor(to_gray(image))))

    size = (320, 240)
    for kind in ("blur", "low_contrast", "blur_low_contrast", "fog", "dark", "motion_blur"):
        usual = make_pair("coffee", kind, seed=0, size=size)
        worse = make_pair("coffee", kind, seed=0, size=size, severity=2.0)
        assert np.array_equal(usual.homography, worse.homography), kind
        assert worse.id == f"coffee/{kind}@2/0" and usual.id == f"coffee/{kind}/0"
        if kind == "dark":  # half the light
            assert 0.4 < to_gray(worse.image0).mean() / to_gray(usual.image0).mean() < 0.6
        elif kind in ("low_contrast", "fog"):  # half the contrast left
            assert 0.4 < to_gray(worse.image0).std() / to_gray(usual.image0).std() < 0.65, kind
        else:  # twice the blur: less detail
            assert detail(worse.image0) < 0.75 * detail(usual.image0), kind
    for kind in ("wall_patch", "repetitive", "closeup"):  # scenes: nothing to scale
        usual = make_pair("coffee", kind, seed=0, size=(160, 120))
        assert np.array_equal(make_pair("coffee", kind, seed=0, size=(160, 120),
                                        severity=2.0).image1, usual.image1)
    with pytest.raises(ValueError, match="severity must be positive"):
        make_pair("coffee", "blur", size=(160, 120), severity=0.0)
    with pytest.raises(ValueError, match="severity must be positive"):
        make_pair("coffee", "wall_patch", size=(160, 120), severity=float("nan"))


def test_contrast_normalise_and_epipolar_inliers():
    rng = np.random.default_rng(0)
    photo = cv2.cvtColor(make_sequence("coffee", 1, size=(160, 120)).frames[0],
                         cv2.COLOR_RGB2GRAY).astype(np.float64)
    flat = np.round(photo.mean() + 0.06 * (photo - photo.mean())).astype(np.uint8)  # 6% contrast
    stretched = contrast_normalise(flat)
    assert stretched.dtype == np.uint8 and stretched.std() > 1.5 * flat.std()
    assert np.array_equal(contrast_normalise(flat / 255.0), stretched)
    # Matches under a homography plus 20% gross outliers: the outliers go, the rest stay.
    k0 = rng.uniform(0, [640, 480], (200, 2))
    H = np.array([[0.98, 0.05, 12], [-0.04, 1.01, 5], [1e-5, 2e-5, 1]])
    k1 = cv2.perspectiveTransform(k0[None], H)[0] + rng.normal(0, 0.3, (200, 2))
    k1[:40] = rng.uniform(0, [640, 480], (40, 2))
    for fast in (False, True):  # MAGSAC++, and MSAC (epipolar_filter_px's real-time path)
        keep = epipolar_inliers(k0, k1, fast=fast)
        assert keep[40:].mean() > 0.95 and keep[:40].mean() < 0.2
        assert epipolar_inliers(k0[:10], k1[:10], fast=fast).all()  # too few: all kept


def two_views(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Projections of `count` random points of a deep (non-planar) scene into two cameras
    that move sideways, up and forwards and turn a little: a well-defined epipolar geometry."""
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    points = np.c_[rng.uniform(-3, 3, count), rng.uniform(-2, 2, count), rng.uniform(4, 12, count)]
    rotation, _ = cv2.Rodrigues(np.array([0.02, -0.05, 0.03]))
    moved = points @ rotation.T + np.array([0.4, 0.25, 0.3])
    project = lambda p: (p @ K.T)[:, :2] / p[:, 2:3]  # noqa: E731
    return project(points), project(moved)


def test_epipolar_agreement_tells_matches_a_reference_supports():
    """Against the geometry of 40 correct reference matches, correct matches agree and matches
    displaced by a 'period' (60-100 px in any direction) mostly do not; a reference too thin
    to fit says nothing."""
    rng = np.random.default_rng(1)
    reference0, reference1 = two_views(rng, 40)
    reference1 += rng.normal(0, 0.5, reference1.shape)
    k0, k1 = two_views(np.random.default_rng(2), 200)
    angle = rng.uniform(0, 2 * np.pi, 200)
    wrong = k1 + rng.uniform(60, 100, (200, 1)) * np.c_[np.cos(angle), np.sin(angle)]
    assert epipolar_agreement(reference0, reference1, k0, k1) > 0.97
    assert epipolar_agreement(reference0, reference1, k0, wrong) < 0.15
    mixed = np.r_[k1[:60], wrong[60:]]  # 30% correct, like SIFT on a tiled surface
    assert 0.25 < epipolar_agreement(reference0, reference1, k0, mixed) < 0.45
    assert epipolar_agreement(reference0[:19], reference1[:19], k0, k1) is None
    assert epipolar_agreement(reference0, reference1, k0[:0], k1[:0]) is None


def test_geometric_agreement_uses_the_homography_of_a_planar_reference():
    """A camera moving sideways over a tilted floor: the reference's homography explains it,
    so matches one 'period' (80 px) off along the rows of tiles disagree, correct ones agree.
    A deep scene has no such homography: the epipolar geometry decides, as in
    epipolar_agreement."""
    rng = np.random.default_rng(5)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    xy = np.c_[rng.uniform(-3, 3, 300), rng.uniform(-2, 2, 300)]
    floor = np.c_[xy, 8 + 0.3 * xy[:, 1]]
    project = lambda p: (p @ K.T)[:, :2] / p[:, 2:3]  # noqa: E731
    k0, k1 = project(floor), project(floor - np.array([0.5, 0.0, 0.0]))
    reference1 = k1[:150] + rng.normal(0, 0.5, (150, 2))
    assert geometric_agreement(k0[:150], reference1, k0[150:], k1[150:]) > 0.97
    shifted = k1[150:] + np.array([80.0, 0.0])
    assert geometric_agreement(k0[:150], reference1, k0[150:], shifted) < 0.05
    assert geometric_agreement(k0[:19], reference1[:19], k0[150:], k1[150:]) is None

    reference0, reference1 = two_views(np.random.default_rng(1), 60)
    reference1 += np.random.default_rng(2).normal(0, 0.5, reference1.shape)
    d0, d1 = two_views(np.random.default_rng(3), 100)
    angle = np.random.default_rng(4).uniform(0, 2 * np.pi, 100)
    mixed = np.r_[d1[:50], d1[50:] + 80 * np.c_[np.cos(angle), np.sin(angle)][50:]]
    deep = geometric_agreement(reference0, reference1, d0, mixed)
    assert deep == epipolar_agreement(reference0, reference1, d0, mixed)
    assert 0.45 < deep < 0.7


def test_texture_thresholds_follow_the_cap_and_the_resolution():
    """Keypoint thresholds are stated for 640x480 at the default cap: a cap below them counts
    as the threshold (the budget may lower it), and smaller images need fewer keypoints."""
    spread = np.random.default_rng(0).uniform(0, [640, 480], (128, 2))
    capped = measure_texture(spread, np.ones(128), (640, 480), cap=128)
    assert not capped.is_low(150, 0.3) and capped.is_high(250, 0.4)
    assert measure_texture(spread, np.ones(128), (640, 480)).is_low(150, 0.3)
    small = measure_texture(spread[:90] / 2, np.ones(90), (320, 240))
    assert small.scale == pytest.approx(0.5)
    assert not small.is_low(150, 0.3) and not small.is_high(250, 0.4)
    assert measure_texture(spread[:90], np.ones(90), (640, 480)).is_low(150, 0.3)


@pytest.fixture(scope="module")
def shipped(one_torch_thread):
    """The pipeline as config/match_node.yaml builds it (no LoFTR file here)."""
    return Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False)


def test_shipped_config_serves_textureless_frames_without_loftr(shipped):
    assert shipped.matcher_name == "auto"
    assert shipped.textureless_path == TEXTURELESS_SIFT
    assert "SIFT" in shipped.textureless_note and "loftr_weights" in shipped.textureless_note


@pytest.mark.parametrize("photo,kind", [("chelsea", "blur_low_contrast"), ("gravel", "fog")])
def test_textureless_path_is_precise_on_generated_pairs(shipped, photo, kind):
    pair = make_pair(photo, kind, seed=0, size=(640, 480))
    result = shipped.match(pair.image0, pair.image1)
    # SIFT-CLAHE, or the direct alignment where it has as many matches (single pairs).
    assert f"{result.extractor}+{result.matcher}" in (TEXTURELESS_SIFT, TEXTURELESS_DIRECT)
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    assert len(result) >= 30
    assert np.mean(errors < 3) >= 0.9
    with overridden(shipped, textureless_direct=False):
        sift = shipped.match(pair.image0, pair.image1)
    assert (sift.extractor, sift.matcher) == ("sift-clahe", "nn") and len(sift) >= 30
    errors = reprojection_errors(pair.homography, sift.keypoints0.astype(float),
                                 sift.keypoints1.astype(float))
    assert np.mean(errors < 3) >= 0.9


def repeatability(keypoints0: np.ndarray, keypoints1: np.ndarray, homography: np.ndarray,
                  within_px: float = 2.0) -> float:
    """Share of image 0's keypoints with one of image 1's within `within_px` of where the
    homography maps them."""
    mapped = cv2.perspectiveTransform(keypoints0.reshape(-1, 1, 2).astype(np.float64),
                                      homography).reshape(-1, 2)
    nearest = np.linalg.norm(mapped[:, None] - keypoints1[None], axis=2).min(1)
    return float(np.mean(nearest < within_px))


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_textureless_paths_detect_the_scene_not_the_noise_at_night(shipped, photo):
    """On a dark pair (5-8% of the light, shot and read noise) the textureless path's SIFT,
    given the frames as they are, puts most keypoints on noise, which the other view does not
    repeat; smoothed first (texture_denoise), it keeps fewer, and more of them repeat
    (measured: repeatability 0.16 -> 0.37 on chelsea, 0.20 -> 0.33 on coffee)."""
    pair = make_pair(photo, "dark", seed=0, size=(640, 480))
    shares, counts = {}, {}
    for smoothed in (False, True):
        with overridden(shipped, texture_denoise=smoothed):
            f0, f1 = (shipped.extract_on(TEXTURELESS_SIFT, image)
                      for image in (pair.image0, pair.image1))
        counts[smoothed] = len(f0)
        shares[smoothed] = repeatability(f0.keypoints.numpy(), f1.keypoints.numpy(),
                                         pair.homography)
    assert counts[True] < counts[False]
    assert shares[True] >= 0.3 and shares[True] >= 1.5 * shares[False]


def test_stream_switches_twice_without_empty_messages(shipped):
    """Textured, then four frames defocused at low contrast, then textured again: two
    switches with tracks restarted on each, and every frame (the transitions included) has
    matches, mostly correct."""
    sequence = make_sequence("coffee", num_frames=10, size=(640, 480), step=6)
    kinds = [None] * 3 + ["blur_low_contrast"] * 4 + [None] * 3
    stream = SequentialMatcher(shipped)
    published = replay(stream, degrade_frames(sequence.frames, kinds), sequence)
    textured, textureless = "aliked-n16+lightglue", "sift-clahe+nn"
    # Frame 3 (the first textureless one) is rescued by the textureless path before the switch
    # (LightGlue leaves it almost nothing); frame 7 (textured again) stays on it until the
    # switch has seen two textured frames.
    assert [p.path for p in published] == [textured] * 2 + [textureless] * 5 + [textured] * 2
    assert stream.switch.switches == 2
    assert [p.tracks_reset for p in published] == [True, False, True, False, False, False,
                                                   False, True, False]
    for p in published:
        t = p.frame
        assert len(p.result) >= 15, (t, len(p.result))
        assert p.precision >= (0.9 if kinds[t] == kinds[t - 1] else 0.6), t
    tracks = [set(p.result.track_ids.tolist()) for p in published]
    assert tracks[3] & tracks[4]  # tracks continue on the textureless path


def test_a_budgeted_stream_sizes_the_textureless_path_to_the_time_left(one_torch_thread):
    """Under a latency budget the textureless path extracts at the resolution that leaves the
    pair's match and refinement inside the frame's remaining time (LatencyBudget.path_side):
    frames whose time is already spent extract at min_image_side (half of these 640x480
    frames) and skip refinement, and their matches stay mostly right; without a budget, at
    full size. (Which side fits a partly spent frame depends on the machine's speed: see
    test_budget.)"""
    pipeline = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False)
    sequence = make_sequence("coffee", num_frames=7, size=(640, 480), step=6)
    frames = degrade_frames(sequence.frames, [None] * 2 + ["blur_low_contrast"] * 5)
    scales = {}
    for budget_ms in (0.0, 500.0):
        pipeline.update(latency_budget_ms=budget_ms)
        stream = SequentialMatcher(pipeline)
        served = []
        for t, frame in enumerate(frames):
            # Started long ago: no time is left for the textureless path.
            event = stream.push(frame, t, started_ms=pipeline.budget.clock() - 1e5)
            result = event.result
            if result is None or result.extractor != "sift-clahe":
                continue
            errors = reprojection_errors(sequence.relative(t - 1, t), result.keypoints0,
                                         result.keypoints1)
            assert len(errors) >= 15, (budget_ms, t)
            if t >= 3:  # both frames blurred (frame 2 is the transition)
                assert np.mean(errors < 3) >= 0.9, (budget_ms, t)
            assert (result.timings["refine_ms"] > 0) == (budget_ms == 0), (budget_ms, t)
            served.append(result.extraction_scale)
        assert len(served) >= 4, budget_ms
        scales[budget_ms] = set(served)
    assert scales == {0.0: {1.0}, 500.0: {0.5}}


def test_motion_blur_in_one_frame_goes_to_the_textureless_path(shipped):
    """Sharp, sharp, two motion-blurred frames (12-20 px streaks), sharp, sharp: on the two
    pairs of a sharp and a blurred frame LightGlue's keypoints sit towards the streaks' ends
    (with texture_blur_mismatch off, precision under 0.5 at full resolution; the coarse to
    fine refinement of motion-blurred frames lifts it over 0.7), so they are served by the
    textureless path, whose keypoints stay centred; the pair blurred alike stays on LightGlue.
    The texture switch itself never moves. A single pair does the same.
    The keypoint positions LightGlue's unpublished pair refined are not the next pair's
    reference: the pairs after a textureless-served one report the detector's keypoints."""
    sequence = make_sequence("chelsea", num_frames=6, size=(640, 480), step=6, seed=1)
    kinds = [None] * 2 + ["motion_blur"] * 2 + [None] * 2
    frames = degrade_frames(sequence.frames, kinds)
    results = {}

    def run() -> list[tuple[tuple[str, str], float, bool]]:
        stream = SequentialMatcher(shipped)
        served = []
        for p in replay(stream, frames, sequence):
            result = p.result
            assert len(result) >= 20 and len(result.track_ids) == len(result), p.frame
            served.append(((result.extractor, result.matcher), p.precision, p.tracks_reset))
            results[p.frame] = result
        assert stream.switch.switches == 0
        return served

    textured, textureless = ("aliked-n16", "lightglue"), ("sift-clahe", "nn")
    levels = shipped.params["refine_coarse_levels"]
    served = run()
    assert [path for path, _, _ in served] == [textured, textureless, textured, textureless,
                                               textured]
    assert [reset for _, _, reset in served] == [True] * 5  # every change of path restarts
    assert min(precision for _, precision, _ in served) >= 0.7, served
    for frame in (2, 4):  # served by the textureless path as the current frame
        detected = shipped.extract(frames[frame]).keypoints.numpy()
        after = results[frame + 1]
        np.testing.assert_array_equal(after.keypoints0, detected[after.indices0])
    try:
        shipped.update(texture_blur_mismatch=0.0)
        unchecked = run()
    finally:
        shipped.update(texture_blur_mismatch=1.4)
    assert [path for path, _, _ in unchecked] == [textured] * 5
    # LightGlue's matches on those pairs: refined coarse to fine (refine_keypoint_matches)
    # most land within 3 px, still fewer than the textureless path's ...
    assert 0.7 <= unchecked[1][1] < served[1][1] and 0.7 <= unchecked[3][1] < served[3][1], (
        served, unchecked)
    # ... and at full resolution only, fewer than half.
    try:
        shipped.update(texture_blur_mismatch=0.0, refine_coarse_levels=0)
        full_resolution = run()
    finally:
        shipped.update(texture_blur_mismatch=1.4, refine_coarse_levels=levels)
    assert full_resolution[1][1] < 0.5 and full_resolution[3][1] < 0.5, full_resolution

    pair = shipped.match(frames[1], frames[2])
    assert (pair.extractor, pair.matcher) == textureless
    errors = reprojection_errors(sequence.relative(1, 2), pair.keypoints0.astype(float),
                                 pair.keypoints1.astype(float))
    assert np.mean(errors < 3) >= 0.7


def test_frame_kinds_keep_geometry_for_sequences():
    frame = make_sequence("coffee", 1, size=(160, 120)).frames[0]
    assert [f is frame for f in degrade_frames([frame] * 3, [None, "fog", None])] == [
        True, False, True]
    with pytest.raises(ValueError, match="2 frames but 1 kinds"):
        degrade_frames([frame] * 2, ["fog"])
    for kind in FRAME_KINDS:
        out = degrade_frame(frame, kind, seed=0)
        assert out.shape == frame.shape and out.dtype == np.uint8
        assert np.array_equal(out, degrade_frame(frame, kind, seed=0))


# --- the fallback: XFeat + LighterGlue where the SIFT path finds almost nothing -------------
def corner_error(homography: np.ndarray, result, size: tuple[int, int]) -> float:
    """Mean corner error (px) of the MAGSAC++ homography of a result's matches; inf if none."""
    if len(result) < 4:
        return float("inf")
    estimate, _ = cv2.findHomography(result.keypoints0.astype(np.float64),
                                     result.keypoints1.astype(np.float64), cv2.USAC_MAGSAC, 3.0)
    if estimate is None:
        return float("inf")
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    return float(np.mean(reprojection_errors(homography, corners, cv2.perspectiveTransform(
        corners[None], estimate)[0])))


def test_fallback_serves_a_pair_the_textureless_path_leaves_thin(shipped):
    """A dark, noisy view of a smooth rocket body (a tuning pair): SIFT on the CLAHE image
    finds 10 matches and a wrong homography; the fallback's XFeat + LighterGlue finds
    hundreds (median error under 1 px after the coarse-to-fine alignment) and a usable homography. With
    texture_min_matches 0 the fallback is off. (The direct alignment, which competes on
    single pairs, is off here: this is the fallback's test.)"""
    pair = make_pair("rocket", "dark", seed=0, size=(640, 480))
    assert shipped.textureless_chain == (TEXTURELESS_SIFT, TEXTURELESS_XFEAT, TEXTURELESS_DIRECT)
    with overridden(shipped, textureless_direct=False):
        result = shipped.match(pair.image0, pair.image1)
    assert (result.extractor, result.matcher) == ("xfeat", "lighterglue")
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    assert len(result) >= 100 and np.median(errors) < 3 and np.mean(errors < 3) >= 0.6
    assert corner_error(pair.homography, result, (640, 480)) < 10
    with overridden(shipped, texture_min_matches=0, textureless_direct=False):
        alone = shipped.match(pair.image0, pair.image1)
    assert (alone.extractor, alone.matcher) == ("sift-clahe", "nn")
    assert len(alone) < 20 and corner_error(pair.homography, alone, (640, 480)) > 10


@pytest.mark.parametrize("spot", [False, True])
def test_the_fallback_does_not_pair_the_noise_of_a_blank_wall(shipped, spot):
    """Two frames of a blank wall hold nothing to match: LighterGlue paired their noise at
    confidences between 0.1 and 0.25 (30-37 random matches, published as a rich result);
    the fallback reports matches of 0.25 or more (FALLBACK_MIN_CONFIDENCE), so the frames
    stay below texture_min_matches. A user's higher filter_threshold still applies."""
    light = "spot" if spot else "flat"  # a vignetted wall, with a lamp's spot or not
    frame0, frame1 = blank_wall(1, light), blank_wall(2, light)
    fallback = shipped.match_pair_on(TEXTURELESS_XFEAT, frame0, frame1)
    assert len(fallback) < shipped.params["texture_min_matches"]
    assert np.all(fallback.scores >= FALLBACK_MIN_CONFIDENCE)
    assert len(shipped.match(frame0, frame1)) < shipped.params["texture_min_matches"]
    matcher = shipped.keypoint_paths[TEXTURELESS_XFEAT].matcher
    assert matcher.conf["filter_threshold"] == FALLBACK_MIN_CONFIDENCE
    with overridden(shipped, filter_threshold=0.5):
        assert matcher.conf["filter_threshold"] == 0.5
    assert matcher.conf["filter_threshold"] == FALLBACK_MIN_CONFIDENCE


@pytest.mark.parametrize("photo, path", [("rocket", TEXTURELESS_XFEAT),
                                         ("camera", TEXTURELESS_SIFT)])
def test_textureless_matches_are_aligned_coarse_to_fine(shipped, photo, path):
    """Dark, noisy tuning pairs: the textureless path's matches are aligned on two pyramid
    levels before full resolution (refine_coarse_levels 2). Measured, against full resolution
    alone (0), all matches kept: rocket, XFeat's 173 matches, median error 1.47 -> 0.64 px,
    within 1 px 28% -> 66%; camera, SIFT's 202, 0.61 -> 0.21 px, 73% -> 97%. With
    refine_outliers drop (the default) the matches it cannot place go: fewer, more of them
    right (rocket: 6 of XFeat's, precision 0.89 -> 0.91; camera: 1 of SIFT's, a wrong one).
    The direct alignment (its own alignment, not refined) is off here."""
    pair = make_pair(photo, "dark", seed=0, size=(640, 480))
    results = {}
    try:
        for levels, outliers in ((2, "keep"), (0, "keep"), (2, "drop")):
            shipped.update(refine_coarse_levels=levels, refine_outliers=outliers,
                           textureless_direct=False)
            results[levels, outliers] = shipped.match(pair.image0, pair.image1)
    finally:
        shipped.update(refine_coarse_levels=2, refine_outliers="drop", textureless_direct=True)
    for result in results.values():
        assert f"{result.extractor}+{result.matcher}" == path
    coarse, full, dropped = results[2, "keep"], results[0, "keep"], results[2, "drop"]
    assert np.array_equal(coarse.indices0, full.indices0)
    assert np.array_equal(coarse.indices1, full.indices1)

    def errors(result):
        return reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                   result.keypoints1.astype(float))

    assert np.median(errors(coarse)) < 0.8
    assert np.median(errors(coarse)) < 0.6 * np.median(errors(full))
    assert np.mean(errors(coarse) < 1) > 1.3 * np.mean(errors(full) < 1)
    assert coarse.refined.mean() > 0.85  # flagged where a level moved it
    # 'drop' removes matches, changes nothing else, and keeps the more precise ones.
    kept = {pair_: i for i, pair_ in enumerate(zip(coarse.indices0.tolist(),
                                                   coarse.indices1.tolist()))}
    rows = [kept[pair_] for pair_ in zip(dropped.indices0.tolist(), dropped.indices1.tolist())]
    assert np.array_equal(dropped.keypoints1, coarse.keypoints1[rows])
    assert 20 <= len(dropped) <= len(coarse) and dropped.found == len(coarse)
    assert len(dropped) < len(coarse)
    gone = np.ones(len(coarse), bool)
    gone[rows] = False
    assert np.mean(errors(coarse)[gone] < 3) < np.mean(errors(dropped) < 3)
    assert dropped.refined.all()


def test_stream_uses_the_fallback_only_where_the_textureless_path_is_thin(shipped, monkeypatch):
    """Textured, five defocused frames, textured: the switch changes twice; a frame goes to
    the fallback only when SIFT left it fewer than texture_min_matches matches, and its
    result then has more; every message has matches; tracks restart at every change of
    path, and only there."""
    calls: list[tuple[str, int]] = []
    match_on = shipped.match_on

    def spy(path, features0, features1):
        result = match_on(path, features0, features1)
        calls.append((path, len(result)))
        return result

    monkeypatch.setattr(shipped, "match_on", spy)
    sequence = make_sequence("coffee", num_frames=10, size=(640, 480), step=6)
    kinds = [None] * 3 + ["blur"] * 5 + [None] * 2
    frames = degrade_frames(sequence.frames, kinds)
    stream = SequentialMatcher(shipped)
    served, resets, previous_path = [], [], None
    for t, frame in enumerate(frames):
        del calls[:]
        event = stream.push(frame, t)
        if event.result is None:
            continue
        result = event.result
        path = f"{result.extractor}+{result.matcher}"
        served.append(path)
        resets.append(event.tracks_reset)
        assert event.tracks_reset == (path != previous_path), t
        previous_path = path
        assert len(result) >= 15, (t, path, len(result))
        errors = reprojection_errors(sequence.relative(t - 1, t),
                                     result.keypoints0.astype(float),
                                     result.keypoints1.astype(float))
        assert np.median(errors) < 3, (t, path)
        if path == TEXTURELESS_XFEAT:
            # SIFT first, thin; then the fallback, richer.
            assert [c[0] for c in calls] == [TEXTURELESS_SIFT, TEXTURELESS_XFEAT], t
            assert calls[0][1] < 20 < calls[1][1] and calls[1][1] == result.found, (t, calls)
        elif path == TEXTURELESS_SIFT:
            assert calls[-1] == (TEXTURELESS_SIFT, result.found) and len(result) >= 20, t
    assert stream.switch.switches == 2
    assert TEXTURELESS_XFEAT in served and TEXTURELESS_SIFT in served
    assert served[0] == served[-1] == "aliked-n16+lightglue"


def served_precision(pair, result) -> tuple[tuple[str, str], float]:
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    return (result.extractor, result.matcher), float(np.mean(errors < 3))


def test_ambiguous_nearest_neighbours_give_way_to_the_fallback(shipped, monkeypatch):
    """A repetitive tiled surface (held-out photo 'clock'): the texture measure calls it
    textureless, and SIFT's nearest neighbours pick the wrong periods (28 matches, 4 correct,
    homography off by 150 px). Its epipolar check removed more than half of them, so the
    result is ambiguous; XFeat + LighterGlue (context tells the periods apart) contradicts it
    and is published: 320 matches, all but one correct."""
    pair = make_pair("clock", "repetitive", seed=0, size=(640, 480))
    tried = []
    match_pair_on = shipped.match_pair_on

    def spy(path, image0, image1):
        result = match_pair_on(path, image0, image1)
        tried.append((path, result))
        return result

    monkeypatch.setattr(shipped, "match_pair_on", spy)
    path, precision = served_precision(pair, shipped.match(pair.image0, pair.image1))
    assert path == ("xfeat", "lighterglue") and precision >= 0.95
    # The direct alignment competes on single pairs, and refuses a repetitive surface.
    assert [p for p, _ in tried] == [TEXTURELESS_SIFT, TEXTURELESS_XFEAT, TEXTURELESS_DIRECT]
    assert len(tried[2][1]) == 0
    sift = tried[0][1]
    assert sift.found >= 20 and sift.epipolar_dropped > sift.found  # rich but ambiguous
    assert shipped.ambiguous(sift, TEXTURELESS_SIFT)
    assert served_precision(pair, sift)[1] < 0.5
    assert shipped.contradicts(tried[1][1], sift)

    # In a stream the same pair is in the textureless state (two low frames switched it).
    stream = SequentialMatcher(shipped)
    stream.push(pair.image0, 0)
    event = stream.push(pair.image1, 1)
    assert stream.current_matcher == TEXTURELESS_SIFT  # the switch is textureless ...
    path, precision = served_precision(pair, event.result)  # ... the fallback's matches win
    assert path == ("xfeat", "lighterglue") and precision >= 0.95
    assert event.tracks_reset and len(event.result.track_ids) == len(event.result)


def test_a_period_shift_along_the_epipolar_lines_is_caught_by_the_homography(shipped):
    """Consecutive frames of a camera moving along the rows of a tiled, low-contrast floor:
    SIFT's matches one period (165 px) off lie on the epipolar lines of XFeat's correct
    matches, but off their homography, so the fallback's result is published (measured:
    SIFT's 45 matches 20% right, XFeat's 288 81%; a few of XFeat's are period shifts too)."""
    sequence = make_sequence(repetitive_scene("gravel"), 5, seed=1)
    image0, image1 = (degrade_frame(sequence.frames[t], "low_contrast", seed=t) for t in (2, 3))
    sift = shipped.match_pair_on(TEXTURELESS_SIFT, image0, image1)
    xfeat = shipped.match_pair_on(TEXTURELESS_XFEAT, image0, image1)
    assert shipped.ambiguous(sift, TEXTURELESS_SIFT)
    reference = (xfeat.keypoints0, xfeat.keypoints1, sift.keypoints0, sift.keypoints1)
    assert epipolar_agreement(*reference) > 0.9 > 0.5 > geometric_agreement(*reference)
    result = shipped.match(image0, image1)

    def precision(matches: MatchResult) -> float:
        return float(np.mean(reprojection_errors(
            sequence.relative(2, 3), matches.keypoints0.astype(float),
            matches.keypoints1.astype(float)) < 3))

    assert (result.extractor, result.matcher) == ("xfeat", "lighterglue")
    assert precision(sift) < 0.3 and precision(result) >= 0.75


def test_lightglue_overrules_a_nearest_neighbour_result_it_contradicts(one_torch_thread):
    """Without the fallback the same tiled pair stays on SIFT's wrong periods, unless
    LightGlue, run on the same keypoints, finds correct matches that contradict them
    (textureless_verify): then LightGlue's are published."""
    pair = make_pair("clock", "repetitive", seed=0, size=(640, 480))
    pipeline = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False,
                                  textureless_fallback="none")
    path, precision = served_precision(pair, pipeline.match(pair.image0, pair.image1))
    assert path == ("aliked-n16", "lightglue") and precision >= 0.95
    pipeline.update(textureless_verify=False)
    unchecked, unchecked_precision = served_precision(
        pair, pipeline.match(pair.image0, pair.image1))
    assert unchecked == ("sift-clahe", "nn") and unchecked_precision < 0.5

    pipeline.update(textureless_verify=True)
    stream = SequentialMatcher(pipeline)
    stream.push(pair.image0, 0)
    event = stream.push(pair.image1, 1)
    assert stream.current_matcher == TEXTURELESS_SIFT
    path, precision = served_precision(pair, event.result)
    assert path == ("aliked-n16", "lightglue") and precision >= 0.95
    assert event.tracks_reset and len(event.result.track_ids) == len(event.result)


def view_result(k0: np.ndarray, k1: np.ndarray, dropped: int = 0) -> MatchResult:
    """A result of matches (k0, k1) whose epipolar check removed `dropped` others."""
    n = len(k0)
    return MatchResult(
        keypoints0=k0.astype(np.float32), keypoints1=k1.astype(np.float32),
        scores=np.ones(n, np.float32), indices0=np.arange(n), indices1=np.arange(n),
        num_keypoints0=n, num_keypoints1=n, image_size0=(640, 480), image_size1=(640, 480),
        exit_layer=0, num_layers=0, exit_reason=0, kept0=n, kept1=n,
        timings={"preprocess_ms": 0.0, "extract_ms": 0.0, "match_ms": 0.0, "total_ms": 0.0},
        extractor="test", matcher="test", epipolar_dropped=dropped)


def test_chain_checks_an_ambiguous_result_with_the_next_path(shipped):
    """Pipeline.richest on results of known geometry: a nearest-neighbour result whose
    epipolar check removed over 30% of its matches is checked by the fallback, and
    replaced only where the fallback is rich and contradicts it; an unambiguous result, or
    an ambiguous one of a path with context, ends the chain."""
    k0, k1 = two_views(np.random.default_rng(3), 200)
    angle = np.random.default_rng(4).uniform(0, 2 * np.pi, 200)
    shifted = k1 + 80 * np.c_[np.cos(angle), np.sin(angle)]  # wrong 'periods'
    right = view_result(k0[:150], k1[:150])
    mostly_wrong = view_result(k0[:60], np.r_[k1[:20], shifted[20:60]], dropped=40)
    chain = (TEXTURELESS_SIFT, TEXTURELESS_XFEAT)

    def run(first, fallback, chain=chain, richer=True):
        calls = []
        results = {chain[0]: first, TEXTURELESS_XFEAT: fallback}

        def match(path):
            calls.append(path)
            return results[path]
        best, served = shipped.richest(None, chain, match, richer)
        return best, served, calls

    assert shipped.ambiguous(mostly_wrong, TEXTURELESS_SIFT)
    assert not shipped.ambiguous(mostly_wrong, TEXTURELESS_XFEAT)  # context: not ambiguous
    assert run(mostly_wrong, right) == (right, TEXTURELESS_XFEAT, list(chain))
    # The fallback agrees: the preferred path's (more precise) result stays.
    right_ambiguous = view_result(k0[50:110], k1[50:110], dropped=40)
    assert run(right_ambiguous, right) == (right_ambiguous, TEXTURELESS_SIFT, list(chain))
    # A thin fallback cannot overrule it, however it disagrees.
    thin = view_result(k0[:10], shifted[:10])
    assert run(mostly_wrong, thin) == (mostly_wrong, TEXTURELESS_SIFT, list(chain))
    # Unambiguous (a fifth removed): the fallback is not tried for that (a stream, which
    # does not look for richer results); as a single pair its 60 matches are sparse, so the
    # fallback is tried, but 150 matches are not 3x as many: it stays.
    kept_most = view_result(k0[:60], np.r_[k1[:20], shifted[20:60]], dropped=15)
    assert run(kept_most, right, richer=False) == (kept_most, TEXTURELESS_SIFT,
                                                   [TEXTURELESS_SIFT])
    assert run(kept_most, right) == (kept_most, TEXTURELESS_SIFT, list(chain))
    # A thin preferred result still goes to the richer fallback, as before.
    assert run(thin, right)[:2] == (right, TEXTURELESS_XFEAT)
    # LightGlue's check only judges nearest neighbours' results.
    keypoint = view_result(k0[100:160], k1[100:160])
    assert shipped.keypoint_result_wins(keypoint, mostly_wrong, TEXTURELESS_SIFT)
    assert not shipped.keypoint_result_wins(keypoint, mostly_wrong, TEXTURELESS_XFEAT)
    assert not shipped.keypoint_result_wins(keypoint, right, TEXTURELESS_SIFT)


def test_a_sparse_result_gives_way_to_a_richer_one_that_agrees(shipped):
    """Pipeline.richest, single pairs (textureless_richer 3): a nearest-neighbour result with
    fewer than 4 x texture_min_matches matches is sparse; the fallback's replaces it when it
    has 3x as many matches and 75% of the sparse result's agree with its geometry, not when
    they disagree, nor when it is richer by less, nor with textureless_richer 0 or in a
    stream (richer=False). A rich result (80 matches or more) ends the chain."""
    k0, k1 = two_views(np.random.default_rng(5), 400)
    angle = np.random.default_rng(6).uniform(0, 2 * np.pi, 400)
    shifted = k1 + 80 * np.c_[np.cos(angle), np.sin(angle)]
    sparse = view_result(k0[:30], k1[:30])
    rich_fallback = view_result(k0[100:250], k1[100:250])
    wrong_fallback = view_result(k0[100:250], shifted[100:250])
    chain = (TEXTURELESS_SIFT, TEXTURELESS_XFEAT)

    def run(first, fallback, richer=True):
        calls = []

        def match(path):
            calls.append(path)
            return {TEXTURELESS_SIFT: first, TEXTURELESS_XFEAT: fallback}[path]
        best, served = shipped.richest(None, chain, match, richer)
        return best, served, calls

    assert shipped.sparse(sparse, TEXTURELESS_SIFT)
    assert not shipped.sparse(sparse, TEXTURELESS_XFEAT)  # only nearest neighbours' results
    assert run(sparse, rich_fallback) == (rich_fallback, TEXTURELESS_XFEAT, list(chain))
    assert run(sparse, wrong_fallback)[:2] == (sparse, TEXTURELESS_SIFT)
    assert run(sparse, view_result(k0[100:180], k1[100:180]))[:2] == (sparse, TEXTURELESS_SIFT)
    assert run(sparse, rich_fallback, richer=False) == (sparse, TEXTURELESS_SIFT,
                                                        [TEXTURELESS_SIFT])
    rich = view_result(k0[:80], k1[:80])
    assert run(rich, rich_fallback) == (rich, TEXTURELESS_SIFT, [TEXTURELESS_SIFT])
    with overridden(shipped, textureless_richer=0.0):
        assert run(sparse, rich_fallback) == (sparse, TEXTURELESS_SIFT, [TEXTURELESS_SIFT])


def test_richer_fallback_on_a_blurred_pair(shipped):
    """A blurred low-contrast retina (a smooth-set pair): SIFT keeps 24 matches, right but
    all on a few blobs, and its homography is 4.3 px off at the corners; XFeat's 177 agree
    with them and give one within 1 px, so the single pair publishes XFeat's. (The direct
    alignment, which competes on single pairs, is off here: this is the fallback's test.)"""
    pair = make_pair("retina", "blur_low_contrast", seed=0, size=(640, 480))
    with overridden(shipped, textureless_direct=False):
        shipped_result = shipped.match(pair.image0, pair.image1)
    with overridden(shipped, textureless_richer=0.0, textureless_direct=False):
        sift = shipped.match(pair.image0, pair.image1)
    assert (sift.extractor, shipped_result.extractor) == ("sift-clahe", "xfeat")
    assert len(shipped_result) >= 3 * len(sift)
    size = (640, 480)
    assert corner_error(pair.homography, shipped_result, size) < 1.0
    assert corner_error(pair.homography, sift, size) > 2 * corner_error(
        pair.homography, shipped_result, size)


def test_textureless_verify_keeps_a_textureless_result_lightglue_supports(shipped, monkeypatch):
    """On a pair where both are right (a defocused view of a textured photo), the check runs
    and SIFT's richer result stays."""
    calls = []
    wins = shipped.keypoint_result_wins

    def spy(keypoint, textureless, path):
        calls.append((len(keypoint), len(textureless), path))
        return wins(keypoint, textureless, path)

    monkeypatch.setattr(shipped, "keypoint_result_wins", spy)
    pair = make_pair("motorcycle", "fog", seed=0, size=(640, 480))
    result = shipped.match(pair.image0, pair.image1)
    assert (result.extractor, result.matcher) == ("sift-clahe", "nn")
    assert len(calls) == 1 and calls[0][0] >= 20 and calls[0][1] == len(result)
    assert calls[0][2] == TEXTURELESS_SIFT


def test_fallback_off_by_parameter_or_missing_files(monkeypatch):
    from match_node import params as P
    from match_node.engine import weights
    with pytest.raises(P.ParameterError, match="textureless_fallback"):
        P.validate({"textureless_fallback": "disk"})
    off = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False,
                             textureless_fallback="none")
    assert off.textureless_chain == (TEXTURELESS_SIFT, TEXTURELESS_DIRECT)
    assert "textureless_fallback is 'none'" in off.textureless_note
    resolve = weights.resolve

    def without_xfeat(checkpoint, *args, **kwargs):
        if checkpoint.key.startswith("xfeat"):
            raise weights.WeightsNotFoundError(f"no {checkpoint.key} here")
        return resolve(checkpoint, *args, **kwargs)

    monkeypatch.setattr(weights, "resolve", without_xfeat)
    missing = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False)
    assert missing.textureless_chain == (TEXTURELESS_SIFT, TEXTURELESS_DIRECT)
    assert "its files were not found" in missing.textureless_note
    assert list(missing.keypoint_paths) == [TEXTURELESS_SIFT, TEXTURELESS_DIRECT]
