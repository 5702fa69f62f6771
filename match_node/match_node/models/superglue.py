"""SuperGlue (Sarlin et al., CVPR 2020), loading the official Magic Leap checkpoints
`superglue_indoor.pth` / `superglue_outdoor.pth` unchanged.

Keypoint positions (normalised) and detection scores are encoded by an MLP and added to the
descriptors; 18 attentional layers alternate self- and cross-attention, each updating both
images from the previous descriptors; a final projection gives matching descriptors whose
scaled dot products enter a log-domain Sinkhorn with a learned dustbin score. Matches are
mutual best entries whose probability exceeds a threshold.

Everything is channel-first (B x C x N) with 1x1 Conv1d layers, the layout of the checkpoints.
Numerics: the similarity and the Sinkhorn run in fp32 even under fp16/bf16 autocast (the
log-sum-exp iterations accumulate rounding error, and the dustbin marginal log(n) - log(m+n)
needs the range).

The checkpoints carry Magic Leap's non-commercial licence: this project never ships or
downloads them (see weights.CHECKPOINTS["superglue-indoor"]).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..messages import EXIT_FULL_DEPTH, EXIT_NO_KEYPOINTS
from .lightglue import LayerHook, MatchOutput, filter_matches

NUM_HEADS = 4


class Conv1x1(nn.Conv1d):
    """A kernel-size-1 Conv1d (the checkpoint's layout, weight D_out x D_in x 1) computed as a
    matrix product: the same numbers, several times faster than the convolution kernels for
    the few hundred points per image that SuperGlue sees."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight[..., 0], x) + self.bias[:, None]


def _mlp(channels: list[int]) -> nn.Sequential:
    """1x1 convolutions with BatchNorm and ReLU between them (none after the last).

    The indices in the Sequential are the checkpoint's: for [a, b, c] the convolutions are
    0 and 3, the BatchNorm 1.
    """
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(Conv1x1(channels[i - 1], channels[i]))
        if i < len(channels) - 1:
            layers += [nn.BatchNorm1d(channels[i]), nn.ReLU()]
    return nn.Sequential(*layers)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(kpt - centre) / (0.7 * longer side), in fp32 (fp64 for fp64 keypoints).

    kpts: B x N x 2 pixels; size: B x 2 (w, h) of the image the keypoints belong to.
    """
    kpts = _at_least_fp32(kpts)
    size = size.to(device=kpts.device, dtype=kpts.dtype)
    centre = size / 2
    scale = 0.7 * size.max(-1).values
    return (kpts - centre[:, None, :]) / scale[:, None, None]


class KeypointEncoder(nn.Module):
    """MLP from (x, y, score) to the descriptor dimension."""

    def __init__(self, dim: int, layers: list[int]) -> None:
        super().__init__()
        self.encoder = _mlp([3, *layers, dim])

    def forward(self, kpts: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """kpts: B x N x 2 (normalised), scores: B x N -> B x dim x N."""
        inputs = torch.cat([kpts.transpose(1, 2), scores[:, None, :].to(kpts)], dim=1)
        return self.encoder(inputs)


def split_heads(x: torch.Tensor) -> torch.Tensor:
    """B x (64*4) x N -> B x 4 x N x 64.

    The checkpoint's heads are interleaved: channel c belongs to head c % 4 at position c // 4
    (the official code views the channels as (dim, heads)). Splitting them as contiguous
    blocks loads silently and gives garbage.
    """
    b, c, n = x.shape
    # Contiguous per head: fused attention kernels want the head dimension last and dense.
    return x.view(b, c // NUM_HEADS, NUM_HEADS, n).permute(0, 2, 3, 1).contiguous()


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Inverse of split_heads: B x 4 x N x 64 -> B x 256 x N."""
    b, h, n, d = x.shape
    return x.permute(0, 3, 1, 2).reshape(b, d * h, n)


class MultiHeadAttention(nn.Module):
    """4-head scaled dot-product attention with 1x1-conv query/key/value projections
    (`proj.0/1/2`) and output projection (`merge`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.merge = Conv1x1(dim, dim)
        self.proj = nn.ModuleList([Conv1x1(dim, dim) for _ in range(3)])

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value heads (each B x 4 x N x 64) of descriptors B x D x N."""
        return tuple(split_heads(p(x)) for p in self.proj)  # type: ignore[return-value]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(64)) v per head, merged: B x D x N."""
        # SDPA applies the 1/sqrt(head_dim) scale and takes fused kernels where available.
        context = F.scaled_dot_product_attention(q, k, v)
        return self.merge(merge_heads(context))

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.proj[0](x))
        k, v = split_heads(self.proj[1](source)), split_heads(self.proj[2](source))
        return self.attend(q, k, v)


