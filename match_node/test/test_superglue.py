"""Our SuperGlue loads official-layout `superglue_{indoor,outdoor}.pth` files through the real
loader and reproduces an independent, functional implementation of the official model written
here (explicit per-head attention with channel = d*4 + h, explicit BatchNorm, matrix-form
log-domain Sinkhorn); it is equivariant to point order, symmetric in the two images, batches
exactly, and keeps the Sinkhorn in fp32 under autocast.

The official weights carry a non-commercial licence and are not available, so the state dict is
built in the test from the official architecture description (names and shapes of the Magic
Leap files, 12.0 M parameters, BatchNorm running statistics included), not from our module's
state_dict(), with random values (fixed seed). Scales are chosen so the random model matches:
the keypoint encoder's last layer and each layer's MLP output are damped and the final
projection amplified, so descriptors dominate and the assignment is peaky. The inputs are a
synthetic pair: 120 points with unit descriptors, and 100 of them permuted, shifted and
perturbed in image 1.

The module was checked once against the official Magic Leap code (models/superglue.py with
its weight loading removed): on this test's state and pair, the same 88 matches with scores
within 1.1e-6; on a 300 x 280 pair with larger random weights, the same 239 matches with
scores within 3.6e-5 (fp32).

Tolerances (observed values in brackets):
  * module vs reference, both fp64: log assignment within 1e-9 [1.2e-13];
  * module fp32 vs reference fp64: within 1e-3 [7.5e-6]; the same matches (88 of 100
    possible, all correct), match scores within 1e-3 [7.6e-7];
  * per-head attention vs module attention (fp32): 1e-5 [1.7e-6]; the contiguous head split
    (channel = h*64 + d) differs by > 0.05 [3.6]; swapping the head order in all 18 layers
    moves the full log assignment by 1.0e-2, far outside the fp64 tolerance above;
  * permutation / swap / batch: log assignment within 1e-4 / 1e-4 / 1e-5 [6.7e-6 / 3.8e-6 /
    0.0]; swap symmetry needs a converged Sinkhorn (row-marginal error: 0.70 after 1
    iteration, 2.8e-3 after 20, 9e-7 after 100);
  * Sinkhorn marginals after 100 iterations: 1e-3 relative [9e-7];
  * bf16 autocast: assignment stays fp32, |change| 0.045, 88 of 88 matches kept (>= 90 %).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from match_node.engine import weights as W
from match_node.messages import EXIT_FULL_DEPTH, EXIT_NO_KEYPOINTS
from match_node.models.superglue import SuperGlue, log_optimal_transport

KENC = [3, 32, 64, 128, 256, 256]
LAYERS = ["self", "cross"] * 9
DIM = 256
SIZE = (320, 240)  # (w, h) of both images


# --- the official layout ----------------------------------------------------------------------
def official_state(seed: int = 0, num_batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """Every entry of the official SuperGlue file, by name and shape, with random values."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, gain: float = 1.0) -> None:
        state[f"{name}.weight"] = gain / math.sqrt(cin) * torch.randn((cout, cin, 1), generator=g)
        state[f"{name}.bias"] = 0.01 * torch.randn(cout, generator=g)

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        if num_batches_tracked:
            state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    # Keypoint encoder: Conv1d at 0, 3, 6, 9, 12 with BatchNorm at 1, 4, 7, 10 (ReLU between).
    for i in range(5):
        conv(f"kenc.encoder.{3 * i}", KENC[i], KENC[i + 1], gain=0.1 if i == 4 else 1.4)
        if i < 4:
            bn(f"kenc.encoder.{3 * i + 1}", KENC[i + 1])
    for layer in range(len(LAYERS)):
        prefix = f"gnn.layers.{layer}"
        conv(f"{prefix}.attn.merge", DIM, DIM)
        for j in range(3):  # query, key, value
            conv(f"{prefix}.attn.proj.{j}", DIM, DIM, gain=2.0 if j < 2 else 1.0)
        conv(f"{prefix}.mlp.0", 2 * DIM, 2 * DIM, gain=1.4)
        bn(f"{prefix}.mlp.1", 2 * DIM)
        conv(f"{prefix}.mlp.3", 2 * DIM, DIM, gain=0.15)
    conv("final_proj", DIM, DIM, gain=8.0)
    state["bin_score"] = torch.tensor(1.0)
    return state


# Small tensors: see conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return official_state()


