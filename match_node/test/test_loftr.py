"""Our LoFTR reproduces kornia's (which reads the official checkpoint layout) on real images,
loads official-layout Lightning checkpoints through our loader, refuses wrong files, and keeps
the linear attention in range under fp16.

No official LoFTR checkpoint is available offline, so the weights are random (fixed seed) in
the official layout: kornia's module tree, keys prefixed `matcher.`, wrapped as a Lightning
checkpoint. Random weights give a nearly uniform dual-softmax (no entry above the default
threshold 0.2), so (a) the batch-norm statistics are randomised (to catch any mix-up of
buffers), (b) the coarse layers' norm2 gains are tripled, which makes the confidences peaky,
and (c) both models use the match threshold 1e-5: ~55 matches with "original", ~700 with
"fixed".

Tolerances:
  * backbone (fp32): coarse and fine maps within 1e-5 (observed: identical);
  * the rest in fp64, from the same features: coarse confidence within 1e-10 (observed
    ~1e-13), keypoints within 1e-8 px (observed ~5e-12), confidence within 1e-10;
  * the rest in fp32: coarse confidence within 5e-4 absolute, keypoints within 2e-2 px,
    confidence within 5e-4 (observed up to 9e-5, 1.6e-3 px, 8e-5): the random coarse
    features reach |x| ~ 24, so fp32 rounding (1e-6 relative, the same size for kornia and
    us against an fp64 run) becomes ~1e-3 logits after the 1/0.1 temperature. The match
    sets are identical here; the test would accept a difference only for a match whose fp64
    decision is within 1% of flipping (a near-tie of row or column maxima, or of the
    threshold), which fp32 rounding on another machine may decide either way.
Coordinates: ours = kornia's - 0.5 (kornia returns the reference frame, pixel centre (x, y) at
(x + 0.5, y + 0.5); ours has integer pixel centres).
"""
import copy

import cv2
import numpy as np
import pytest
import torch

from match_node.engine import weights as W
from match_node.models.loftr import LoFTR, linear_attention, sine_encoding

kornia_loftr = pytest.importorskip("kornia.feature.loftr.loftr")

from conftest import HOMOGRAPHY, warp  # noqa: E402

THRESHOLD = 1e-5
VARIANT_OF = {"original": "loftr-outdoor", "fixed": "loftr-indoor-new"}


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """Random weights in the official layout (without the `matcher.` prefix)."""
    torch.manual_seed(0)
    state = kornia_loftr.LoFTR(pretrained=None).state_dict()
    generator = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = value + torch.rand(value.shape, generator=generator)
        elif key.endswith("running_mean"):
            state[key] = value + 0.1 * torch.randn(value.shape, generator=generator)
        elif key.startswith("loftr_coarse") and key.endswith("norm2.weight"):
            state[key] = value * 3
    return state


@pytest.fixture(scope="module")
def checkpoint_path(official_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("loftr") / "outdoor_ds.ckpt"
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in official_state.items()},
                "epoch": 0, "global_step": 0}, path)
    return path


def gray(image: np.ndarray) -> torch.Tensor:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return torch.from_numpy(image)[None, None].float() / 255.0


@pytest.fixture(scope="module")
def photo():
    from match_node.groundtruth.planar import load_photo
    return load_photo("coffee")


