"""The direct path (engine/direct.py): matcher 'auto''s last textureless path, for smooth
surfaces where every keypoint path is left thin (in streams), and a competitor on single
low-texture pairs. Real photographs of scikit-image, exact homographies."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from match_node import Pipeline, SequentialMatcher
from match_node.engine import direct
from match_node.engine.refine import to_gray
from match_node.engine.texture import TEXTURELESS_DIRECT, TEXTURELESS_SIFT, TEXTURELESS_XFEAT
from match_node.groundtruth.lowtexture import _as_rgb, blank_wall, make_pair
from match_node.groundtruth.planar import load_photo, make_sequence, replay, reprojection_errors
from test_lowtexture import corner_error

CONFIG = Path(__file__).resolve().parents[1] / "config" / "match_node.yaml"


@pytest.fixture(scope="module")
def shipped(one_torch_thread):
    return Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False)


def _frame(image: np.ndarray) -> direct.DirectFrame:
    return direct.prepare(to_gray(image), 4.0, direct.MAX_CORNERS)


def test_a_smooth_closeup_every_keypoint_path_leaves_thin_is_aligned_directly(shipped):
    """cell/closeup/1 of bench/lowtexture.py's smooth set (a close-up of a smooth blob): SIFT
    finds 8 matches (3 right), XFeat 1, and the pair failed (homography 55 px off at the
    corners). The direct path places 364 corners, 97% within 3 px, homography 0.4 px off.
    With textureless_direct off the pair is as thin as before."""
    pair = make_pair("cell", "closeup", seed=1, size=(640, 480))
    result = shipped.match(pair.image0, pair.image1)
    assert (result.extractor, result.matcher) == ("shi-tomasi", "direct")
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    assert len(result) >= 200 and np.mean(errors < 3) >= 0.9 and np.median(errors) < 1
    assert corner_error(pair.homography, result, (640, 480)) < 2
    assert np.all((result.scores > 0) & (result.scores <= 1)) and np.all(result.refined == 1)
    assert np.array_equal(result.indices1, np.arange(len(result)))
    for path in (TEXTURELESS_SIFT, TEXTURELESS_XFEAT):
        assert len(shipped.match_pair_on(path, pair.image0, pair.image1)) < 20
    shipped.update(textureless_direct=False)
    try:
        alone = shipped.match(pair.image0, pair.image1)
    finally:
        shipped.update(textureless_direct=True)
    assert f"{alone.extractor}+{alone.matcher}" != TEXTURELESS_DIRECT
    assert len(alone) < 20 and corner_error(pair.homography, alone, (640, 480)) > 10


def test_a_single_pair_gets_the_direct_result_where_it_has_as_many_matches(shipped):
    """On a single low-texture pair the direct alignment runs too and its result is kept where
    it has at least as many matches as the chain's (moon/closeup/1: SIFT-CLAHE 116 matches,
    the direct path 387, all within 3 px)."""
    pair = make_pair("moon", "closeup", seed=1, size=(640, 480))
    sift = shipped.match_pair_on(TEXTURELESS_SIFT, pair.image0, pair.image1)
    result = shipped.match(pair.image0, pair.image1)
    assert f"{result.extractor}+{result.matcher}" == TEXTURELESS_DIRECT
    assert len(result) >= len(sift) >= 80
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    assert np.mean(errors < 3) >= 0.95
    assert corner_error(pair.homography, result, (640, 480)) < 1


def test_a_stream_tries_the_direct_path_only_on_frames_left_thin(shipped, monkeypatch):
    """In a stream a change of path restarts the tracks, so a frame SIFT-CLAHE matches richly
    never reaches the direct path: it is the last resort there."""
    calls = []
    match_on = shipped.match_on
    monkeypatch.setattr(shipped, "match_on",
                        lambda path, *a, **k: calls.append(path) or match_on(path, *a, **k))
    pair = make_pair("moon", "closeup", seed=1, size=(640, 480))
    stream = SequentialMatcher(shipped)
    stream.push(pair.image0, 0)
    result = stream.push(pair.image1, 1).result
    assert f"{result.extractor}+{result.matcher}" == TEXTURELESS_SIFT and len(result) >= 80
    assert TEXTURELESS_SIFT in calls and TEXTURELESS_DIRECT not in calls


def test_quadratic_shading_is_removed_before_alignment():
    """Vignetting, lens shading and lighting gradients are fixed to the camera: a direct
    alignment would lock onto them (no motion). The high-pass turns any quadratic field into
    a constant away from the borders (sigma^2 / 2 times its Laplacian), which the alignments
    ignore: ECC and the patch alignment both compare zero-mean intensities."""
    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    shading = 0.6 - 0.2 * (((x - 160) / 160) ** 2 + ((y - 120) / 120) ** 2) + 0.0005 * x
    frame = direct.prepare(shading, 0.0, 100)
    inner = frame.image[direct.BORDER * 2:-direct.BORDER * 2, direct.BORDER * 2:-direct.BORDER * 2]
    assert np.ptp(inner) < 1e-4 and np.ptp(frame.image) > 1e-3  # the borders are not (BORDER)
    expected = -direct.HIGHPASS_SIGMA ** 2 / 2 * -0.2 * (2 / 160 ** 2 + 2 / 120 ** 2)
    assert inner.mean() == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("shift, noise", [(0.0, 1.0), (25.0, 1.0), (0.0, 4.0)])
def test_a_blank_wall_gets_no_direct_match(shipped, shift, noise):
    """Two frames of a blank wall hold nothing but noise once the shading is removed: the
    alignment does not correlate (measured 0.05-0.18 against MIN_CORRELATION 0.7), so the
    direct path refuses the pair instead of publishing the noise's alignment."""
    # A vignetted wall, its faint lighting gradient moving with it.
    frame0 = blank_wall(1, "gradient", 0.0, noise, slope=0.05)
    frame1 = blank_wall(2, "gradient", shift, noise, slope=0.05)
    found = direct.match(_frame(frame0), _frame(frame1))
    assert len(found.indices0) == 0 and found.refused is not None
    assert len(shipped.match_pair_on(TEXTURELESS_DIRECT, frame0, frame1)) == 0
    assert len(shipped.match(frame0, frame1)) < shipped.params["texture_min_matches"]


