"""The texture measure on real photographs and their low-texture versions, and the switch."""
import cv2
import numpy as np
import pytest

from match_node.groundtruth.planar import (LOW_TEXTURE_KINDS, load_photo, low_texture,
                                          make_sequence)
from match_node.engine.refine import to_gray
from match_node.engine.texture import (DENOISE_MAX_SIGMA, MatcherSwitch, Texture, blur_change,
                                       denoise, denoise_sigma, gradient_tensor, measure_texture,
                                       noise_sigma, pair_linear_map)
from match_node.groundtruth.lowtexture import degrade_frame, motion_kernel

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


def _linear_part(homography: np.ndarray, x: float = 320, y: float = 240) -> np.ndarray:
    """The homography's Jacobian at (x, y): its local linear map."""
    p = homography @ [x, y, 1.0]
    return (homography[:2, :2] * p[2] - np.outer(p[:2], homography[2, :2])) / p[2] ** 2


@pytest.mark.parametrize("photo", ["chelsea", "gravel", "coffee"])
def test_blur_change_sees_motion_blur_in_one_frame_only(photo):
    """Consecutive frames of a camera path: sharp pairs, a pair with a contrast change, and a
    pair blurred alike are not motion blur in one frame; a sharp frame and a motion-blurred
    one are, in either order; a view rotated by 30 degrees is not once the pair's linear
    map carries the gradients."""
    sequence = make_sequence(photo, num_frames=3, size=(640, 480), step=6, seed=1)
    f0, f1, f2 = sequence.frames
    h01 = _linear_part(sequence.relative(0, 1))
    gray = [to_gray(f) for f in (f0, f1)]
    sharp = blur_change(gradient_tensor(gray[0]), gradient_tensor(gray[1]), h01)
    assert sharp.anisotropy < 1.3 and 0.89 < sharp.energy < 1.12
    assert not sharp.is_motion_blur(1.4, 1.65)
    dimmer = blur_change(gradient_tensor(gray[0]), gradient_tensor(0.6 * gray[1]), h01)
    assert dimmer.anisotropy == pytest.approx(sharp.anisotropy, rel=1e-6)
    assert dimmer.energy == pytest.approx(0.36 * sharp.energy, rel=1e-6)  # contrast: even
    assert not dimmer.is_motion_blur(1.4, 1.65)

    kernel = motion_kernel(16, np.deg2rad(30))
    streaked = [cv2.filter2D(g, -1, kernel, borderType=cv2.BORDER_REFLECT) for g in gray]
    blurred = blur_change(gradient_tensor(gray[0]), gradient_tensor(streaked[1]), h01)
    assert blurred.is_motion_blur(1.4, 1.65) and blurred.energy < 1 / 1.65
    back = blur_change(gradient_tensor(streaked[0]), gradient_tensor(gray[1]), h01)
    assert back.is_motion_blur(1.4, 1.65) and back.energy > 1.65
    alike = blur_change(gradient_tensor(streaked[0]), gradient_tensor(streaked[1]), h01)
    assert not alike.is_motion_blur(1.4, 1.65)
    # The generator's own motion blur (12-20 px, noise) after a sharp frame.
    generated = to_gray(degrade_frame(f2, "motion_blur", 2))
    h12 = _linear_part(sequence.relative(1, 2))
    assert blur_change(gradient_tensor(gray[1]), gradient_tensor(generated),
                       h12).is_motion_blur(1.4, 1.65)

    rotation = cv2.getRotationMatrix2D((320, 240), 30, 1.0)
    turned = cv2.warpAffine(gray[0], rotation, (640, 480), borderMode=cv2.BORDER_REFLECT)
    carried = blur_change(gradient_tensor(gray[0]), gradient_tensor(turned), rotation[:, :2])
    assert carried.anisotropy < 1.3
    assert blur_change(np.zeros((2, 2)), gradient_tensor(gray[1])).anisotropy == 1.0


def test_pair_linear_map_fits_through_outliers():
    rng = np.random.default_rng(0)
    linear = np.array([[0.95, -0.1], [0.12, 1.05]])
    k0 = rng.uniform(0, [640, 480], (100, 2))
    k1 = k0 @ linear.T + [14, -6] + rng.normal(0, 0.3, (100, 2))
    k1[:30] = rng.uniform(0, [640, 480], (30, 2))  # 30% wrong
    assert np.abs(pair_linear_map(k0, k1) - linear).max() < 0.01
    assert pair_linear_map(k0[:7], k1[:7]) is None


@pytest.mark.parametrize("photo", ["moon", "chelsea"])
def test_noise_sigma_measures_the_noise_not_the_scene(photo):
    """Immerkaer's estimate on a real photograph (smoothed first, so that its own grain is
    well under the noise added) with white noise of known sigma: within 10%; the smooth
    photograph alone reads under 0.3 grey levels, a planar ramp 0."""
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(to_gray(cv2.resize(load_photo(photo), (320, 240))) * 255, (0, 0), 2.0)
    assert noise_sigma(scene) < 0.3
    for sigma in (1.0, 4.0):
        noisy = scene + rng.normal(0, sigma, scene.shape).astype(np.float32)
        assert noise_sigma(noisy) == pytest.approx(sigma, rel=0.1)
    ramp = np.add.outer(np.arange(60.0), 2 * np.arange(80.0)).astype(np.float32)
    assert noise_sigma(ramp) == pytest.approx(0.0, abs=1e-4)
    assert noise_sigma(np.zeros((2, 50), np.float32)) == 0.0


def test_denoise_smooths_dark_frames_only():
    """A well-lit frame (sensor noise 0.7 grey levels) and a blurred one are left as they
    are; the same frame at night (5-8% of the light, shot and read noise) is smoothed, more
    with a lower noise limit, never beyond DENOISE_MAX_SIGMA; a limit of 0 turns it off."""
    frame = make_sequence("chelsea", 1, size=(320, 240)).frames[0]
    lit = to_gray(degrade_frame(frame, "blur", seed=0)), to_gray(frame)
    dark = to_gray(degrade_frame(frame, "dark", seed=0))
    for gray in lit:
        assert denoise_sigma(gray, 4.0) == 0.0
        assert denoise(gray, 4.0) is gray
    sigmas = [denoise_sigma(dark, limit) for limit in (8.0, 4.0, 1.0)]
    assert 0.5 < sigmas[0] < sigmas[1] < sigmas[2] == DENOISE_MAX_SIGMA
    smoothed = denoise(dark, 4.0)
    assert smoothed.shape == dark.shape and smoothed.dtype == np.float32
    assert noise_sigma(smoothed) < 0.5 * noise_sigma(dark)
    assert abs(float(smoothed.mean()) - float(dark.mean())) < 1e-3  # a blur moves no light
    assert denoise_sigma(dark, 0.0) == 0.0