class AttentionalPropagation(nn.Module):
    """One GNN layer's update: attention message, then MLP([x, message]) -> delta."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim)
        self.mlp = _mlp([2 * dim, 2 * dim, dim])

    def delta(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x, message], dim=1))

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor,
                cross: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images' new descriptors, each computed from the old ones of both."""
        # Each image's q, k, v are projected once and reused by the other image's message.
        q0, k0, v0 = self.attn.project(desc0)
        q1, k1, v1 = self.attn.project(desc1)
        if cross:
            m0, m1 = self.attn.attend(q0, k1, v1), self.attn.attend(q1, k0, v0)
        else:
            m0, m1 = self.attn.attend(q0, k0, v0), self.attn.attend(q1, k1, v1)
        return desc0 + self.delta(desc0, m0), desc1 + self.delta(desc1, m1)


class AttentionalGNN(nn.Module):
    def __init__(self, dim: int, layer_names: list[str]) -> None:
        super().__init__()
        bad = set(layer_names) - {"self", "cross"}
        if bad:
            raise ValueError(f"GNN layers must be 'self' or 'cross', got {sorted(bad)}")
        self.names = list(layer_names)
        self.layers = nn.ModuleList([AttentionalPropagation(dim) for _ in layer_names])


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor,
                          iterations: int) -> torch.Tensor:
    """Log-domain Sinkhorn over the score matrix augmented with a dustbin row and column.

    scores: B x M x N. Every dustbin entry (including the corner) is `bin_score`. The target
    marginals are 1 for each point and N (resp. M) for the dustbin row (resp. column), scaled
    by 1 / (M + N) during the iterations; the result is returned scaled back, so exp() of it
    has row sums ~[1]*M + [N] and column sums ~[1]*N + [M]. Computed in fp32 (or fp64 for
    fp64 scores), whatever the input dtype or autocast. Returns B x (M+1) x (N+1).
    """
    with torch.autocast(device_type=scores.device.type, enabled=False):
        scores = _at_least_fp32(scores)
        alpha = bin_score.to(scores)
        b, m, n = scores.shape
        couplings = torch.cat([
            torch.cat([scores, alpha.expand(b, m, 1)], dim=2),
            alpha.expand(b, 1, n + 1)], dim=1)
        norm = -math.log(m + n)
        log_mu = scores.new_full((m + 1,), norm)
        log_mu[m] = math.log(n) + norm
        log_nu = scores.new_full((n + 1,), norm)
        log_nu[n] = math.log(m) + norm
        log_mu, log_nu = log_mu.expand(b, -1), log_nu.expand(b, -1)
        u = torch.zeros_like(log_mu)
        v = torch.zeros_like(log_nu)
        for _ in range(iterations):
            # Alternately rescale rows and columns to their marginals (in log space).
            u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
            v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
        return couplings + u[:, :, None] + v[:, None, :] - norm


