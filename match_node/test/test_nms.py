"""NMS above a threshold on the candidate pixels only (nms.local_maxima_above) keeps exactly
the pixels the dense SuperPoint-style NMS (nms.simple_nms) keeps above that threshold: on real
ALIKED score maps, and on maps full of ties, where the recovery rounds matter."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from match_node import Pipeline
from match_node.groundtruth.planar import make_sequence
from match_node.models.nms import local_maxima_above, simple_nms


def dense_reference(scores: torch.Tensor, radius: int, threshold: float) -> torch.Tensor:
    kept = simple_nms(scores[None, None], radius)[0, 0]
    return (kept.reshape(-1) > threshold).nonzero()[:, 0]


def test_equal_to_the_dense_nms_on_real_aliked_score_maps():
    extractor = Pipeline({"device": "cpu", "allow_download": False}).extractor
    for photo in ("coffee", "gravel", "chelsea"):
        frame = make_sequence(photo, num_frames=1, size=(320, 240), seed=3).frames[0]
        image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            scores = extractor.dense(image)[-1][0, 0]
        for threshold in (0.05, 0.2, 0.5):
            sparse = local_maxima_above(scores, 2, threshold)
            dense = dense_reference(scores, 2, threshold)
            assert len(dense) > 0 and torch.equal(sparse, dense), (photo, threshold)


def test_equal_to_the_dense_nms_where_scores_tie():
    generator = torch.Generator().manual_seed(0)
    recovered = 0
    for trial in range(12):
        # Scores on a coarse grid of values: plateaus and equal neighbours everywhere.
        scores = (torch.rand(60, 80, generator=generator) * 8).round() / 8
        if trial % 2:
            scores = F.avg_pool2d(scores[None, None], 3, 1, 1)[0, 0]
        for radius in (1, 2, 3):
            first_round = (scores == F.max_pool2d(scores[None, None], 2 * radius + 1, 1,
                                                  radius)[0, 0]).sum()
            pooled = F.max_pool2d(scores[None, None], 2 * radius + 1, 1, radius)[0, 0]
            for threshold in (0.1, 0.3, 0.6):
                sparse = local_maxima_above(scores, radius, threshold)
                assert torch.equal(sparse, dense_reference(scores, radius, threshold))
                # Without recovery rounds: the plain rule (XFeat's peaks).
                plain = ((scores == pooled) & (scores > threshold)).reshape(-1).nonzero()[:, 0]
                assert torch.equal(local_maxima_above(scores, radius, threshold, rounds=0),
                                   plain)
            recovered += int(simple_nms(scores[None, None], radius).count_nonzero()
                             > first_round)
    assert recovered > 0  # the recovery rounds did add maxima in some of these maps


def test_a_map_without_candidates_and_a_bad_threshold():
    assert local_maxima_above(torch.zeros(10, 12), 2, 0.2).numel() == 0
    with pytest.raises(ValueError, match="threshold above 0"):
        local_maxima_above(torch.rand(10, 12), 2, 0.0)


def test_aliked_selects_what_the_dense_peaks_select():
    """ALIKED's keypoint selection (the sparse NMS, then the border and the cap) against the
    dense peaks map it replaced, on a real photograph at a cap that binds and one that does
    not."""
    extractor = Pipeline({"device": "cpu", "allow_download": False}).extractor
    frame = make_sequence("astronaut", num_frames=1, size=(320, 240), seed=1).frames[0]
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        scores = extractor.dense(image)[-1]
    flat_scores = scores.view(-1)
    above = (extractor.peaks(scores).view(-1) > extractor.conf["detection_threshold"])
    dense = above.nonzero()[:, 0]
    for cap in (100, 5000):
        extractor.conf["max_num_keypoints"] = cap
        (selected,) = extractor._selected(scores)
        expected = dense
        if len(dense) > cap:
            expected = dense[flat_scores[dense].sort(descending=True).indices[:cap]]
        assert np.array_equal(np.sort(selected.numpy()), np.sort(expected.numpy()))
        assert len(selected) == min(cap, len(dense))
