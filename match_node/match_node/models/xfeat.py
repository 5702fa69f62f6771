"""XFeat sparse keypoints and descriptors (Potje et al., CVPR 2024), loading the official
weights, and the key mapping that loads LighterGlue (XFeat's small LightGlue) into our LightGlue.

The network works on a grey, instance-normalised image whose sides are multiples of 32:
  * a backbone of conv-BN-ReLU layers down to 1/32, with the 1/16 and 1/32 maps fused into the
    1/8 map -> a 64-d dense descriptor map at 1/8 resolution;
  * a reliability head on that map (sigmoid, 1/8 resolution);
  * a keypoint head that sees each 8x8 pixel cell of the normalised image as 64 channels and
    predicts 65 logits: one per pixel of the cell plus a "no keypoint" bin. A softmax over the
    65 and the 64 pixel channels put back in place (pixel shuffle) give a full-resolution
    keypoint heatmap.
Sparse extraction (the official `detectAndCompute`): local maxima of the heatmap in a 5x5
window above `detection_threshold`, score = heatmap x reliability, best `max_num_keypoints`
kept, descriptors read from the L2-normalised dense map by bicubic interpolation and
L2-normalised again.

Parameter names follow the official checkpoint (`xfeat.pt`) so it loads unchanged; it also
holds the XFeat* refinement MLP (`fine_matcher`), unused here but kept for strict loading.

Same numbers as the official code, computed with less work on the CPU: the BatchNorm layers
are folded into their convolutions at inference, and non-maximum suppression compares only the
pixels above the threshold with their neighbours instead of max-pooling the full-resolution
heatmap (together about 20% of the official extraction time at 640x480).

Keypoint coordinates: the official code resizes the image (bilinear, align_corners=False) to
the largest multiples of 32 not above its size, detects on integer pixels of that resized
image and returns them multiplied by the size ratio, x_official = x_r * W / W_r. That maps the
resized image's pixel centres onto the input's only when the ratio is 1. This module returns
the same keypoints in the project's convention (pixel centres at integer coordinates of the
input image): x = (x_r + 0.5) * W / W_r - 0.5 = x_official + 0.5 * (W / W_r - 1), and likewise
for y. For sides that are already multiples of 32 both are identical.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lightglue import LightGlue
from .nms import local_maxima_above


class BasicLayer(nn.Module):
    """Conv (no bias) -> BatchNorm without affine parameters -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      bias=False),
            nn.BatchNorm2d(out_channels, affine=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.layer(x)
        # Inference: the BatchNorm uses its running statistics, an affine map per channel, so
        # it is folded into the convolution (one pass over the map instead of two; about a
        # fifth of the CPU time). Folding costs a few small ops on the weights per call.
        conv, norm = self.layer[0], self.layer[1]
        scale = torch.rsqrt(norm.running_var + norm.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = -norm.running_mean * scale
        return F.relu(F.conv2d(x, weight, bias, conv.stride, conv.padding), inplace=True)


def _layers(*specs: tuple[int, ...]) -> nn.Sequential:
    """BasicLayers from (in, out[, kernel, stride, padding]) tuples."""
    return nn.Sequential(*(BasicLayer(*spec) for spec in specs))


def _sample(values: torch.Tensor, points: torch.Tensor, size: tuple[int, int],
            mode: str) -> torch.Tensor:
    """Read `values` (1 x C x h x w) at N x 2 pixel positions (x, y) of the W x H image that
    `size` = (W, H) gives: N x C.

    The positions are normalised as for align_corners=True (x / (W - 1)) but sampled with
    align_corners=False, exactly as the official interpolator does, so a map of width w is
    read at u = x * w / (W - 1) - 0.5 (zero outside). For the full-resolution heatmap with
    `nearest` this reads column x + 1 instead of x in the right half of the image (rounding
    of x + x / (W - 1) - 0.5). It is kept as it is because the official scores, and therefore
    which keypoints the top-k keeps, are defined by it.
    """
    w, h = size
    scale = torch.tensor([w - 1, h - 1], device=points.device, dtype=torch.float32)
    grid = (2.0 * (points.float() / scale) - 1.0).to(values.dtype)
    sampled = F.grid_sample(values, grid.view(1, -1, 1, 2), mode=mode, align_corners=False)
    return sampled[0, :, :, 0].t()


def _peaks(heatmap: torch.Tensor, threshold: float, radius: int) -> torch.Tensor:
    """Pixels (x, y) of a H x W heatmap above `threshold` that equal the maximum of their
    (2r+1)^2 window (pixels outside the image do not count), in row-major order: N x 2 long.

    This is the official `x == max_pool(x) & x > threshold`. Only pixels above the threshold
    can be peaks, and with the official threshold they are a few percent of the image, so
    comparing just those with each other (nms.local_maxima_above without recovery rounds) is
    several times cheaper than max-pooling the full-resolution map.
    """
    h, w = heatmap.shape
    candidates = (heatmap > threshold).nonzero()                   # N x 2 (y, x)
    if threshold > 0 and candidates.shape[0] <= h * w // 8:
        index = local_maxima_above(heatmap, radius, threshold, rounds=0,
                                   candidates=candidates)
        return torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], 1)
    # Dense case (a low threshold): a max filter, separable into rows then columns.
    k = 2 * radius + 1
    pooled = F.max_pool2d(heatmap[None, None], (1, k), stride=1, padding=(0, radius))
    pooled = F.max_pool2d(pooled, (k, 1), stride=1, padding=(radius, 0))[0, 0]
    return ((heatmap == pooled) & (heatmap > threshold)).nonzero().flip(-1)


