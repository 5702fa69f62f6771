"""matcher 'loftr' and 'auto' in the pipeline, on real images made textureless."""
import numpy as np

from match_node import Pipeline, SequentialMatcher
from match_node.groundtruth.planar import low_texture, make_sequence


def test_auto_switches_exactly_twice_on_textured_textureless_textured(loftr_checkpoint):
    # The LoFTR file is random weights in the official layout (see conftest): the XFeat
    # fallback and the direct alignment would serve its thin results, so they are off here
    # (test_lowtexture and test_direct test them).
    pipeline = Pipeline(device="cpu", matcher="auto", loftr_weights=str(loftr_checkpoint),
                        max_keypoints=512, allow_download=False, textureless_fallback="none",
                        textureless_direct=False)
    sequence = make_sequence("coffee", num_frames=10, size=(640, 480), step=6)
    kinds = [None] * 3 + ["blur", "low_contrast", "fog", "uniform"] + [None] * 3
    frames = [f if k is None else low_texture(f, k) for f, k in zip(sequence.frames, kinds)]
    stream = SequentialMatcher(pipeline)
    results = []
    for t, frame in enumerate(frames):
        event = stream.push(frame, t)
        if event.result is not None:
            results.append((event.result, event.tracks_reset))
    matchers = [r.matcher for r, _ in results]
    # Two textureless frames are needed to switch, and two textured ones to switch back.
    assert matchers == ["lightglue"] * 3 + ["loftr"] * 4 + ["lightglue"] * 2
    assert stream.switch.switches == 2
    resets = [reset for _, reset in results]
    assert resets == [True, False, False, True, False, False, False, True, False]
    for result, _ in results:
        assert result.keypoints1.shape == (len(result), 2)
        if len(result):
            assert result.keypoints1.min() >= -0.5 and result.keypoints1[:, 0].max() <= 639.5
        if result.matcher == "loftr":
            cells = (640 // 8) * (480 // 8)
            assert result.num_keypoints1 == cells and result.exit_layer == 0
            assert np.all(result.indices1 < cells)
            assert result.extractor == "loftr-outdoor"


def test_loftr_pairs_report_original_pixels(loftr_checkpoint):
    pipeline = Pipeline(device="cpu", matcher="loftr", loftr_weights=str(loftr_checkpoint),
                        loftr_max_image_side=320, loftr_threshold=0.0, allow_download=False)
    image = np.ascontiguousarray(make_sequence("coffee", 1, size=(800, 600)).frames[0])
    result = pipeline.match(image, image)
    assert result.matcher == "loftr" and len(result) > 0
    # Working size 320x240: a coarse cell is 8 working pixels = 20 original pixels.
    assert result.image_size0 == (800, 600)
    assert result.keypoints0[:, 0].max() > 320
    steps = np.unique(np.diff(np.unique(result.keypoints0[:, 0])))
    assert np.allclose(steps[0], 20.0, atol=1e-3)
