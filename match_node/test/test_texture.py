"""The texture measure on real photographs and their low-texture versions, and the switch."""
import cv2
import numpy as np
import pytest

from match_node.groundtruth.planar import LOW_TEXTURE_KINDS, load_photo, low_texture
from match_node.engine.texture import MatcherSwitch, Texture, measure_texture

SWITCH = MatcherSwitch()


@pytest.fixture(scope="module")
def textures(pipeline):
    out = {}
    for name in ("coffee", "astronaut", "chelsea", "rocket"):
        image = cv2.resize(load_photo(name), (640, 480))  # the thresholds are set for VGA
        for kind in ("original",) + LOW_TEXTURE_KINDS:
            frame = image if kind == "original" else low_texture(image, kind)
            features = pipeline.extract(frame)
            out[name, kind] = measure_texture(features.keypoints.numpy(), features.scores.numpy(),
                                              features.image_size)
    return out


def test_measure_separates_textured_from_low_texture(textures):
    for (name, kind), texture in textures.items():
        if kind == "original":
            assert texture.is_high(*SWITCH.high), (name, texture)
        else:
            assert texture.is_low(*SWITCH.low), (name, kind, texture)


def test_coverage_sees_bunched_keypoints():
    bunched = np.random.default_rng(0).uniform(0, 60, (500, 2))
    spread = np.random.default_rng(0).uniform(0, [640, 480], (500, 2))
    scores = np.ones(500)
    assert measure_texture(bunched, scores, (640, 480)).coverage < 0.05
    assert measure_texture(spread, scores, (640, 480)).coverage > 0.9
    assert measure_texture(spread, np.zeros(500), (640, 480)) == Texture(0, 0.0)


def test_switches_exactly_twice_and_does_not_flap():
    textured, textureless = Texture(600, 0.7), Texture(20, 0.05)
    near = Texture(200, 0.35)  # between the thresholds: keeps whatever is current
    switch = MatcherSwitch(switch_frames=2)
    frames = ([textured] * 4 + [textureless] + [textured] * 2 + [textureless] * 5 + [near] * 3
              + [textured] * 5 + [near] * 3)
    chosen = [switch.update(t) for t in frames]
    assert switch.switches == 2
    assert chosen[:12] == ["lightglue"] * 8 + ["loftr"] * 4   # one textureless frame is not enough
    assert chosen[-1] == "lightglue"


def test_thresholds_must_leave_a_band():
    with pytest.raises(ValueError, match="flap"):
        MatcherSwitch(low_keypoints=300, high_keypoints=200)