@pytest.mark.parametrize("shift, noise", [(0.0, 0.5), (25.0, 0.5), (25.0, 1.0)])
def test_a_lamps_spot_on_a_blank_wall_is_an_ambiguous_alignment(shift, noise):
    """A round spot is all the wall shows: it correlates (0.97-0.99) as well rolled about
    its centre as not, and the roll moves every point away from it (47% of the matches were
    over 3 px off before the check). Started 2 degrees rolled either way the alignment ends
    elsewhere as well correlated, so the pair is refused."""
    frame0 = _frame(blank_wall(1, "spot", 0.0, noise))
    frame1 = _frame(blank_wall(2, "spot", shift, noise))
    homography, correlation = direct.global_homography(frame0.image, frame1.image)
    assert homography is not None and correlation > direct.MIN_CORRELATION
    assert not direct.unique(frame0.image, frame1.image, homography, correlation)
    found = direct.match(frame0, frame1)
    assert found.refused == "an ambiguous alignment" and len(found.indices0) == 0
    # A real smooth close-up is unique.
    pair = make_pair("cell", "closeup", seed=1, size=(640, 480))
    frame0, frame1 = _frame(pair.image0), _frame(pair.image1)
    homography, correlation = direct.global_homography(frame0.image, frame1.image)
    assert direct.unique(frame0.image, frame1.image, homography, correlation)


@pytest.mark.parametrize("photo", ["cell", "chelsea"])
def test_a_repetitive_surface_is_refused(photo):
    """On a tiled surface the alignment locks onto a period shift as confidently as onto the
    right one (bench/lowtexture.py's repetitive pairs: correlation 0.99, homographies 150-380
    px off), so a frame that repeats itself gets no direct match; the close-ups and blurred
    frames of the same photographs are not refused."""
    tiled = make_pair(photo, "repetitive", seed=0, size=(640, 480))
    frame0 = _frame(tiled.image0)
    assert direct.periodicity(frame0.image) > direct.PERIODIC_LIMIT
    found = direct.match(frame0, _frame(tiled.image1))
    assert found.refused == "a repetitive surface" and len(found.indices0) == 0
    for kind in ("closeup", "blur"):
        smooth = make_pair(photo, kind, seed=0, size=(640, 480))
        assert direct.periodicity(_frame(smooth.image0).image) < direct.PERIODIC_LIMIT