class XFeat(nn.Module):
    default_conf: dict[str, Any] = {
        "max_num_keypoints": 4096,     # the official top_k; <= 0: no cap
        "detection_threshold": 0.05,   # on the keypoint heatmap (softmax probability)
        "nms_radius": 2,               # the official 5x5 max-pool window
    }
    descriptor_dim = 64
    cell = 8          # keypoint head: one 65-way softmax per 8x8 pixel cell
    multiple = 32     # the backbone's total stride: input sides are resized to multiples

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown XFeat options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}

        # Backbone. Strides: block1 /4, block3 /8, block4 /16, block5 /32.
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = _layers((1, 4), (4, 8, 3, 2), (8, 8), (8, 24, 3, 2))
        self.block2 = _layers((24, 24), (24, 24))
        self.block3 = _layers((24, 64, 3, 2), (64, 64), (64, 64, 1, 1, 0))
        self.block4 = _layers((64, 64, 3, 2), (64, 64), (64, 64))
        self.block5 = _layers((64, 128, 3, 2), (128, 128), (128, 128), (128, 64, 1, 1, 0))
        self.block_fusion = nn.Sequential(BasicLayer(64, 64), BasicLayer(64, 64),
                                          nn.Conv2d(64, 64, 1))
        self.heatmap_head = nn.Sequential(BasicLayer(64, 64, 1, 1, 0),
                                          BasicLayer(64, 64, 1, 1, 0),
                                          nn.Conv2d(64, 1, 1), nn.Sigmoid())
        self.keypoint_head = nn.Sequential(BasicLayer(64, 64, 1, 1, 0),
                                           BasicLayer(64, 64, 1, 1, 0),
                                           BasicLayer(64, 64, 1, 1, 0),
                                           nn.Conv2d(64, self.cell ** 2 + 1, 1))
        # The MLP that refines matches of the semi-dense XFeat* mode. The sparse path does not
        # use it; it is kept so that the official file loads strictly, every key checked.
        mlp: list[nn.Module] = []
        for in_features in (128, 512, 512, 512):
            mlp += [nn.Linear(in_features, 512), nn.BatchNorm1d(512, affine=False),
                    nn.ReLU(inplace=True)]
        self.fine_matcher = nn.Sequential(*mlp, nn.Linear(512, 64))
        # Where `dense` runs: None for this module in PyTorch, or a callable with the same
        # input and outputs (a compiled inference-engine model; engine/backends.py).
        self.dense_runner: Any = None

    # --- dense maps -------------------------------------------------------------------------
    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the network runs at: each side rounded down to a multiple of 32, as the
        official code does (at least 32, where the official code would fail)."""
        m = self.multiple
        return max(m, height // m * m), max(m, width // m * m)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Grey (mean of the channels, as the official code), resized to the working size,
        instance-normalised: B x 1 x H' x W'."""
        grey = image.float().mean(dim=1, keepdim=True)
        size = self.working_size(*image.shape[-2:])
        if tuple(grey.shape[-2:]) != size:
            # Channel mean and bilinear resizing are both linear: averaging first resizes one
            # channel instead of three (the official code resizes the colour image).
            grey = F.interpolate(grey, size, mode="bilinear", align_corners=False)
        return F.instance_norm(grey, eps=1e-5)

    def dense_maps(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network outputs for a Bx3xHxW (or Bx1xHxW) image in [0, 1]: the L2-normalised
        descriptor map (B x 64 x H'/8 x W'/8), the keypoint heatmap (B x 1 x H' x W', fp32)
        and the reliability map (B x 1 x H'/8 x W'/8), at the working size H' x W'."""
        x = self.preprocess(image).to(self.skip1[1].weight.dtype)
        x1 = self.block1(x)
        x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        # Pyramid fusion at 1/8.
        size = x3.shape[-2:]
        fused = (x3 + F.interpolate(x4, size, mode="bilinear", align_corners=False)
                 + F.interpolate(x5, size, mode="bilinear", align_corners=False))
        features = self.block_fusion(fused)
        reliability = self.heatmap_head(features)
        logits = self.keypoint_head(F.pixel_unshuffle(x, self.cell))
        # Softmax over the 64 cell pixels and the "no keypoint" bin (dropped), in fp32.
        probabilities = torch.softmax(logits.float(), dim=1)[:, :-1]
        heatmap = F.pixel_shuffle(probabilities, self.cell)
        return F.normalize(features, dim=1), heatmap, reliability

    def dense(self, image: torch.Tensor) -> list[torch.Tensor]:
        """`dense_maps` as a list: the part an inference engine compiles (fixed shapes per
        image size; peak finding and sampling, which have data-dependent shapes, stay here)."""
        return list(self.dense_maps(image))

    # --- sparse extraction ------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Detect and describe. image: Bx3xHxW (or Bx1xHxW) in [0, 1].

        Returns lists (one entry per image) of keypoints (N x 2, (x, y) pixels of the input
        image, pixel centres at integers), keypoint_scores (N, sorted descending) and
        descriptors (N x 64, unit norm).
        """
        height, width = image.shape[-2:]
        descriptors_map, heatmap, reliability = (self.dense_runner or self.dense)(image)
        work_h, work_w = heatmap.shape[-2:]
        size = (work_w, work_h)
        radius = int(self.conf["nms_radius"])
        threshold = float(self.conf["detection_threshold"])
        cap = int(self.conf["max_num_keypoints"])
        ratio = torch.tensor([width / work_w, height / work_h], device=image.device)

        keypoints, keypoint_scores, descriptors = [], [], []
        for i in range(image.shape[0]):
            xy = _peaks(heatmap[i, 0], threshold, radius)             # N x 2 (x, y)
            scores = (_sample(heatmap[i:i + 1], xy, size, "nearest")[:, 0]
                      * _sample(reliability[i:i + 1].float(), xy, size, "bilinear")[:, 0])
            # A zero score (e.g. read outside the map, see _sample) is no keypoint, as in the
            # official code. (The official code also drops a peak at pixel (0, 0), its padding
            # marker; such a peak is kept here.)
            keep = scores > 0
            xy, scores = xy[keep], scores[keep]
            scores, order = scores.sort(descending=True, stable=True)
            if cap > 0:
                scores, order = scores[:cap], order[:cap]
            xy = xy[order]
            desc = _sample(descriptors_map[i:i + 1], xy, size, "bicubic")
            keypoints.append((xy.float() + 0.5) * ratio - 0.5)
            keypoint_scores.append(scores)
            descriptors.append(F.normalize(desc.float(), dim=-1))
        return {"keypoints": keypoints, "keypoint_scores": keypoint_scores,
                "descriptors": descriptors}


def lighterglue_rename(state: dict) -> dict:
    """Keys of the official `xfeat-lighterglue.pt` for `LightGlue(features="xfeat")`.

    The file holds the whole official pipeline: `extractor.*` (a copy of XFeat, not needed
    here) and `matcher.*` (LighterGlue). The matcher part is kept with its prefix removed and
    older layer names mapped by LightGlue.rename_official_keys. A state without any
    `matcher.` key is taken as a LightGlue state dict already and only renamed.
    """
    prefix = "matcher."
    if any(key.startswith(prefix) for key in state):
        state = {key[len(prefix):]: value for key, value in state.items()
                 if key.startswith(prefix)}
    return LightGlue.rename_official_keys(state)
