"""LightGlue (Lindenberger et al., ICCV 2023), loading the official checkpoints.
(Over 400 lines: one readable file per model, as the official code.)

A stack of transformer layers, each a self-attention block with rotary encoding of the
normalised keypoint positions and a bidirectional cross-attention block. After each layer a
token-confidence head may stop the stack early (adaptive depth) and a matchability head may
prune points that cannot match (adaptive width). The assignment of the exit layer is a
log double-softmax with matchability priors; matches are mutual best entries above a
threshold.

Design for real time: `forward` accepts a `hook` (see LayerHook) consulted before every
layer and before the assignment, so a latency controller can time the layers and stop the
stack at a deadline without this module knowing about time. Numerics: keypoint normalisation, LayerNorm, softmax
and the log-assignment run in fp32 even under fp16 autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..messages import EXIT_BUDGET, EXIT_CONFIDENCE, EXIT_FULL_DEPTH, EXIT_NO_KEYPOINTS

# The official feature configurations: descriptor dimension, positional inputs and, for
# XFeat's LighterGlue, a smaller transformer (96-d, 1 head, 6 layers) with its own defaults
# (no early exit, pruning at 0.95). Which file each one loads: engine/families.py.
FEATURES: dict[str, dict[str, Any]] = {
    "aliked": {"input_dim": 128, "add_scale_ori": False},
    "disk": {"input_dim": 128, "add_scale_ori": False},
    "superpoint": {"input_dim": 256, "add_scale_ori": False},
    "sift": {"input_dim": 128, "add_scale_ori": True},
    "xfeat": {"input_dim": 64, "add_scale_ori": False, "descriptor_dim": 96, "num_heads": 1,
              "n_layers": 6, "depth_confidence": -1, "width_confidence": 0.95},
}


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Centre keypoints on the image and divide by half its longer side (fp32).

    kpts: B x N x 2 pixels; size: B x 2 (width, height) of the frame the keypoints belong to.
    """
    kpts, size = kpts.float(), size.float().to(kpts.device)
    shift = size / 2
    scale = size.max(-1).values / 2
    return (kpts - shift[:, None, :]) / scale[:, None, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the rotary pairs, held as the two halves of the channels: (x1, x2) -> (-x2, x1).
    (The official code holds each pair in consecutive channels; SelfBlock orders q's and k's
    channels as halves, see SelfBlock.qkv_parameters, which leaves every q.k unchanged.)"""
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)


def apply_rotary(encoding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """encoding: 2 x B x 1 x N x D holding (cos, sin), each frequency in both halves."""
    return x * encoding[0] + rotate_half(x) * encoding[1]


class LearnableFourierPositionalEncoding(nn.Module):
    def __init__(self, in_dim: int, head_dim: int) -> None:
        super().__init__()
        self.Wr = nn.Linear(in_dim, head_dim // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.Wr(x)
        encoding = torch.stack([projected.cos(), projected.sin()], 0).unsqueeze(-3)
        return torch.cat([encoding, encoding], -1)  # the pairs as halves (see rotate_half)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype or autocast (same parameters and
    state-dict keys as nn.LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CUDA autocast runs layer_norm in fp32 but CPU autocast does not: its fp16 variance
        # loses precision, so the cast is explicit for every device.
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


def _ffn(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2 * dim, 2 * dim), FP32LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None for an inference tensor, which has none
    and cannot change outside inference mode)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class SelfBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)
        self._qkv_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def qkv_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Wqkv's weight and bias with their output rows reordered, derived once per
        parameter tensor (the parameters themselves keep the checkpoint's layout). The
        checkpoint interleaves (head, channel, q/k/v); here q, k and v are each one block of
        (head, channel), so they are views of the projection without copies, and each head's
        q and k channels come as the halves of the rotary pairs (even channels, then odd),
        which makes the rotation two half-width products instead of a pair shuffle. The same
        permutation of q's and k's channels leaves every q.k product unchanged. Self block
        at 1024 points, one thread: 51 ms against 55."""
        weight, bias = self.Wqkv.weight, self.Wqkv.bias
        if torch.is_grad_enabled() and weight.requires_grad:
            rows = self._qkv_rows(weight.shape[1], weight.device)
            return weight[rows], bias[rows]  # differentiable, so not cached
        key = (weight.data_ptr(), _version(weight), bias.data_ptr(), _version(bias),
               weight.dtype, weight.device)
        if self._qkv_cache is None or self._qkv_cache[0] != key:
            rows = self._qkv_rows(weight.shape[1], weight.device)
            self._qkv_cache = (key, weight.detach()[rows].contiguous(),
                               bias.detach()[rows].contiguous())
        return self._qkv_cache[1], self._qkv_cache[2]

    def _qkv_rows(self, dim: int, device: torch.device) -> torch.Tensor:
        """The checkpoint's Wqkv row of each row of qkv_parameters' layout."""
        head_dim = dim // self.num_heads
        halves = torch.cat([torch.arange(0, head_dim, 2, device=device),
                            torch.arange(1, head_dim, 2, device=device)])
        channel = torch.stack([halves, halves, torch.arange(head_dim, device=device)])
        head = torch.arange(self.num_heads, device=device)[None, :, None]
        which = torch.arange(3, device=device)[:, None, None]   # q, k, v
        return (head * head_dim * 3 + channel[:, None, :] * 3 + which).flatten()

    def forward(self, x: torch.Tensor, encoding: torch.Tensor) -> torch.Tensor:
        weight, bias = self.qkv_parameters()
        q, k, v = (F.linear(x, weight, bias).unflatten(-1, (3, self.num_heads, -1))
                   .permute(2, 0, 3, 1, 4).unbind(0))    # each B x heads x N x head_dim
        q, k = apply_rotary(encoding, q), apply_rotary(encoding, k)
        # SDPA applies the 1/sqrt(head_dim) scale and takes fused kernels on the GPU.
        context = F.scaled_dot_product_attention(q, k, v)
        message = self.out_proj(context.transpose(1, 2).flatten(-2))
        return x + self.ffn(torch.cat([x, message], -1))


class CrossBlock(nn.Module):
    """Bidirectional cross-attention: each image's points attend to the other's, with one
    query-key projection shared by both directions (the official architecture)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qk = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.ffn = _ffn(dim)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2).contiguous()

        qk0, qk1 = heads(self.to_qk(x0)), heads(self.to_qk(x1))
        v0, v1 = heads(self.to_v(x0)), heads(self.to_v(x1))
        # Two fused attentions (the similarity in both directions, never stored) beat one
        # explicit similarity normalised along both axes, on the GPU and on the CPU alike:
        # a cross block of 1000 x 900 points on 2 CPU threads takes 46-50 ms against 84, at
        # 500 x 480 20 against 22 (outputs within 6e-7).
        m0 = F.scaled_dot_product_attention(qk0, qk1, v1)
        m1 = F.scaled_dot_product_attention(qk1, qk0, v0)
        m0, m1 = (self.to_out(m.transpose(1, 2).flatten(-2)) for m in (m0, m1))
        return (x0 + self.ffn(torch.cat([x0, m0], -1)),
                x1 + self.ffn(torch.cat([x1, m1], -1)))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = SelfBlock(dim, num_heads)
        self.cross_attn = CrossBlock(dim, num_heads)

    def forward(self, desc0, desc1, encoding0, encoding1):
        return self.cross_attn(self.self_attn(desc0, encoding0), self.self_attn(desc1, encoding1))


def log_double_softmax(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """(M+1) x (N+1) log assignment: dual log-softmax plus log-sigmoid matchability, and the
    unmatchable (dustbin) row and column. Every term is a log-sum-exp form, stable in fp32."""
    sim, z0, z1 = sim.float(), z0.float(), z1.float()
    b, m, n = sim.shape
    scores = sim.new_zeros((b, m + 1, n + 1))
    scores[:, :m, :n] = (F.log_softmax(sim, 2) + F.log_softmax(sim, 1)
                         + F.logsigmoid(z0) + F.logsigmoid(z1).transpose(1, 2))
    scores[:, :m, n] = F.logsigmoid(-z0.squeeze(-1))
    scores[:, m, :n] = F.logsigmoid(-z1.squeeze(-1))
    return scores


class MatchAssignment(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.matchability = nn.Linear(dim, 1)
        self.final_proj = nn.Linear(dim, dim)

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
        scale = desc0.shape[-1] ** -0.25
        mdesc0, mdesc1 = self.final_proj(desc0) * scale, self.final_proj(desc1) * scale
        sim = mdesc0 @ mdesc1.transpose(-1, -2)
        return log_double_softmax(sim, self.matchability(desc0), self.matchability(desc1))

    def matchability_probability(self, desc: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.matchability(desc).float()).squeeze(-1)


class TokenConfidence(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        return self.token(desc).float().squeeze(-1)


def filter_matches(scores: torch.Tensor, threshold: float):
    """Mutual best entries of the assignment (dustbins excluded) with probability > threshold.

    Returns matches0 (B x M, index into image 1 or -1), matches1 (B x N), and the match
    probabilities of each point (0 where unmatched).
    """
    inner = scores[:, :-1, :-1]
    max0, max1 = inner.max(2), inner.max(1)
    m0, m1 = max0.indices, max1.indices
    ar0 = torch.arange(m0.shape[1], device=m0.device)[None]
    ar1 = torch.arange(m1.shape[1], device=m1.device)[None]
    mutual0 = ar0 == m1.gather(1, m0)
    mutual1 = ar1 == m0.gather(1, m1)
    zero = inner.new_tensor(0.0)
    mscores0 = torch.where(mutual0, max0.values.exp(), zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, m1), zero)
    valid0 = mutual0 & (mscores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, m1)
    return (torch.where(valid0, m0, -1), torch.where(valid1, m1, -1), mscores0, mscores1)


class LayerHook(Protocol):
    """What a latency controller sees of the layer loop."""

    def before_layer(self, layer: int, n0: int, n1: int) -> bool:
        """Called before layer `layer` (0-based) with the active point counts. Returning
        False stops the stack (honoured from layer 1 on: at least one layer always runs)."""

    def before_assignment(self, layer: int, n0: int, n1: int) -> None:
        """Called after the last layer that ran (`layer`), before the assignment."""


@dataclass
class MatchOutput:
    """Matches of one image pair (batch size 1) in compact form, on the model's device."""
    matches: torch.Tensor        # K x 2 indices into keypoints0 / keypoints1
    scores: torch.Tensor         # K match probabilities
    exit_layer: int              # 1-based layer whose assignment was used (0: none ran)
    exit_reason: int             # EXIT_* code
    num_layers: int
    kept0: int                   # points still active at the exit, per image
    kept1: int
    layer_points: list[tuple[int, int]]  # active points per image at each layer run
    guard_fired: bool = False            # the exit guard refused a collapsed early exit


class LightGlue(nn.Module):
    default_conf: dict[str, Any] = {
        "features": "aliked",
        "descriptor_dim": 256,
        "n_layers": 9,
        "num_heads": 4,
        "depth_confidence": 0.95,   # early exit; -1 disables
        "width_confidence": 0.99,   # point pruning; -1 disables
        "filter_threshold": 0.1,    # match threshold
        # Pruning costs a gather; below this many points per image it does not pay.
        # The official code uses -1 (always) on the CPU and 1024 on CUDA.
        "pruning_min_points": {"cpu": -1, "cuda": 1024},
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown LightGlue options: {sorted(unknown)}")
        features = conf.get("features", self.default_conf["features"])
        # The configuration's own architecture and defaults, then the caller's options.
        self.conf = {**self.configuration(features), **conf}
        spec = FEATURES[features]
        dim, heads, n = self.conf["descriptor_dim"], self.conf["num_heads"], self.conf["n_layers"]
        self.input_dim = spec["input_dim"]
        self.add_scale_ori = spec["add_scale_ori"]
        self.input_proj = (nn.Linear(self.input_dim, dim) if self.input_dim != dim
                           else nn.Identity())
        self.posenc = LearnableFourierPositionalEncoding(2 + 2 * self.add_scale_ori, dim // heads)
        self.transformers = nn.ModuleList([TransformerLayer(dim, heads) for _ in range(n)])
        self.log_assignment = nn.ModuleList([MatchAssignment(dim) for _ in range(n)])
        self.token_confidence = nn.ModuleList([TokenConfidence(dim) for _ in range(n - 1)])

    @classmethod
    def configuration(cls, features: str) -> dict[str, Any]:
        """The options a LightGlue of configuration `features` has unless told otherwise:
        default_conf with the configuration's own architecture and settings."""
        if features not in FEATURES:
            raise ValueError(f"LightGlue has no {features!r} configuration; "
                             f"choose from {sorted(FEATURES)}")
        own = {k: v for k, v in FEATURES[features].items() if k in cls.default_conf}
        return {**cls.default_conf, "features": features, **own}

    def confidence_threshold(self, layer: int) -> float:
        """Token-confidence threshold of layer `layer` (0-based): stricter for early layers."""
        value = 0.8 + 0.1 * math.exp(-4.0 * layer / self.conf["n_layers"])
        return min(max(value, 0.0), 1.0)

    @staticmethod
    def rename_official_keys(state: dict) -> dict:
        """Map the older checkpoint layout (`self_attn.N.*`, `cross_attn.N.*`) to the current
        one and drop the unused `log_assignment.N.r` entries that some files carry."""
        renamed = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] in ("self_attn", "cross_attn") and len(parts) > 1 and parts[1].isdigit():
                key = ".".join(["transformers", parts[1], parts[0], *parts[2:]])
            if parts[0] == "log_assignment" and parts[-1] == "r" and len(parts) == 3:
                continue
            renamed[key] = value
        return renamed

    def _pruning_min_points(self, device: torch.device) -> int:
        table = self.conf["pruning_min_points"]
        return table.get(device.type, table.get("cuda", -1))

    @torch.no_grad()
    def forward(self, kpts0: torch.Tensor, kpts1: torch.Tensor, desc0: torch.Tensor,
                desc1: torch.Tensor, size0: torch.Tensor, size1: torch.Tensor,
                hook: LayerHook | None = None, scale_ori0: torch.Tensor | None = None,
                scale_ori1: torch.Tensor | None = None,
                min_exit_matches: int = 0) -> MatchOutput:
        """Match one pair. kpts: 1 x N x 2 pixels, desc: 1 x N x D, size: 1 x 2 (w, h).
        scale_ori: 1 x N x 2 (scale in pixels, orientation in radians), required by the
        configurations that take them (SIFT), passed unnormalised as the official code does.
        min_exit_matches > 0 arms the exit guard: a confidence-based exit whose assignment
        would keep fewer matches than this is refused and the stack continues (the budget's
        deadline still applies), because the official early exit can collapse on hard pairs.

        `hook.before_layer` may stop the stack before any layer after the first; the exit then
        takes the previous layer's assignment, with reason EXIT_BUDGET.
        """
        if kpts0.shape[0] != 1 or kpts1.shape[0] != 1:
            raise ValueError("LightGlue.forward matches one pair at a time (batch size 1)")
        m, n = kpts0.shape[1], kpts1.shape[1]
        device = kpts0.device
        n_layers = self.conf["n_layers"]
        if m == 0 or n == 0:
            return MatchOutput(torch.empty((0, 2), dtype=torch.long, device=device),
                               torch.empty(0, device=device), 0, EXIT_NO_KEYPOINTS, n_layers,
                               m, n, [])
        for name, desc in (("desc0", desc0), ("desc1", desc1)):
            if desc.shape[-1] != self.input_dim:
                raise ValueError(f"{name} has {desc.shape[-1]} channels; this LightGlue "
                                 f"({self.conf['features']}) expects {self.input_dim}")
        pos0 = normalize_keypoints(kpts0, size0)
        pos1 = normalize_keypoints(kpts1, size1)
        if self.add_scale_ori:
            if scale_ori0 is None or scale_ori1 is None:
                raise ValueError(f"this LightGlue ({self.conf['features']}) needs the "
                                 "keypoints' scales and orientations")
            pos0 = torch.cat([pos0, scale_ori0.float()], -1)
            pos1 = torch.cat([pos1, scale_ori1.float()], -1)
        encoding0, encoding1 = self.posenc(pos0), self.posenc(pos1)
        desc0, desc1 = self.input_proj(desc0), self.input_proj(desc1)

        depth_confidence = self.conf["depth_confidence"]
        width_confidence = self.conf["width_confidence"]
        do_exit = depth_confidence > 0
        do_prune = width_confidence > 0
        prune_min = self._pruning_min_points(device)
        index0 = torch.arange(m, device=device)
        index1 = torch.arange(n, device=device)
        layer_points: list[tuple[int, int]] = []
        reason = EXIT_FULL_DEPTH
        guard_fired = False
        layer = 0
        for layer in range(n_layers):
            if hook is not None and not hook.before_layer(layer, desc0.shape[1], desc1.shape[1]) \
                    and layer > 0:
                layer -= 1
                reason = EXIT_BUDGET
                break
            layer_points.append((desc0.shape[1], desc1.shape[1]))
            desc0, desc1 = self.transformers[layer](desc0, desc1, encoding0, encoding1)
            if layer == n_layers - 1:
                break
            confidence0 = confidence1 = None
            if do_exit:
                confidence0 = self.token_confidence[layer](desc0)
                confidence1 = self.token_confidence[layer](desc1)
                threshold = self.confidence_threshold(layer)
                # Pruned points count as confident: the ratio is over all original points.
                unconfident = (confidence0 < threshold).sum() + (confidence1 < threshold).sum()
                if 1.0 - unconfident.item() / (m + n) > depth_confidence:
                    if not (min_exit_matches > 0 and self._exit_matches(layer, desc0, desc1)
                            < min_exit_matches):
                        reason = EXIT_CONFIDENCE
                        break
                    guard_fired = True
            if do_prune:
                if desc0.shape[1] > prune_min:
                    keep0 = self._keep_mask(layer, desc0, confidence0, width_confidence)
                    index0, desc0, encoding0 = (index0[keep0], desc0[:, keep0],
                                                encoding0[..., keep0, :])
                if desc1.shape[1] > prune_min:
                    keep1 = self._keep_mask(layer, desc1, confidence1, width_confidence)
                    index1, desc1, encoding1 = (index1[keep1], desc1[:, keep1],
                                                encoding1[..., keep1, :])
            if desc0.shape[1] == 0 or desc1.shape[1] == 0:
                reason = EXIT_NO_KEYPOINTS
                break

        kept0, kept1 = desc0.shape[1], desc1.shape[1]
        if kept0 == 0 or kept1 == 0:
            return MatchOutput(torch.empty((0, 2), dtype=torch.long, device=device),
                               torch.empty(0, device=device), layer + 1, EXIT_NO_KEYPOINTS,
                               n_layers, kept0, kept1, layer_points)
        if hook is not None:
            hook.before_assignment(layer, kept0, kept1)
        scores = self.log_assignment[layer](desc0, desc1)
        matches0, _, mscores0, _ = filter_matches(scores, self.conf["filter_threshold"])
        valid = matches0[0] > -1
        matches = torch.stack([index0[valid], index1[matches0[0][valid]]], -1)
        return MatchOutput(matches, mscores0[0][valid], layer + 1, reason, n_layers,
                           kept0, kept1, layer_points, guard_fired)

    def _exit_matches(self, layer: int, desc0: torch.Tensor, desc1: torch.Tensor) -> int:
        """How many matches an exit after `layer` would return."""
        scores = self.log_assignment[layer](desc0, desc1)
        return int((filter_matches(scores, self.conf["filter_threshold"])[0] > -1).sum())

    def _keep_mask(self, layer: int, desc: torch.Tensor, confidence: torch.Tensor | None,
                   width_confidence: float) -> torch.Tensor:
        """Points to keep: matchable ones, and any whose confidence is still low."""
        keep = self.log_assignment[layer].matchability_probability(desc) > 1 - width_confidence
        if confidence is not None:
            keep |= confidence <= self.confidence_threshold(layer)
        return keep[0]