@pytest.fixture(scope="module")
def checkpoint(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("superglue") / "superglue_indoor.pth"
    torch.save(state, path)
    return path


def load(path, **conf) -> SuperGlue:
    model = SuperGlue(**conf)
    W.load_checkpoint(model, W.CHECKPOINTS[model.checkpoint_key], explicit_path=path,
                      allow_download=False, rename=SuperGlue.rename_official_keys)
    return model.eval()


@pytest.fixture(scope="module")
def model(checkpoint) -> SuperGlue:
    return load(checkpoint)


def make_pair(seed: int = 3, m: int = 120, n: int = 100):
    """kpts0, kpts1, desc0, desc1, size, scores0, scores1, perm (image-1 point j is image-0
    point perm[j])."""
    g = torch.Generator().manual_seed(seed)
    w, h = SIZE
    kpts0 = torch.rand(1, m, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    desc0 = F.normalize(torch.randn(1, m, DIM, generator=g), dim=-1)
    perm = torch.randperm(m, generator=g)[:n]
    kpts1 = kpts0[:, perm] + torch.tensor([5.0, -3.0]) + 0.5 * torch.randn(1, n, 2, generator=g)
    desc1 = F.normalize(desc0[:, perm] + 0.05 * torch.randn(1, n, DIM, generator=g), dim=-1)
    scores0, scores1 = torch.rand(1, m, generator=g), torch.rand(1, n, generator=g)
    size = torch.tensor([SIZE])
    return kpts0, kpts1, desc0, desc1, size, scores0, scores1, perm


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def base(model, pair) -> torch.Tensor:
    """The fp32 log assignment of the pair, computed once."""
    return assignment(model, *pair[:7])


def assignment(model, kpts0, kpts1, desc0, desc1, size, scores0, scores1):
    with torch.no_grad():
        return model.log_assignment(kpts0, kpts1, desc0, desc1, size, size, scores0, scores1)


# --- an independent reference of the official model -------------------------------------------
def ref_conv(s, name, x):
    return torch.einsum("oi,bin->bon", s[f"{name}.weight"][..., 0], x) + s[f"{name}.bias"][:, None]


def ref_bn(s, name, x):
    mean, var = s[f"{name}.running_mean"][:, None], s[f"{name}.running_var"][:, None]
    gain, shift = s[f"{name}.weight"][:, None], s[f"{name}.bias"][:, None]
    return (x - mean) / torch.sqrt(var + 1e-5) * gain + shift


def ref_attention(s, prefix, x, source):
    """Multi-head attention with head h made of channels d*4 + h, one head at a time."""
    q, k, v = (ref_conv(s, f"{prefix}.proj.{j}", t) for j, t in enumerate((x, source, source)))
    out = torch.zeros_like(q)
    for head in range(4):
        channels = [d * 4 + head for d in range(64)]
        qh, kh, vh = q[:, channels], k[:, channels], v[:, channels]
        prob = torch.softmax(torch.einsum("bdn,bdm->bnm", qh, kh) / 8.0, dim=-1)
        out[:, channels] = torch.einsum("bnm,bdm->bdn", prob, vh)
    return ref_conv(s, f"{prefix}.merge", out)


def ref_sinkhorn(sim, alpha, iterations):
    """Matrix-form log-domain Sinkhorn: normalise the rows, then the columns, of the
    dustbin-augmented couplings to the marginals, `iterations` times."""
    b, m, n = sim.shape
    z = torch.full((b, m + 1, n + 1), float(alpha), dtype=sim.dtype)
    z[:, :m, :n] = sim
    norm = -math.log(m + n)
    log_mu = torch.tensor([norm] * m + [math.log(n) + norm], dtype=sim.dtype)
    log_nu = torch.tensor([norm] * n + [math.log(m) + norm], dtype=sim.dtype)
    for _ in range(iterations):
        z = z - torch.logsumexp(z, dim=2, keepdim=True) + log_mu[None, :, None]
        z = z - torch.logsumexp(z, dim=1, keepdim=True) + log_nu[None, None, :]
    return z - norm


def reference(s, kpts0, kpts1, desc0, desc1, size, scores0, scores1, iterations=100):
    """The official SuperGlue log assignment, written from the checkpoint names."""
    def encode(kpts, scores):
        w, h = size[0, 0], size[0, 1]
        centre = torch.stack([w / 2, h / 2]).to(kpts)
        pos = (kpts - centre) / (0.7 * max(w, h))
        x = torch.cat([pos.transpose(1, 2), scores[:, None].to(kpts)], 1)
        for i in range(5):
            x = ref_conv(s, f"kenc.encoder.{3 * i}", x)
            if i < 4:
                x = ref_bn(s, f"kenc.encoder.{3 * i + 1}", x).clamp_min(0)
        return x

    x0 = desc0.transpose(1, 2) + encode(kpts0, scores0)
    x1 = desc1.transpose(1, 2) + encode(kpts1, scores1)
    for layer, name in enumerate(LAYERS):
        p = f"gnn.layers.{layer}"
        src0, src1 = (x1, x0) if name == "cross" else (x0, x1)
        deltas = []
        for x, src in ((x0, src0), (x1, src1)):
            message = ref_attention(s, f"{p}.attn", x, src)
            hidden = ref_bn(s, f"{p}.mlp.1", ref_conv(s, f"{p}.mlp.0", torch.cat([x, message], 1)))
            deltas.append(ref_conv(s, f"{p}.mlp.3", hidden.clamp_min(0)))
        x0, x1 = x0 + deltas[0], x1 + deltas[1]   # both from the old descriptors
    m0, m1 = ref_conv(s, "final_proj", x0), ref_conv(s, "final_proj", x1)
    sim = torch.einsum("bdm,bdn->bmn", m0, m1) / math.sqrt(DIM)
    return ref_sinkhorn(sim, s["bin_score"], iterations)


def ref_matches(log_assignment, threshold=0.2):
    """Mutual best entries with probability above the threshold, by plain loops."""
    p = log_assignment[0, :-1, :-1].exp()
    matches = []
    for i in range(p.shape[0]):
        j = int(p[i].argmax())
        if int(p[:, j].argmax()) == i and p[i, j] > threshold:
            matches.append((i, j))
    return torch.tensor(matches, dtype=torch.long).view(-1, 2)


def as_double(tensors):
    return [t.double() if t.is_floating_point() else t for t in tensors]


# --- tests ------------------------------------------------------------------------------------
def test_official_layout_size_and_loading(state, checkpoint, tmp_path):
    params = sum(v.numel() for k, v in state.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert abs(params / 1e6 - 12.0) < 0.05           # 12,023,297
    for weights in ("indoor", "outdoor"):
        model = load(checkpoint, weights=weights)
        assert model.checkpoint_key == f"superglue-{weights}"
        assert torch.equal(model.gnn.layers[17].attn.proj[1].weight,
                           state["gnn.layers.17.attn.proj.1.weight"])
    # A file without BatchNorm counters (pre-0.4.1 layout) loads too.
    path = tmp_path / "no_counters.pth"
    torch.save(official_state(num_batches_tracked=False), path)
    load(path)


def test_wrong_layout_refused(state, tmp_path):
    bad = {k: v for k, v in state.items() if k != "gnn.layers.5.attn.proj.1.weight"}
    path = tmp_path / "missing.pth"
    torch.save(bad, path)
    with pytest.raises(W.WeightsMismatchError, match=r"gnn\.layers\.5\.attn\.proj\.1\.weight"):
        load(path)
    # A LightGlue-style key layout (another model's file).
    other = {f"transformers.{k}": v for k, v in state.items()}
    path = tmp_path / "other.pth"
    torch.save(other, path)
    with pytest.raises(W.WeightsMismatchError, match="missing key 'bin_score'"):
        load(path)
    with pytest.raises(ValueError, match="unknown SuperGlue options"):
        SuperGlue(GNN_layers=["self"])
    with pytest.raises(ValueError, match="indoor"):
        SuperGlue(weights="night")


def test_matches_reference(model, state, pair, base):
    kpts0, kpts1, desc0, desc1, size, scores0, scores1, perm = pair
    ref = reference({k: v.double() if v.is_floating_point() else v for k, v in state.items()},
                    *as_double((kpts0, kpts1, desc0, desc1)), size.double(),
                    *as_double((scores0, scores1)))
    ours64 = assignment(model.double(), *as_double(pair[:7]))
    model.float()
    assert ours64.dtype == torch.float64
    assert (ours64 - ref).abs().max() < 1e-9
    assert base.dtype == torch.float32
    assert (base.double() - ref).abs().max() < 1e-3
    out = model(kpts0, kpts1, desc0, desc1, size, size, scores0, scores1)
    expected = ref_matches(ref)
    assert torch.equal(out.matches, expected)
    assert len(expected) > 60                     # observed 88 (of 100 possible)
    correct = (perm[out.matches[:, 1]] == out.matches[:, 0]).float().mean()
    assert correct > 0.8                           # observed 1.0: the model does match
    probs = ref[0, :-1, :-1].exp()[expected[:, 0], expected[:, 1]]
    assert (out.scores.double() - probs).abs().max() < 1e-3
    assert out.exit_layer == out.num_layers == 18 and out.exit_reason == EXIT_FULL_DEPTH
    assert (out.kept0, out.kept1) == (120, 100)
    assert out.layer_points == [(120, 100)] * 18


def test_head_channel_order(model, state):
    g = torch.Generator().manual_seed(5)
    x, source = torch.randn(1, DIM, 30, generator=g), torch.randn(1, DIM, 40, generator=g)
    attn = model.gnn.layers[3].attn
    with torch.no_grad():
        ours = attn(x, source)
    ref = ref_attention(state, "gnn.layers.3.attn", x, source)
    assert (ours - ref).abs().max() < 1e-5
    # The contiguous split (head h = channels h*64 .. h*64+63) gives something else: the test
    # above can tell the two orders apart.
    shuffle = torch.arange(DIM).view(64, 4).t().reshape(-1)   # channel h*64+d <- d*4+h
    wrong = {k: v for k, v in state.items()}
    for j in range(3):
        key = f"gnn.layers.3.attn.proj.{j}"
        wrong[f"{key}.weight"] = state[f"{key}.weight"][shuffle]
        wrong[f"{key}.bias"] = state[f"{key}.bias"][shuffle]
    wrong["gnn.layers.3.attn.merge.weight"] = state["gnn.layers.3.attn.merge.weight"][:, shuffle]
    assert (ref_attention(wrong, "gnn.layers.3.attn", x, source) - ref).abs().max() > 0.05


def test_permutation_equivariance(model, pair, base):
    kpts0, kpts1, desc0, desc1, size, scores0, scores1, _ = pair
    order = torch.randperm(kpts1.shape[1], generator=torch.Generator().manual_seed(7))
    permuted = assignment(model, kpts0, kpts1[:, order], desc0, desc1[:, order], size,
                          scores0, scores1[:, order])
    expected = torch.cat([base[:, :, :-1][:, :, order], base[:, :, -1:]], 2)
    assert (permuted - expected).abs().max() < 1e-4
    a, b = ref_matches(base), ref_matches(permuted)
    assert len(a) > 60
    assert torch.equal(torch.stack([b[:, 0], order[b[:, 1]]], 1), a)


def test_swap_symmetry(model, pair, base):
    kpts0, kpts1, desc0, desc1, size, scores0, scores1, _ = pair
    backward = assignment(model, kpts1, kpts0, desc1, desc0, size, scores1, scores0)
    assert (backward - base.transpose(1, 2)).abs().max() < 1e-4


def test_batch_equals_single(model, pair, base):
    pairs = [pair, make_pair(11)]
    singles = [base, assignment(model, *pairs[1][:7])]
    stacked = [torch.cat(parts) for parts in zip(*(p[:7] for p in pairs))]
    batch = assignment(model, *stacked)
    for i, single in enumerate(singles):
        assert (batch[i] - single[0]).abs().max() < 1e-5


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(2)
    m, n = 50, 40
    sim = 3 * torch.randn(2, m, n, generator=g)
    out = log_optimal_transport(sim, torch.tensor(1.0), 100)
    assert out.shape == (2, m + 1, n + 1)
    rows, cols = out.exp().sum(2), out.exp().sum(1)
    expect_rows = torch.tensor([1.0] * m + [float(n)])
    expect_cols = torch.tensor([1.0] * n + [float(m)])
    assert ((rows - expect_rows) / expect_rows).abs().max() < 1e-3
    assert ((cols - expect_cols) / expect_cols).abs().max() < 1e-3
    assert (out - ref_sinkhorn(sim.double(), 1.0, 100)).abs().max() < 1e-4


def test_autocast_keeps_sinkhorn_fp32(model, pair, base):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = assignment(model, *pair[:7])
        half = log_optimal_transport(torch.randn(1, 20, 30).bfloat16(), torch.tensor(1.0), 50)
    assert low.dtype == torch.float32 and half.dtype == torch.float32
    assert torch.isfinite(low).all()
    # bf16 activations (8-bit mantissa) shift the assignment, but the matches mostly agree.
    full, approx = ref_matches(base), ref_matches(low)
    same = len(set(map(tuple, approx.tolist())) & set(map(tuple, full.tolist())))
    assert same >= 0.9 * len(full)


def test_no_keypoints(model, pair):
    kpts0, kpts1, desc0, desc1, size, scores0, scores1, _ = pair
    out = model(kpts0[:, :0], kpts1, desc0[:, :0], desc1, size, size, scores0[:, :0], scores1)
    assert out.exit_reason == EXIT_NO_KEYPOINTS and out.exit_layer == 0
    assert out.matches.shape == (0, 2) and out.kept0 == 0 and out.kept1 == 100


def test_superpoint_features_plug_in(model):
    """SuperPoint's output (lists of N x 2, N, N x 256) feeds SuperGlue directly."""
    skimage_data = pytest.importorskip("skimage.data")
    from match_node.models.superpoint import SuperPoint
    torch.manual_seed(0)
    extractor = SuperPoint(max_num_keypoints=64).eval()
    image = torch.from_numpy(skimage_data.astronaut()[100:340, 100:420].copy())
    image = image.permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        f0 = extractor(image)
        f1 = extractor(image.flip(-1))
    size = torch.tensor([[320, 240]])
    out = model(f0["keypoints"][0][None], f1["keypoints"][0][None], f0["descriptors"][0][None],
                f1["descriptors"][0][None], size, size, f0["keypoint_scores"][0][None],
                f1["keypoint_scores"][0][None])
    assert out.matches.shape[1] == 2 and out.exit_layer == 18
