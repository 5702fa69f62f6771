"""The pipeline on real photographs with exact ground truth."""
import numpy as np
import pytest

from match_node import ParameterError, Pipeline, SequentialMatcher
from match_node.messages import EXIT_NO_KEYPOINTS
from match_node.groundtruth.planar import make_sequence, reprojection_errors




def test_match_pair_is_precise(pipeline, coffee_pair):
    image0, image1, homography = coffee_pair
    result = pipeline.match(image0, image1)
    errors = reprojection_errors(homography, result.keypoints0, result.keypoints1)
    assert len(result) > 200
    assert (errors < 3).mean() > 0.95
    assert np.median(errors) < 1.0
    assert result.scores.min() > pipeline.params["filter_threshold"]
    assert 1 <= result.exit_layer <= result.num_layers == 9
    assert set(result.timings) == {"preprocess_ms", "extract_ms", "match_ms", "refine_ms",
                                   "total_ms"}
    assert result.refined.shape == (len(result),) and result.refined.mean() > 0.5
    # Indices point at the keypoints reported.
    assert np.all(result.indices0 < result.num_keypoints0)


def test_resized_extraction_reports_original_pixels(coffee_pair):
    image0, image1, homography = coffee_pair
    small = Pipeline(device="cpu", max_keypoints=512, max_image_side=300, allow_download=False)
    result = small.match(image0, image1)
    errors = reprojection_errors(homography, result.keypoints0, result.keypoints1)
    assert len(result) > 100
    assert (errors < 4).mean() > 0.9
    assert result.keypoints0[:, 0].max() > 400  # original 600 px wide, not 300
    assert result.image_size0 == (600, 400)


def test_runtime_update(pipeline, coffee_pair):
    image0, image1, _ = coffee_pair
    pipeline.update(max_keypoints=128, depth_confidence=0)
    try:
        result = pipeline.match(image0, image1)
        assert result.num_keypoints0 <= 128 and result.exit_layer == 9
    finally:
        pipeline.update(max_keypoints=512, depth_confidence=0.95)
    with pytest.raises(ParameterError, match="cannot change at run time"):
        pipeline.update(extractor="aliked-n32")


def test_sequence_tracks_persist(pipeline):
    sequence = make_sequence("coffee", num_frames=4, size=(320, 240), step=4)
    stream = SequentialMatcher(pipeline)
    first = stream.push(sequence.frames[0], 0)
    assert first.result is None and first.restarted
    tracks = []
    for t in range(1, 4):
        event = stream.push(sequence.frames[t], t * 100)
        result = event.result
        assert event.reference_stamp == (t - 1) * 100
        assert event.tracks_reset == (t == 1)
        errors = reprojection_errors(sequence.relative(t - 1, t), result.keypoints0,
                                     result.keypoints1)
        assert (errors < 3).mean() > 0.95
        assert len(np.unique(result.track_ids)) == len(result)
        assert result.track_ids.min() >= 1
        tracks.append(dict(zip(result.indices1.tolist(), result.track_ids.tolist())))
        if t >= 2:
            # A match whose reference keypoint was matched before inherits its id.
            previous = tracks[-2]
            inherited = [previous[i] == tid for i, tid in zip(result.indices0.tolist(),
                                                              result.track_ids.tolist())
                         if i in previous]
            assert len(inherited) > 50 and all(inherited)


def test_stamps_backwards_policies(pipeline, coffee_pair):
    image0, image1, _ = coffee_pair
    small0, small1 = image0[:200, :300], image1[:200, :300]
    drop = SequentialMatcher(pipeline, on_stamp_backwards="drop")
    drop.push(small0, 100)
    event = drop.push(small1, 100)
    assert event.dropped and "not newer" in event.note
    assert drop.push(small1, 200).result is not None  # still matched to the frame at 100

    reset = SequentialMatcher(pipeline, on_stamp_backwards="reset")
    reset.push(small0, 100)
    event = reset.push(small1, 50)
    assert event.restarted and event.result is None
    assert reset.push(small0, 60).tracks_reset


SECOND = 1_000_000_000
NOW = 1_700_000_000 * SECOND       # 2023
YEAR_2038 = (2**31 - 1) * SECOND   # a bogus stamp from a broken clock


