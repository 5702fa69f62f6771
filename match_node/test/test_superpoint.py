"""Our SuperPoint loads official-layout `superpoint_v1.pth` files through the real loader and
reproduces an independent, functional implementation of the official pipeline written here.

The official weights carry a non-commercial licence and are not available, so the state dict is
built in the test from the official architecture description (names and shapes of the Magic
Leap file, not from our module's state_dict(), so a naming error fails to load) with random
values (fixed seed, He-scaled). The reference below reads the same dict by those names.

The reference was checked once against the official Magic Leap code (models/superpoint.py,
with its weight loading removed) on the 320x240 astronaut crop: keypoints identical, scores
and descriptors identical (max abs difference 0.0), with and without a 200-keypoint cap.

Tolerances: keypoints must be identical; scores within 1e-6 and descriptors within 1e-5
(observed: 0.0 and 3.4e-7 at 320x240, 0.0 and 2.5e-7 at 333x251; the descriptors differ only
by the order of the bilinear sums).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from match_node.engine import weights as W
from match_node.models.superpoint import SuperPoint

skimage_data = pytest.importorskip("skimage.data")

# The official file's convolutions: name, input channels, output channels, kernel size.
OFFICIAL_CONVS = [
    ("conv1a", 1, 64, 3), ("conv1b", 64, 64, 3),
    ("conv2a", 64, 64, 3), ("conv2b", 64, 64, 3),
    ("conv3a", 64, 128, 3), ("conv3b", 128, 128, 3),
    ("conv4a", 128, 128, 3), ("conv4b", 128, 128, 3),
    ("convPa", 128, 256, 3), ("convPb", 256, 65, 1),
    ("convDa", 128, 256, 3), ("convDb", 256, 256, 1),
]


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, cin, cout, k in OFFICIAL_CONVS:
        # He scaling keeps the ReLU activations in range through the 10-conv chain.
        std = math.sqrt(2.0 / (cin * k * k))
        state[f"{name}.weight"] = std * torch.randn((cout, cin, k, k), generator=generator)
        state[f"{name}.bias"] = 0.05 * torch.randn(cout, generator=generator)
    return state


# Small tensors: see conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return official_state()


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("superpoint") / "superpoint_v1.pth"
    torch.save(state, path)
    return path


def load(checkpoint, **conf) -> SuperPoint:
    model = SuperPoint(**conf)
    W.load_checkpoint(model, W.CHECKPOINTS["superpoint"], explicit_path=checkpoint,
                      allow_download=False)
    return model.eval()


def rgb_tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return rgb_tensor(skimage_data.astronaut()[100:340, 100:420])   # 320 x 240


# --- an independent reference of the official pipeline ----------------------------------------
def reference(state: dict, gray: torch.Tensor, threshold: float = 0.005, radius: int = 4,
              border: int = 4, cap: int = -1, valid: tuple[int, int] | None = None):
    """The official SuperPoint on one gray image (1x1xHxW, sides multiples of 8), written
    functionally from the checkpoint names. `valid` = (h, w) crops the score map (used to
    mimic our handling of padded images). Returns keypoints (x, y), scores and descriptors
    sorted by score (descending)."""
    def conv(x, name, relu=True):
        k = state[f"{name}.weight"].shape[-1]
        y = F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], padding=k // 2)
        return y.clamp_min(0) if relu else y

    x = gray
    for i, stage in enumerate(("1", "2", "3", "4")):
        if i:
            x = F.max_pool2d(x, 2)
        x = conv(conv(x, f"conv{stage}a"), f"conv{stage}b")
    prob = torch.softmax(conv(conv(x, "convPa"), "convPb", relu=False), 1)[0, :64]
    hc, wc = prob.shape[-2:]
    # Pixel (y, x) is bin (y % 8) * 8 + x % 8 of cell (y // 8, x // 8).
    ys, xs = torch.meshgrid(torch.arange(8 * hc), torch.arange(8 * wc), indexing="ij")
    scores = prob[(ys % 8) * 8 + xs % 8, ys // 8, xs // 8]
    if valid is not None:
        scores = scores[:valid[0], :valid[1]]
    h, w = scores.shape

    # NMS as the official: a square max filter, then two rounds of recovery.
    def maxf(t):
        return F.max_pool2d(t[None, None], 2 * radius + 1, stride=1, padding=radius)[0, 0]
    keep = scores == maxf(scores)
    for _ in range(2):
        near = maxf(keep.float()) > 0
        rest = torch.where(near, torch.zeros_like(scores), scores)
        keep = keep | ((rest == maxf(rest)) & ~near)
    scores = torch.where(keep, scores, torch.zeros_like(scores))

    yx = (scores > threshold).nonzero()
    inside = ((yx[:, 0] >= border) & (yx[:, 0] < h - border)
              & (yx[:, 1] >= border) & (yx[:, 1] < w - border))
    yx = yx[inside]
    values = scores[yx[:, 0], yx[:, 1]]
    order = torch.argsort(values, descending=True, stable=True)
    if cap > 0:
        order = order[:cap]
    yx, values = yx[order], values[order]
    kpts = yx.flip(1).float()

    # Descriptors: explicit bilinear interpolation of the unit-norm map at the official
    # cell coordinate u = (x - 3.5) * (w - 1) / (8 w - 4.5), zero outside the map.
    dense = F.normalize(conv(conv(x, "convDa"), "convDb", relu=False), dim=1)[0]
    c = dense.shape[0]
    u = (kpts[:, 0] - 3.5) * (wc - 1) / (8 * wc - 4.5)
    v = (kpts[:, 1] - 3.5) * (hc - 1) / (8 * hc - 4.5)
    u0, v0 = u.floor().long(), v.floor().long()
    desc = torch.zeros(len(kpts), c)
    for du in (0, 1):
        for dv in (0, 1):
            cu, cv = u0 + du, v0 + dv
            wgt = (1 - (u - cu).abs()) * (1 - (v - cv).abs())
            ok = (cu >= 0) & (cu < wc) & (cv >= 0) & (cv < hc)
            vals = dense[:, cv.clamp(0, hc - 1), cu.clamp(0, wc - 1)].t()
            desc += vals * (wgt * ok)[:, None]
    return kpts, values, F.normalize(desc, dim=1)


def gray_of(rgb: torch.Tensor) -> torch.Tensor:
    return (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])


# --- tests ------------------------------------------------------------------------------------
def test_loads_official_layout_and_matches_reference(checkpoint, state, astronaut):
    model = load(checkpoint, max_num_keypoints=0)
    with torch.no_grad():
        out = model(astronaut)
    kpts, scores, desc = out["keypoints"][0], out["keypoint_scores"][0], out["descriptors"][0]
    ref_k, ref_s, ref_d = reference(state, gray_of(astronaut))
    assert len(kpts) > 300          # observed 1315 with these random weights
    assert torch.equal(kpts, ref_k)
    assert (scores - ref_s).abs().max() < 1e-6
    assert (desc - ref_d).abs().max() < 1e-5
    assert desc.shape[1] == model.descriptor_dim == 256
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by score


def test_keypoint_properties_on_real_image(checkpoint, astronaut):
    for radius in (4, 2):
        model = load(checkpoint, max_num_keypoints=0, nms_radius=radius)
        with torch.no_grad():
            out = model(astronaut)
        kpts = out["keypoints"][0]
        h, w = astronaut.shape[-2:]
        assert kpts[:, 0].min() >= 4 and kpts[:, 0].max() <= w - 5
        assert kpts[:, 1].min() >= 4 and kpts[:, 1].max() <= h - 5
        assert torch.equal(kpts, kpts.round())
        assert (out["descriptors"][0].norm(dim=1) - 1).abs().max() < 1e-5
        assert (out["keypoint_scores"][0] > 0.005).all()
        # NMS: no two keypoints within the radius (max-norm); exact ties could break this,
        # but none occur on a real photograph.
        dist = (kpts[:, None, :] - kpts[None, :, :]).abs().max(-1).values
        dist.fill_diagonal_(float("inf"))
        assert dist.min() > radius


def test_max_keypoints_is_the_top_of_the_uncapped_list(checkpoint, state, astronaut):
    full = load(checkpoint, max_num_keypoints=0)
    capped = load(checkpoint, max_num_keypoints=100)
    with torch.no_grad():
        a, b = full(astronaut), capped(astronaut)
    assert len(b["keypoints"][0]) == 100
    assert torch.equal(b["keypoints"][0], a["keypoints"][0][:100])
    assert torch.equal(b["descriptors"][0], a["descriptors"][0][:100])
    ref_k, _, _ = reference(state, gray_of(astronaut), cap=100)
    assert torch.equal(b["keypoints"][0], ref_k)


def test_checkerboard_keypoints_inside(checkpoint):
    board = rgb_tensor(skimage_data.checkerboard())        # 200 x 200
    model = load(checkpoint, max_num_keypoints=0)
    with torch.no_grad():
        out = model(board)
    kpts = out["keypoints"][0]
    assert len(kpts) > 0
    assert kpts.min() >= 4 and kpts.max() <= 200 - 5
    assert (out["descriptors"][0].norm(dim=1) - 1).abs().max() < 1e-5


def test_any_size_pads_bottom_right(checkpoint, state):
    # 333 x 251: not multiples of 8. Padded by edge replication at the bottom and right; the
    # score map is cropped back, so the border is measured from the real image edges.
    image = rgb_tensor(skimage_data.astronaut()[90:341, 80:413])
    h, w = image.shape[-2:]
    model = load(checkpoint, max_num_keypoints=0)
    with torch.no_grad():
        out = model(image)
    kpts = out["keypoints"][0]
    assert kpts[:, 0].min() >= 4 and kpts[:, 0].max() <= w - 5
    assert kpts[:, 1].min() >= 4 and kpts[:, 1].max() <= h - 5
    padded = F.pad(gray_of(image), (0, (-w) % 8, 0, (-h) % 8), mode="replicate")
    ref_k, ref_s, ref_d = reference(state, padded, valid=(h, w))
    assert torch.equal(kpts, ref_k)
    assert (out["keypoint_scores"][0] - ref_s).abs().max() < 1e-6
    assert (out["descriptors"][0] - ref_d).abs().max() < 1e-5


def test_batch_gray_and_rgb(checkpoint, astronaut):
    model = load(checkpoint, max_num_keypoints=300)
    other = rgb_tensor(skimage_data.chelsea()[:240, :320])
    with torch.no_grad():
        batch = model(torch.cat([astronaut, other]))
        singles = [model(astronaut), model(other)]
        gray = model(gray_of(astronaut))
    for i, single in enumerate(singles):
        assert torch.equal(batch["keypoints"][i], single["keypoints"][0])
        assert (batch["descriptors"][i] - single["descriptors"][0]).abs().max() < 1e-5
    assert torch.equal(gray["keypoints"][0], singles[0]["keypoints"][0])


def test_empty_result_on_blank_image(checkpoint):
    model = load(checkpoint, detection_threshold=0.99)
    with torch.no_grad():
        out = model(torch.full((1, 3, 64, 80), 0.5))
    assert out["keypoints"][0].shape == (0, 2)
    assert out["descriptors"][0].shape == (0, 256)


def test_wrong_files_refused(state, tmp_path):
    bad = dict(state)
    bad["convDB.weight"] = bad.pop("convDb.weight")        # a renamed key
    path = tmp_path / "renamed.pth"
    torch.save(bad, path)
    with pytest.raises(W.WeightsMismatchError, match="convDb.weight"):
        W.load_checkpoint(SuperPoint(), W.CHECKPOINTS["superpoint"], explicit_path=path,
                          allow_download=False)
    narrow = dict(state, **{"convDb.weight": state["convDb.weight"][:128],
                            "convDb.bias": state["convDb.bias"][:128]})
    path = tmp_path / "narrow.pth"
    torch.save(narrow, path)
    with pytest.raises(W.WeightsMismatchError, match="convDb.weight"):
        W.load_checkpoint(SuperPoint(), W.CHECKPOINTS["superpoint"], explicit_path=path,
                          allow_download=False)
    with pytest.raises(ValueError, match="unknown SuperPoint options"):
        SuperPoint(max_keypoints=10)