def pair(photo: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    image = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    return gray(image), gray(warp(image, HOMOGRAPHY))


def load_ours(path, pos_encoding: str) -> LoFTR:
    name = VARIANT_OF[pos_encoding]
    model = LoFTR(model_name=name, match_threshold=THRESHOLD).eval()
    W.load_checkpoint(model, W.CHECKPOINTS[name], path, allow_download=False,
                      rename=LoFTR.rename_official_keys)
    return model


def load_kornia(path, pos_encoding: str):
    config = copy.deepcopy(kornia_loftr.default_cfg)
    config["coarse"]["temp_bug_fix"] = pos_encoding == "fixed"
    config["match_coarse"]["thr"] = THRESHOLD
    model = kornia_loftr.LoFTR(pretrained=None, config=config)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return model.eval()


def run_kornia(model, feats0: dict, feats1: dict) -> dict:
    """kornia's matches from given features, with its coarse confidence matrix and cells."""
    captured = {}
    # CoarseMatching.forward(feat_c0, feat_c1, data) writes the matrix and the matched cells
    # (i_ids, j_ids, in the order of the keypoints) into `data`.
    handle = model.coarse_matching.register_forward_hook(
        lambda module, args, output: captured.update(args[2]))
    try:
        with torch.no_grad():
            out = model({"features0": feats0, "features1": feats1})
    finally:
        handle.remove()
    return {**out, "coarse_confidence": captured["conf_matrix"], "indices0": captured["i_ids"],
            "indices1": captured["j_ids"]}


def decision_margins(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per cell of image 0, how far (relatively) its match decision is from flipping: the gap
    of its row maximum to the runner-up, of that entry to its column maximum (or of the column
    maximum to its runner-up), and to the threshold."""
    conf = confidence[0]
    top2 = conf.topk(2, 1).values
    best, best_j = top2[:, 0], conf.argmax(1)
    col_top2 = conf.topk(2, 0).values
    col_max, col_gap = col_top2[0][best_j], ((col_top2[0] - col_top2[1]) / col_top2[0])[best_j]
    column = torch.where(col_max == best, col_gap, (col_max - best) / col_max)
    return torch.stack([(best - top2[:, 1]) / best, column, (best - threshold).abs() / threshold]
                       ).amin(0)


def compare(ours: dict, theirs: dict, conf_tol: float, point_tol: float,
            margins: torch.Tensor | None = None) -> None:
    """Same matches, with coordinates and confidences within tolerances. With `margins` (of
    the fp64 matrix), a match may differ only where its decision is within 1e-2 of flipping,
    which float32 rounding can legitimately decide either way."""
    assert ours["coarse_confidence"].shape == theirs["coarse_confidence"].shape
    assert (ours["coarse_confidence"] - theirs["coarse_confidence"]).abs().max() <= conf_tol
    assert len(ours["keypoints0"]) > 50
    pairs_ours = list(zip(ours["indices0"].tolist(), ours["indices1"].tolist()))
    pairs_theirs = list(zip(theirs["indices0"].tolist(), theirs["indices1"].tolist()))
    if margins is None:
        assert pairs_ours == pairs_theirs
    else:
        differ = set(pairs_ours) ^ set(pairs_theirs)
        assert all(margins[i] < 1e-2 for i, _ in differ)
        assert len(differ) <= 0.02 * len(pairs_ours)
    row = {pair: n for n, pair in enumerate(pairs_theirs)}
    common = [(n, row[pair]) for n, pair in enumerate(pairs_ours) if pair in row]
    a, b = (torch.tensor(x) for x in zip(*common))
    expected0 = (theirs["keypoints0"][b] - 0.5).to(ours["keypoints0"])
    assert torch.equal(ours["keypoints0"][a], expected0)
    assert (ours["keypoints1"][a] - (theirs["keypoints1"][b] - 0.5)).abs().max() <= point_tol
    assert (ours["confidence"][a] - theirs["confidence"][b]).abs().max() <= conf_tol


@pytest.mark.parametrize("pos_encoding,size", [("original", (320, 240)), ("fixed", (320, 240)),
                                               ("original", (316, 236))])
def test_matches_kornia(checkpoint_path, photo, pos_encoding, size):
    ours = load_ours(checkpoint_path, pos_encoding)
    theirs = load_kornia(checkpoint_path, pos_encoding)
    assert ours.conf["pos_encoding"] == pos_encoding
    image0, image1 = pair(photo, size)
    feats0, feats1 = ours.extract(image0), ours.extract(image1)
    with torch.no_grad():
        k0 = theirs.extract_features(image0)
    # Sides that are not multiples of 8 give ceil(H / 8) x ceil(W / 8) cells, as in kornia.
    assert feats0["coarse"].shape[-2:] == ((size[1] + 7) // 8, (size[0] + 7) // 8)
    for key in ("coarse", "fine"):
        assert (feats0[key] - k0[key]).abs().max() <= 1e-5

    # fp64 from the same features: the algorithms agree up to fp64 rounding.
    ours64, theirs64 = copy.deepcopy(ours).double(), copy.deepcopy(theirs).double()
    f0, f1 = ({k: v.double() for k, v in f.items()} for f in (feats0, feats1))
    out64 = ours64.match(f0, f1)
    compare(out64, run_kornia(theirs64, f0, f1), conf_tol=1e-10, point_tol=1e-8)

    # fp32, as deployed: the same matches, within fp32 rounding (see the module docstring).
    out = ours.match(feats0, feats1)
    compare(out, run_kornia(theirs, feats0, feats1), conf_tol=5e-4, point_tol=2e-2,
            margins=decision_margins(out64["coarse_confidence"], THRESHOLD))
    w, h = size
    cells = torch.stack([out["indices0"] % ((w + 7) // 8), out["indices0"] // ((w + 7) // 8)], -1)
    assert torch.equal(out["keypoints0"], cells.float() * 8 - 0.5)


def test_forward_handles_any_sizes(checkpoint_path, photo):
    model = load_ours(checkpoint_path, "original")
    image0, image1 = pair(photo, (316, 236))
    out = model(image0, image1)
    assert len(out["keypoints0"]) > 50
    for key in ("keypoints0", "keypoints1"):
        points = out[key]
        assert (points >= -0.5).all() and (points[:, 0] <= 316 - 0.5).all()
        assert (points[:, 1] <= 236 - 0.5).all()
    # Image 1 moves at most 4 px (2 fine cells of 2 px) from its coarse cell.
    cols1 = (316 + 7) // 8
    grid1 = torch.stack([out["indices1"] % cols1, out["indices1"] // cols1], -1).float() * 8 - 0.5
    assert (out["keypoints1"] - grid1).abs().max() <= 4.0
    # Different sizes, and no match at all.
    small = gray(cv2.resize(photo, (100, 60), interpolation=cv2.INTER_AREA))
    mixed = model(image0, small)
    assert mixed["coarse_confidence"].shape == (1, 30 * 40, 8 * 13)
    model.conf["match_threshold"] = 1.0
    empty = model(small, small)
    assert empty["keypoints0"].shape == empty["keypoints1"].shape == (0, 2)
    assert empty["confidence"].shape == empty["indices0"].shape == (0,)


def test_position_encodings_match_kornia_beyond_the_table():
    # 300 rows of cells: an image 2400 px high, beyond the official 256 x 256 table.
    from kornia.feature.loftr.utils.position_encoding import PositionEncodingSine
    for variant, fixed in (("original", False), ("fixed", True)):
        reference = PositionEncodingSine(256, max_shape=(300, 20), temp_bug_fix=fixed).pe
        assert torch.equal(sine_encoding(256, 300, 20, variant), reference)
    assert not torch.equal(sine_encoding(256, 4, 4, "original"), sine_encoding(256, 4, 4, "fixed"))
    model = LoFTR(model_name="loftr-outdoor")
    features = torch.zeros(1, 256, 300, 20)
    assert torch.equal(model.pos_encoding(features), sine_encoding(256, 300, 20, "original"))
    assert LoFTR(model_name="loftr-indoor-new").conf["pos_encoding"] == "fixed"
    assert LoFTR(model_name="loftr-indoor").conf["pos_encoding"] == "original"
    with pytest.raises(ValueError, match="unknown positional encoding"):
        LoFTR(pos_encoding="sine")


def test_official_layout_and_names(official_state):
    model = LoFTR()
    assert list(model.state_dict()) == list(official_state)
    assert len(official_state) == 211
    prefixed = {f"matcher.{k}": v for k, v in official_state.items()}
    assert list(LoFTR.rename_official_keys(prefixed)) == list(official_state)


def test_wrong_files_refused(checkpoint_path, tmp_path):
    model = LoFTR()
    lightglue = W.resolve(W.CHECKPOINTS["lightglue-aliked"], allow_download=False)
    with pytest.raises(W.WeightsMismatchError, match="missing key 'backbone.conv1.weight'"):
        W.load_checkpoint(model, W.CHECKPOINTS["loftr-outdoor"], lightglue,
                          rename=LoFTR.rename_official_keys)
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    del checkpoint["state_dict"]["matcher.loftr_fine.layers.1.norm2.bias"]
    damaged = tmp_path / "damaged.ckpt"
    torch.save(checkpoint, damaged)
    with pytest.raises(W.WeightsMismatchError,
                       match="missing key 'loftr_fine.layers.1.norm2.bias'"):
        W.load_checkpoint(model, W.CHECKPOINTS["loftr-outdoor"], damaged,
                          rename=LoFTR.rename_official_keys)


def test_no_download_url_asks_for_a_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("must not try to download without a URL")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    for key, name in (("loftr-outdoor", "outdoor_ds.ckpt"), ("loftr-indoor", "indoor_ds.ckpt"),
                      ("loftr-indoor-new", "indoor_ds_new.ckpt")):
        with pytest.raises(W.WeightsNotFoundError, match="no download URL: set the weights path"):
            W.resolve(W.CHECKPOINTS[key], allow_download=True)
        cached = tmp_path / "hub" / "checkpoints" / name
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"")
        assert W.resolve(W.CHECKPOINTS[key], allow_download=True) == cached


# --- linear attention numerics ---------------------------------------------------------------

def official_linear_attention(q, k, v, eps=1e-6):
    """The official formula (sum over the sequence in the denominator). q, k, v: B H N D."""
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    length = v.shape[-2]
    kv = k.transpose(-1, -2) @ (v / length)
    denominator = q @ k.sum(-2)[..., None] + eps
    return (q @ kv) / denominator * length, denominator


def attention_inputs() -> list[torch.Tensor]:
    # 640x480: 4800 coarse cells, 8 heads of 32 channels; unit-variance projections (the
    # official checkpoints' denominators reach ~1.5e5 at this size, these ~3e5).
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, 8, 4800, 32, generator=generator, dtype=torch.float64)
            for _ in range(3)]


def test_linear_attention_mean_form_is_the_official_formula():
    q, k, v = attention_inputs()
    reference, denominator = official_linear_attention(q, k, v)
    assert denominator.max() > 6.55e4  # the official form's intermediate overflows fp16
    ours = linear_attention(q, k, v)
    assert ((ours - reference).abs().max() / reference.abs().max()) < 1e-12
    # Every intermediate of the mean form stays far inside fp16's range (65504).
    qf, kf = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    intermediates = [kf.transpose(-1, -2) @ (v / 4800), kf.mean(-2), qf @ kf.mean(-2)[..., None],
                     ours]
    assert max(t.abs().max().item() for t in intermediates) < 1e3


def test_linear_attention_survives_fp16():
    q, k, v = attention_inputs()
    reference, _ = official_linear_attention(q, k, v)
    half = [t.half() for t in (q, k, v)]
    # The official form in fp16: the denominator overflows to inf and the message vanishes.
    plain, denominator = official_linear_attention(*half)
    assert torch.isinf(denominator).any() and (plain == 0).any()
    # The mean form computed entirely in fp16 stays finite and accurate.
    ours = linear_attention(*half).double()
    assert torch.isfinite(ours).all()
    assert (ours - reference).norm() / reference.norm() < 2e-3

    # And our layer under fp16 autocast (which computes the attention in fp32) matches fp32.
    from match_node.models.loftr import EncoderLayer
    torch.manual_seed(0)
    layer = EncoderLayer(256, 8).eval()
    x = torch.randn(1, 4800, 256) * 4
    with torch.no_grad():
        expected = layer(x, x)
        with torch.autocast("cpu", dtype=torch.float16):
            got = layer(x, x)
    assert torch.isfinite(got).all()
    assert ((got.float() - expected).norm() / expected.norm()) < 1e-3