def test_far_future_stamp_does_not_drop_every_later_frame(pipeline, coffee_pair):
    """Issue 11.5: with 'drop', one stamp in 2038 made every later real frame look old."""
    image0, image1, _ = coffee_pair
    frames = [image0[:200, :300], image1[:200, :300]]
    stream = SequentialMatcher(pipeline, on_stamp_backwards="drop")
    assert stream.max_stamp_jump_s == 10.0  # the parameter's default, from the pipeline
    events = [stream.push(frames[t % 2], stamp) for t, stamp in enumerate(
        [NOW, NOW + SECOND // 10, YEAR_2038, NOW + 2 * SECOND // 10, NOW + 3 * SECOND // 10])]
    assert events[1].result is not None
    jump = events[2]
    assert jump.restarted and not jump.dropped and jump.result is None
    assert "jumped forwards by" in jump.note and "max_stamp_jump_s=10" in jump.note
    back = events[3]  # the clock is right again: a jump back of ~15 years, not "old"
    assert back.restarted and not back.dropped and "jumped backwards" in back.note
    after = events[4]
    assert after.result is not None and after.tracks_reset and len(after.result) > 0
    assert after.reference_stamp == NOW + 2 * SECOND // 10


def test_stamp_jump_limit_both_policies_and_off(pipeline, coffee_pair):
    image0, image1, _ = coffee_pair
    a, b = image0[:200, :300], image1[:200, :300]
    for policy in ("reset", "drop"):
        stream = SequentialMatcher(pipeline, on_stamp_backwards=policy, max_stamp_jump_s=2.0)
        stream.push(a, NOW)
        assert stream.push(b, NOW + 2 * SECOND).result is not None  # at the limit: a step
        event = stream.push(a, NOW + 4 * SECOND + 1)                 # just over it
        assert event.restarted and "jumped forwards by 2 s" in event.note
        # A small step back still follows the policy; a big one restarts under both.
        event = stream.push(b, NOW + 4 * SECOND)
        assert (event.dropped if policy == "drop" else event.restarted)
        assert "not newer" in event.note
        event = stream.push(b, NOW)
        assert event.restarted and "jumped backwards" in event.note
    # 0 switches the check off: the old behaviour, a far-future stamp then drops later frames.
    stream = SequentialMatcher(pipeline, on_stamp_backwards="drop", max_stamp_jump_s=0.0)
    stream.push(a, NOW)
    assert stream.push(b, YEAR_2038).result is not None
    assert stream.push(a, NOW + SECOND).dropped


def test_stamp_jump_limit_follows_the_pipeline_parameter(pipeline):
    stream = SequentialMatcher(pipeline)
    try:
        pipeline.update(max_stamp_jump_s=0.5)  # run-time parameter, read at every frame
        assert stream.max_stamp_jump_s == 0.5
        pipeline.update(max_stamp_jump_s=0.0)
        assert stream.max_stamp_jump_s == 0.0
    finally:
        pipeline.update(max_stamp_jump_s=10.0)
    with pytest.raises(ParameterError, match="max_stamp_jump_s"):
        SequentialMatcher(pipeline, max_stamp_jump_s=-1.0)
    from match_node import params as P
    spec = P.SPECS["max_stamp_jump_s"]
    assert (spec.default, spec.min, spec.read_only, spec.scope) == (10.0, 0.0, False, "pipeline")
    with pytest.raises(ParameterError, match="max_stamp_jump_s' must be >= 0.0"):
        P.validate({"max_stamp_jump_s": -0.1})


def test_size_change_restarts_tracking(pipeline, coffee_pair):
    image0, _, _ = coffee_pair
    stream = SequentialMatcher(pipeline)
    stream.push(image0[:200, :300], 1)
    event = stream.push(image0[:240, :320], 2)
    assert event.restarted and "size changed" in event.note


def test_blank_frames_give_empty_valid_results(pipeline, coffee_pair):
    image0, _, _ = coffee_pair
    blank = np.full((240, 320, 3), 128, np.uint8)
    stream = SequentialMatcher(pipeline)
    stream.push(image0[:240, :320], 1)
    event = stream.push(blank, 2)
    result = event.result
    assert result is not None and len(result) == 0
    assert result.exit_reason == EXIT_NO_KEYPOINTS and result.num_keypoints1 == 0
    assert result.keypoints0.shape == (0, 2) and result.track_ids.shape == (0,)
    event = stream.push(blank, 3)
    assert event.result is not None and len(event.result) == 0


def test_budget_generous_changes_nothing_tight_exits_early(coffee_pair):
    from match_node.messages import EXIT_BUDGET
    image0, image1, homography = coffee_pair
    free = Pipeline(device="cpu", max_keypoints=512, allow_download=False)
    generous = Pipeline(device="cpu", max_keypoints=512, allow_download=False,
                        latency_budget_ms=60000.0)
    a, b = free.match(image0, image1), generous.match(image0, image1)
    assert np.array_equal(a.indices0, b.indices0) and a.exit_layer == b.exit_layer

    # A budget that leaves no time for more than the first layer after extraction.
    stream = SequentialMatcher(Pipeline(device="cpu", max_keypoints=512, allow_download=False,
                                        latency_budget_ms=1.0))
    stream.push(image0, 1)
    result = stream.push(image1, 2).result
    assert result.exit_reason == EXIT_BUDGET and result.exit_layer == 1
    errors = reprojection_errors(homography, result.keypoints0, result.keypoints1)
    assert len(result) > 50 and (errors < 3).mean() > 0.9
    assert result.latency_budget_ms == 1.0