class SuperGlue(nn.Module):
    default_conf: dict[str, Any] = {
        "weights": "indoor",              # or "outdoor": same architecture, other training
        "descriptor_dim": 256,
        "keypoint_encoder": [32, 64, 128, 256],
        "gnn_layers": ["self", "cross"] * 9,
        "sinkhorn_iterations": 100,       # the class default; the official scripts use 20
        "match_threshold": 0.2,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown SuperGlue options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        if self.conf["weights"] not in ("indoor", "outdoor"):
            raise ValueError(f"SuperGlue weights must be 'indoor' or 'outdoor', "
                             f"got {self.conf['weights']!r}")
        dim = self.conf["descriptor_dim"]
        if dim % NUM_HEADS:
            raise ValueError(f"descriptor_dim must be a multiple of {NUM_HEADS}")
        self.descriptor_dim = dim
        self.kenc = KeypointEncoder(dim, list(self.conf["keypoint_encoder"]))
        self.gnn = AttentionalGNN(dim, list(self.conf["gnn_layers"]))
        self.final_proj = Conv1x1(dim, dim)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    @property
    def checkpoint_key(self) -> str:
        """Key of this model's checkpoint in weights.CHECKPOINTS."""
        return f"superglue-{self.conf['weights']}"

    @property
    def num_layers(self) -> int:
        return len(self.gnn.layers)

    @staticmethod
    def rename_official_keys(state: dict) -> dict:
        """Add a zero `num_batches_tracked` for any BatchNorm whose counter the file lacks
        (files written before PyTorch 0.4.1 have none; torch's own loader does the same).
        The counter does not affect inference."""
        state = dict(state)
        for key in list(state):
            if key.endswith(".running_mean"):
                counter = key[: -len("running_mean")] + "num_batches_tracked"
                state.setdefault(counter, torch.tensor(0, dtype=torch.long))
        return state

    def log_assignment(self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor,
                       desc1: torch.Tensor, size0: torch.Tensor, size1: torch.Tensor,
                       scores0: torch.Tensor, scores1: torch.Tensor,
                       hook: LayerHook | None = None) -> torch.Tensor:
        """The log assignment B x (M+1) x (N+1) (fp32) of B pairs with equal point counts.

        kpts: B x N x 2 pixels; desc: B x N x D; size: B x 2 (w, h); scores: B x N.
        """
        m, n = kpts0.shape[1], kpts1.shape[1]
        for name, desc in (("desc0", desc0), ("desc1", desc1)):
            if desc.shape[-1] != self.descriptor_dim:
                raise ValueError(f"{name} has {desc.shape[-1]} channels; SuperGlue expects "
                                 f"{self.descriptor_dim}")
        pos0, pos1 = normalize_keypoints(kpts0, size0), normalize_keypoints(kpts1, size1)
        x0 = desc0.transpose(1, 2) + self.kenc(pos0, scores0)
        x1 = desc1.transpose(1, 2) + self.kenc(pos1, scores1)
        for i, (layer, name) in enumerate(zip(self.gnn.layers, self.gnn.names)):
            if hook is not None:
                # SuperGlue's only assignment is after the last layer: it cannot stop early,
                # so the hook only observes (its return value is ignored).
                hook.before_layer(i, m, n)
            x0, x1 = layer(x0, x1, cross=name == "cross")
        if hook is not None:
            hook.before_assignment(self.num_layers - 1, m, n)
        mdesc0, mdesc1 = self.final_proj(x0), self.final_proj(x1)
        with torch.autocast(device_type=mdesc0.device.type, enabled=False):
            # The similarity reaches large magnitudes before the scaling: fp32, like Sinkhorn.
            sim = torch.einsum("bdm,bdn->bmn", _at_least_fp32(mdesc0), _at_least_fp32(mdesc1))
            sim = sim / math.sqrt(self.descriptor_dim)
        return log_optimal_transport(sim, self.bin_score, self.conf["sinkhorn_iterations"])

    @torch.no_grad()
    def forward(self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor,
                desc1: torch.Tensor, size0: torch.Tensor, size1: torch.Tensor,
                scores0: torch.Tensor, scores1: torch.Tensor,
                hook: LayerHook | None = None) -> MatchOutput:
        """Match one pair. kpts: 1 x N x 2 pixels, desc: 1 x N x D, size: 1 x 2 (w, h),
        scores: 1 x N keypoint detection scores.

        `hook` (as LightGlue's) sees every layer and the assignment, but cannot stop the stack:
        SuperGlue always runs to full depth.
        """
        if kpts0.shape[0] != 1 or kpts1.shape[0] != 1:
            raise ValueError("SuperGlue.forward matches one pair at a time (batch size 1)")
        m, n = kpts0.shape[1], kpts1.shape[1]
        device = kpts0.device
        if m == 0 or n == 0:
            return MatchOutput(torch.empty((0, 2), dtype=torch.long, device=device),
                               torch.empty(0, device=device), 0, EXIT_NO_KEYPOINTS,
                               self.num_layers, m, n, [])
        scores = self.log_assignment(kpts0, kpts1, desc0, desc1, size0, size1, scores0,
                                     scores1, hook)
        matches0, _, mscores0, _ = filter_matches(scores, self.conf["match_threshold"])
        valid = matches0[0] > -1
        matches = torch.stack([valid.nonzero()[:, 0], matches0[0][valid]], -1)
        return MatchOutput(matches, mscores0[0][valid], self.num_layers, EXIT_FULL_DEPTH,
                           self.num_layers, m, n, [(m, n)] * self.num_layers)