@pytest.mark.parametrize("size", [(24, 18), (70, 50), (1, 1)])
def test_tiny_frames_give_no_match_and_no_error(shipped, size):
    rng = np.random.default_rng(0)
    image0 = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image1 = np.roll(image0, 1, axis=1)
    result = shipped.match_pair_on(TEXTURELESS_DIRECT, image0, image1)
    assert len(result) == 0 and result.num_keypoints0 == 0


def _smooth_closeup_sequence(num_frames: int):
    """A camera path over a 10x close-up of the cell photograph, blurred: shading and soft
    edges only (320x240)."""
    cell = _as_rgb(load_photo("cell"))
    h, w = cell.shape[:2]
    crop = cell[h // 4:h // 4 + 70, w // 4:w // 4 + 90]
    photo = cv2.GaussianBlur(cv2.resize(crop, None, fx=10, fy=10, interpolation=cv2.INTER_CUBIC),
                             (0, 0), 6)
    return make_sequence(photo, num_frames=num_frames, size=(320, 240), step=6, seed=0)


def test_a_stream_on_the_direct_path_keeps_its_tracks(one_torch_thread):
    """A smooth close-up stream that SIFT leaves thin (with textureless_fallback none, so
    that nothing else serves it): every pair is aligned directly, right to a fraction of a
    pixel, and as a tracker does, the points placed in a frame are the ones tracked on from
    it: each pair's reference points are exactly the previous pair's current ones, with the
    same track ids, and the tracks restart once (at the first frame)."""
    pipeline = Pipeline.from_yaml(CONFIG, device="cpu", allow_download=False,
                                  textureless_fallback="none")
    sequence = _smooth_closeup_sequence(4)
    published = replay(SequentialMatcher(pipeline), sequence.frames, sequence)
    assert len(published) == 3
    assert [m.path for m in published] == [TEXTURELESS_DIRECT] * 3
    assert [m.tracks_reset for m in published] == [True, False, False]
    for message in published:
        assert len(message.result) >= 50 and message.precision >= 0.95
        assert np.median(message.errors) < 0.5
    for before, after in zip(published, published[1:]):
        previous = {int(t): point for t, point in zip(before.result.track_ids,
                                                      before.result.keypoints1)}
        continued = [(previous[int(t)], point) for t, point in zip(after.result.track_ids,
                                                                    after.result.keypoints0)
                     if int(t) in previous]
        assert len(continued) >= 0.8 * len(after.result)
        assert all(np.array_equal(a, b) for a, b in continued)


def test_a_smaller_working_size_and_a_size_change_between_frames(shipped):
    """Under a latency budget a textureless path's frames are prepared at a smaller size
    (Pipeline.path_side), and two frames of a pair may differ (the budget moved in between):
    the matches are still in original pixels, and right."""
    pair = make_pair("cell", "closeup", seed=1, size=(640, 480))
    features0 = shipped.extract_on(TEXTURELESS_DIRECT, pair.image0, side=480)
    features1 = shipped.extract_on(TEXTURELESS_DIRECT, pair.image1, side=400)
    assert features0.working_size == (480, 360) and features1.working_size == (400, 300)
    result = shipped.match_on(TEXTURELESS_DIRECT, features0, features1)
    errors = reprojection_errors(pair.homography, result.keypoints0.astype(float),
                                 result.keypoints1.astype(float))
    assert len(result) >= 100 and np.mean(errors < 3) >= 0.9 and np.median(errors) < 1.5
    assert corner_error(pair.homography, result, (640, 480)) < 3
    # Frame 1's keypoints are now the points placed in it, in original pixels.
    assert np.allclose(features1.keypoints.numpy()[:len(result)], result.keypoints1)
