"""The exit guard: a confidence-based early exit that would return a collapsed match set is
refused and LightGlue continues, within the budget."""
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.models.aliked import ALIKED
from match_node.messages import EXIT_CONFIDENCE, EXIT_FULL_DEPTH
from match_node.models.lightglue import LightGlue

from conftest import HOMOGRAPHY, warp


@pytest.fixture(scope="module")
def features():
    from match_node.groundtruth.planar import load_photo
    photo = np.ascontiguousarray(load_photo("coffee")[:320, :480])
    extractor = ALIKED(max_num_keypoints=400).eval()
    W.load_checkpoint(extractor, W.CHECKPOINTS["aliked-n16"], allow_download=False)
    with torch.no_grad():
        out = [extractor(torch.from_numpy(i).permute(2, 0, 1)[None].float() / 255)
               for i in (photo, warp(photo, HOMOGRAPHY))]
    size = torch.tensor([[480, 320]])
    return (out[0]["keypoints"][0][None], out[1]["keypoints"][0][None],
            out[0]["descriptors"][0][None], out[1]["descriptors"][0][None], size, size)


@pytest.fixture(scope="module")
def matcher():
    model = LightGlue(features="aliked", width_confidence=-1).eval()
    W.load_checkpoint(model, W.CHECKPOINTS["lightglue-aliked"], allow_download=False,
                      rename=LightGlue.rename_official_keys)
    return model


def test_guard_refuses_an_exit_below_the_expected_matches(features, matcher):
    early = matcher(*features)
    assert early.exit_reason == EXIT_CONFIDENCE and early.exit_layer < 9
    assert not early.guard_fired
    # An expectation no exit can meet: every exit is refused, the stack runs to full depth
    # and returns exactly what full depth returns.
    guarded = matcher(*features, min_exit_matches=10**6)
    matcher.conf["depth_confidence"] = -1
    try:
        full = matcher(*features)
    finally:
        matcher.conf["depth_confidence"] = 0.95
    assert guarded.guard_fired and guarded.exit_reason == EXIT_FULL_DEPTH
    assert guarded.exit_layer == 9 and torch.equal(guarded.matches, full.matches)
    # An expectation the early exit meets changes nothing.
    met = matcher(*features, min_exit_matches=len(early.matches))
    assert not met.guard_fired and torch.equal(met.matches, early.matches)
    assert met.exit_layer == early.exit_layer


def test_guard_honours_the_budget(features, matcher):
    class Deadline:  # allows layers 0..3 only
        def before_layer(self, layer, n0, n1):
            return layer < 4

        def before_assignment(self, layer, n0, n1):
            pass

    guarded = matcher(*features, hook=Deadline(), min_exit_matches=10**6)
    assert guarded.exit_layer == 4  # the deadline still cuts the stack


def test_pipeline_expectation_follows_recent_pairs(coffee_pair):
    from match_node import Pipeline
    image0, image1, _ = coffee_pair
    pipeline = Pipeline(device="cpu", max_keypoints=256, refine="none", allow_download=False)
    before = pipeline._match_ratio
    result = pipeline.match(image0[:320, :480].copy(), image1[:320, :480].copy())
    ratio = len(result) / min(result.num_keypoints0, result.num_keypoints1)
    assert pipeline._match_ratio == pytest.approx(0.9 * before + 0.1 * ratio)
    assert result.guard_fired is False
