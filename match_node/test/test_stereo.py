"""Stereo pairing and left-right matching, with the Middlebury Motorcycle ground truth."""
import numpy as np
import pytest

from match_node.engine.stereo import StereoMatcher, StereoSynchronizer, epipolar_mask


def test_exact_pairs_and_unpaired_drops():
    sync = StereoSynchronizer(slop_ns=0)
    assert sync.add_left(100, "L100") is None
    assert sync.add_right(100, "R100") == (100, "L100", "R100")
    assert sync.add_right(200, "R200") is None       # its left never comes
    assert sync.add_left(300, "L300") is None
    assert sync.add_right(300, "R300") == (300, "L300", "R300")
    assert sync.stats.unpaired_right == 1            # R200 dropped when 300 paired
    assert sync.add_left(250, "late") is None        # older than the last pair
    assert sync.stats.unpaired_left == 1 and sync.stats.paired == 2


def test_approximate_pairs_never_take_the_wrong_partner():
    rng = np.random.default_rng(0)
    sync = StereoSynchronizer(slop_ns=2_000_000)      # 2 ms
    pairs = []
    for frame in range(50):
        stamp = frame * 33_000_000
        jitter = int(rng.integers(-1_500_000, 1_500_000))
        events = [("L", stamp), ("R", stamp + jitter)]
        if rng.random() < 0.5:
            events.reverse()
        if frame % 7 == 3:
            events = events[:1]                       # one side lost on the way
        for side, s in events:
            out = (sync.add_left if side == "L" else sync.add_right)(s, (side, frame))
            if out:
                pairs.append(out)
    assert all(left[1] == right[1] for _, left, right in pairs)
    assert sync.stats.paired == len(pairs) >= 40
    assert sync.stats.unpaired_left + sync.stats.unpaired_right >= 6


def test_epipolar_mask():
    left = np.array([[100.0, 50.0], [100.0, 50.0], [100.0, 50.0]])
    right = np.array([[80.0, 50.5], [80.0, 54.0], [120.0, 50.0]])
    assert epipolar_mask(left, right, 1.0).tolist() == [True, False, False]


@pytest.fixture(scope="module")
def motorcycle():
    from skimage.data import stereo_motorcycle
    left, right, disparity = stereo_motorcycle()
    return np.ascontiguousarray(left), np.ascontiguousarray(right), disparity


def stereo_errors(result, disparity: np.ndarray) -> np.ndarray:
    """|estimated - true disparity| of each match with a valid ground truth, against the best
    of the 3x3 pixels around the left keypoint: keypoints sit on edges, where rounding to one
    pixel can pick the other side of a depth discontinuity."""
    estimated = result.keypoints0[:, 0] - result.keypoints1[:, 0]
    x, y = np.round(result.keypoints0).astype(int).T
    h, w = disparity.shape
    errors = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            truth = disparity[np.clip(y + dy, 0, h - 1), np.clip(x + dx, 0, w - 1)]
            errors.append(np.where(np.isfinite(truth), np.abs(estimated - truth), np.inf))
    best = np.min(errors, axis=0)
    return best[np.isfinite(best)]


def test_middlebury_stereo_precision(pipeline, motorcycle):
    left, right, disparity = motorcycle
    unfiltered = StereoMatcher(pipeline).push(left, right, 1).stereo
    filtered = StereoMatcher(pipeline, epipolar_tolerance_px=2.0).push(left, right, 1).stereo
    errors_all, errors = stereo_errors(unfiltered, disparity), stereo_errors(filtered, disparity)
    # Measured: 93% within 2 px with the filter, 92% without (the rest: occlusions and
    # repeated structure).
    assert len(errors) > 200
    assert (errors < 2.0).mean() > 0.9
    assert (errors < 2.0).mean() >= (errors_all < 2.0).mean()
    assert np.all(np.abs(filtered.keypoints0[:, 1] - filtered.keypoints1[:, 1]) <= 2.0)


def test_stereo_ids_continue_as_temporal_tracks(pipeline, motorcycle):
    left, right, _ = motorcycle
    matcher = StereoMatcher(pipeline)
    first = matcher.push(left, right, 1)
    assert first.temporal.result is None and first.temporal.restarted
    stereo_ids = dict(zip(first.stereo.indices0.tolist(), first.stereo.track_ids.tolist()))
    assert len(set(stereo_ids.values())) == len(stereo_ids)
    shifted_left = np.ascontiguousarray(np.roll(left, 2, axis=1))
    second = matcher.push(shifted_left, np.ascontiguousarray(np.roll(right, 2, axis=1)), 2)
    temporal = second.temporal.result
    inherited = [stereo_ids[r] == t for r, t in zip(temporal.indices0.tolist(),
                                                     temporal.track_ids.tolist()) if r in stereo_ids]
    assert len(inherited) > 100 and all(inherited)
    # And this pair's stereo matches carry the temporal ids of their left keypoints.
    temporal_ids = dict(zip(temporal.indices1.tolist(), temporal.track_ids.tolist()))
    same = [temporal_ids[i] == t for i, t in zip(second.stereo.indices0.tolist(),
                                                 second.stereo.track_ids.tolist()) if i in temporal_ids]
    assert len(same) > 100 and all(same)


def test_size_mismatch_is_an_image_error_and_leaves_the_stream_alone(pipeline, motorcycle):
    from match_node.engine.image import ImageError

    left, right, _ = motorcycle
    matcher = StereoMatcher(pipeline)
    with pytest.raises(ImageError, match="differ in size; dropped"):
        matcher.push(left, np.ascontiguousarray(right[:-8]), 1)
    assert matcher.stream.frame_index == -1 and matcher.stream.previous is None


def test_another_view_needs_a_current_frame_and_is_refined_like_the_stream(pipeline, motorcycle):
    from match_node.engine.stream import SequentialMatcher

    left, right, _ = motorcycle
    stream = SequentialMatcher(pipeline)
    with pytest.raises(RuntimeError, match="push one first"):
        stream.match_view(right, 0.0)
    stream.push(left, 1)
    result = stream.match_view(right, pipeline.budget.clock())
    assert result.track_ids.size == 0  # ids come from track_view, after any filter
    assert pipeline.refining and result.refined.shape == (len(result),)
    assert result.refined.mean() > 0.5  # the stream's refinement step, shared
    stream.track_view(result)
    assert len(set(result.track_ids.tolist())) == len(result) > 200
