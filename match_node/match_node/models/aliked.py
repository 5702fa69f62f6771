"""ALIKED keypoint detector and descriptor (Zhao et al., 2023), loading the official weights.
(Over 400 lines: one readable file per model, as the official code.)

The network: a four-stage encoder (two plain conv blocks, two deformable residual blocks),
multi-scale aggregation to a full-resolution feature map, a score head, differentiable
keypoint detection (NMS then soft-argmax in a 5x5 window), and the sparse deformable
descriptor head (SDDH) that samples the feature map at learned offsets around each keypoint.

Parameter names follow the official checkpoints (`aliked-{n16,n16rot,n32,t16}.pth`) so they
load unchanged. Input: RGB images in [0, 1], Bx3xHxW. Keypoints are returned in pixels of the
input image with integer values at pixel centres.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .nms import local_maxima_above, simple_nms

# Channel widths c1..c4, descriptor dim, SDDH kernel size and number of sample positions.
VARIANTS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "aliked-t16": (8, 16, 32, 64, 64, 3, 16),
    "aliked-n16": (16, 32, 64, 128, 128, 3, 16),
    "aliked-n16rot": (16, 32, 64, 128, 128, 3, 16),
    "aliked-n32": (16, 32, 64, 128, 128, 3, 32),
}


class DeformConv(nn.Module):
    """3x3 deformable convolution whose offsets come from a plain 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.offset_conv = nn.Conv2d(in_channels, 2 * 9, 3, padding=1, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = max(x.shape[-2:]) / 4.0  # offsets are bounded by a quarter of the map
        offset = self.offset_conv(x).clamp(-limit, limit)
        if torch.is_autocast_enabled(x.device.type):
            # Sampling positions in fp32, as torchvision's CUDA autocast wrapper does; its CPU
            # kernel has no half-precision version at all.
            with torch.autocast(x.device.type, enabled=False):
                return torchvision.ops.deform_conv2d(
                    x.float(), offset.float(), self.regular_conv.weight.float(),
                    self.regular_conv.bias, padding=(1, 1))
        return torchvision.ops.deform_conv2d(
            x, offset, self.regular_conv.weight, self.regular_conv.bias, padding=(1, 1))


def _conv3x3(in_channels: int, out_channels: int, deformable: bool) -> nn.Module:
    if deformable:
        return DeformConv(in_channels, out_channels)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Two conv-BN-SELU stages (the first encoder stage, no residual)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.selu(self.bn1(self.conv1(x)))
        return F.selu(self.bn2(self.conv2(x)))


class ResBlock(nn.Module):
    """Residual block with a 1x1 projection shortcut; convolutions optionally deformable."""

    def __init__(self, in_channels: int, out_channels: int, deformable: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, deformable)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, deformable)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.selu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.selu(out + self.downsample(x))


class SDDH(nn.Module):
    """Sparse deformable descriptor head.

    For each keypoint, a 3x3 patch of the feature map predicts `n_pos` sample offsets; the
    features sampled there are mixed by a 1x1 conv and aggregated with one weight matrix per
    sample position into an L2-normalised descriptor.
    """

    def __init__(self, dim: int, kernel_size: int, n_pos: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.n_pos = n_pos
        self.offset_conv = nn.Sequential(
            nn.Conv2d(dim, 2 * n_pos, kernel_size, bias=True),
            nn.SELU(),
            nn.Conv2d(2 * n_pos, 2 * n_pos, 1, bias=True),
        )
        self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.agg_weights = nn.Parameter(torch.empty(n_pos, dim, dim))

    def _patch_pixels(self, keypoints: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Pixels (x, y) of the k x k patch around each keypoint, N x k x k x 2.

        The top-left corner sits (k/2 - 1) pixels up-left of the keypoint and is clamped so
        that the patch stays one pixel inside the right and bottom edges, as in the official
        implementation (the checkpoints were trained with it).
        """
        w, h = size
        k = self.kernel_size
        corner = torch.trunc(keypoints.floor() - k / 2 + 1).long()
        cx = corner[:, 0].clamp(0, w - 1 - k)
        cy = corner[:, 1].clamp(0, h - 1 - k)
        steps = torch.arange(k, device=keypoints.device)
        xs = (cx[:, None] + steps[None])[:, None, :].expand(-1, k, -1)   # N x k x k
        ys = (cy[:, None] + steps[None])[:, :, None].expand(-1, -1, k)
        return torch.stack([xs, ys], -1)

    def forward(self, features: "FeatureSource", keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors (N x C, unit norm) of one image's keypoints (N x 2 pixels)."""
        w, h = features.size
        c = features.channels
        n = keypoints.shape[0]
        if n == 0:
            return keypoints.new_zeros((0, c))
        limit = max(h, w) / 4.0
        k = self.kernel_size
        patch = features.at_pixels(self._patch_pixels(keypoints, (w, h)).reshape(-1, 2))
        patch = patch.view(n, k, k, c).permute(0, 3, 1, 2)                # N x C x k x k
        offsets = self.offset_conv(patch).clamp(-limit, limit)           # N x 2P x 1 x 1
        offsets = offsets.view(n, 2, self.n_pos).transpose(1, 2)        # N x P x 2 (x, y)
        positions = keypoints[:, None, :] + offsets
        sampled = features.bilinear(positions.reshape(-1, 2))             # N*P x C
        # sf_conv is a 1x1 convolution over the P samples: a linear map of each sample's
        # channels, applied here in the samples' own layout (no N x C x P transpose).
        mixed = F.selu(F.linear(sampled, self.sf_conv.weight.view(c, c)))  # N*P x C
        # Sum over positions p and channels c of mixed[n, p, c] * agg_weights[p, c, d].
        desc = mixed.view(n, self.n_pos * c) @ self.agg_weights.view(self.n_pos * c, -1)
        return F.normalize(desc, p=2.0, dim=1)


def _bilinear_corners(x: torch.Tensor, y: torch.Tensor, width: int, height: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four cells around M points of a width x height grid (x, y in cells, cell centres
    at integers) with F.grid_sample's bilinear weights and zero padding: columns and rows
    (M x 4 each, clamped inside the grid) and weights (M x 4, zero where the cell is outside)."""
    x0, y0 = x.floor(), y.floor()
    x1, y1 = x0 + 1, y0 + 1
    corners = ((x0, y0, (x1 - x) * (y1 - y)), (x1, y0, (x - x0) * (y1 - y)),
               (x0, y1, (x1 - x) * (y - y0)), (x1, y1, (x - x0) * (y - y0)))
    columns = torch.stack([cx.clamp(0, width - 1) for cx, _, _ in corners], 1).long()
    rows = torch.stack([cy.clamp(0, height - 1) for _, cy, _ in corners], 1).long()
    weights = torch.stack([weight * ((cx >= 0) & (cx <= width - 1) & (cy >= 0)
                                     & (cy <= height - 1))
                           for cx, cy, weight in corners], 1)
    return columns, rows, weights


def _grid_sample_rows(branch: torch.Tensor, grid_x: torch.Tensor, grid_y: torch.Tensor,
                      table: torch.Tensor | None = None) -> torch.Tensor:
    """F.grid_sample(branch, grid, "bilinear", align_corners=True, zero padding) at M points
    of normalised coordinates (grid_x, grid_y), as M x C rows in fp32: the same weights and
    the same sum of the four corners, computed as one gather-and-sum (embedding_bag) over
    the branch laid out channels-last (`table`: that layout, h*w x C fp32, when the caller
    keeps it; `_channels_last_rows`). On a CPU grid_sample spends ~15 ms on 50k points of a
    32-channel map, this ~3 ms."""
    _, channels, height, width = branch.shape
    columns, rows, weights = _bilinear_corners((grid_x + 1) / 2 * (width - 1),
                                               (grid_y + 1) / 2 * (height - 1), width, height)
    if table is None:
        table = _channels_last_rows(branch)
    return F.embedding_bag(rows * width + columns, table, per_sample_weights=weights,
                           mode="sum")


def _channels_last_rows(branch: torch.Tensor) -> torch.Tensor:
    """A 1 x C x h x w map as h*w x C rows in fp32 (one row per cell): a view where the map
    is laid out channels-last already (as the OpenVINO backend returns it), else a copy."""
    return branch[0].float().permute(1, 2, 0).reshape(-1, branch.shape[1])


def _is_channels_last(branch: torch.Tensor) -> bool:
    return branch.shape[1] > 1 and branch.is_contiguous(memory_format=torch.channels_last)


class FeatureSource:
    """ALIKED's full-resolution feature map of one image, evaluated only where it is read.

    The map is the L2-normalised concatenation of four branches at 1, 1/2, 1/8 and 1/32
    resolution, each bilinearly upsampled (align_corners=True) to full resolution. The
    descriptor head reads it at a few thousand pixels, so instead of materialising the
    128-channel full-resolution map, each requested pixel's value is interpolated from the
    branches directly: the same numbers, without most of the extractor's memory traffic.
    Bilinear sampling between pixels (zero outside the image) follows F.grid_sample.
    """

    def __init__(self, branches: list[torch.Tensor], padded_size: tuple[int, int],
                 offset: tuple[int, int], size: tuple[int, int]) -> None:
        self.branches = branches          # each 1 x C_i x h_i x w_i, padded image
        self.padded_size = padded_size    # (W, H) of the padded image
        self.offset = offset              # (left, top) padding
        self.size = size                  # (w, h) of the image
        self.channels = sum(b.shape[1] for b in branches)
        # The low-resolution branches laid out channels-last for _grid_sample_rows, made when
        # first read: the head reads the map twice per image (patches, then samples).
        self._row_tables: dict[int, torch.Tensor] = {}

    def at_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised features at integer pixels (M x 2, x and y inside the image): M x C."""
        table, inverse = self.distinct_pixels(pixels)
        return table.index_select(0, inverse)  # 1.6x faster than table[inverse] on a CPU

    def distinct_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U x C normalised features of the distinct pixels among `pixels` (M x 2, x and y
        inside the image), M indices into them).

        Each distinct pixel is computed once, in memory order: the descriptor head reads
        overlapping pixels (neighbouring sample positions share corners), and reading the
        maps in order instead of in keypoint order keeps the gathers in cache. The values are
        those of a direct read, bit for bit (each pixel is computed on its own either way).
        """
        pw, ph = self.padded_size
        # Pixel coordinates stay integer / fp32: fp16 holds integers exactly only up to 2048
        # and bf16 up to 256, so half-precision coordinates would index the wrong pixels.
        linear = (pixels[:, 1].long() + self.offset[1]) * pw + pixels[:, 0].long() + self.offset[0]
        unique, inverse = torch.unique(linear, sorted=True, return_inverse=True)
        xi, yi = unique % pw, torch.div(unique, pw, rounding_mode="floor")
        x, y = xi.float(), yi.float()
        grid_x, grid_y = 2 * x / (pw - 1) - 1, 2 * y / (ph - 1) - 1
        # Each branch is written into its columns of one table, normalised in place: the
        # same numbers as F.normalize(torch.cat(parts)), without the concatenated copy and
        # the normalised one (~20 of ~370 ms per extraction, 1 thread).
        table = torch.empty(len(unique), self.channels, dtype=self.branches[0].dtype,
                            device=unique.device)
        start = 0
        for index, branch in enumerate(self.branches):
            columns = table[:, start:start + branch.shape[1]]
            start += branch.shape[1]
            if branch.shape[-2:] == (ph, pw):  # full resolution: plain indexing
                if _is_channels_last(branch):  # whole rows (pixels) at once
                    columns.copy_(_channels_last_rows(branch).index_select(0, unique))
                else:
                    flat = branch[0].reshape(branch.shape[1], -1)
                    columns.copy_(flat.index_select(1, unique).t())
                continue
            # The low-resolution branches are sampled in fp32 (an fp16 grid is off by up to
            # half a pixel at 2048 px); their values keep the branch's dtype.
            with torch.autocast(branch.device.type, enabled=False):
                if index not in self._row_tables:
                    self._row_tables[index] = _channels_last_rows(branch)
                columns.copy_(_grid_sample_rows(branch, grid_x, grid_y, self._row_tables[index]))
        norm = torch.linalg.vector_norm(table, dim=1, keepdim=True).clamp_min_(1e-12)
        return table.div_(norm), inverse

    def bilinear(self, positions: torch.Tensor) -> torch.Tensor:
        """Bilinear interpolation of the normalised map at M x 2 pixel positions, zero
        outside the image (as F.grid_sample with align_corners=True and zero padding)."""
        w, h = self.size
        columns, rows, weights = _bilinear_corners(positions[:, 0], positions[:, 1], w, h)
        # The four corners' pixels in one read (they overlap between neighbouring positions),
        # then each position's weighted sum of its four rows in one fused gather-and-sum
        # (embedding_bag): 6 ms instead of 60 for 16k positions on a CPU, where gathering
        # four M x C tensors and summing them moved ~130 MB. In fp32 as before (the weights
        # are fp32).
        table, inverse = self.distinct_pixels(torch.stack([columns.reshape(-1),
                                                           rows.reshape(-1)], 1))
        return F.embedding_bag(inverse.view(-1, 4), table.float(), per_sample_weights=weights,
                               mode="sum")


class ALIKED(nn.Module):
    # The dense outputs (the four branches) that the descriptor head reads pixel by pixel:
    # an inference engine returns them channels-last (engine/backends.py), so each read
    # takes a pixel's channels from one row instead of one strided column per channel.
    dense_channels_last_outputs = (0, 1, 2, 3)
    default_conf: dict[str, Any] = {
        "model_name": "aliked-n16",
        "max_num_keypoints": 1024,   # <= 0: no cap (20000 at most)
        "detection_threshold": 0.2,  # > 0: score threshold (capped); 0: plain top-k
        "nms_radius": 2,
        # The official code falls back to "above the mean score" when no peak passes the
        # threshold; on blank or textureless frames that yields keypoints on noise, so it is
        # off by default (the frame then has no keypoints, which the node reports).
        "mean_fallback": False,
    }
    max_keypoints_limit = 20000
    soft_argmax_temperature = 0.1

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown ALIKED options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        name = self.conf["model_name"]
        if name not in VARIANTS:
            raise ValueError(f"unknown ALIKED variant {name!r}; choose from {sorted(VARIANTS)}")
        c1, c2, c3, c4, dim, k, n_pos = VARIANTS[name]
        self.descriptor_dim = dim
        self.block1 = ConvBlock(3, c1)
        self.block2 = ResBlock(c1, c2, deformable=False)
        self.block3 = ResBlock(c2, c3, deformable=True)
        self.block4 = ResBlock(c3, c4, deformable=True)
        self.conv1 = nn.Conv2d(c1, dim // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(c2, dim // 4, 1, bias=False)
        self.conv3 = nn.Conv2d(c3, dim // 4, 1, bias=False)
        self.conv4 = nn.Conv2d(c4, dim // 4, 1, bias=False)
        self.score_head = nn.Sequential(
            nn.Conv2d(dim, 8, 1, bias=False), nn.SELU(),
            nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 1, 3, padding=1, bias=False),
        )
        self.desc_head = SDDH(dim, k, n_pos)
        # Where `dense` runs: None for this module in PyTorch, or a callable with the same
        # input and outputs (e.g. a compiled inference-engine model; engine/backends.py).
        self.dense_runner: Any = None
        radius = self.conf["nms_radius"]
        grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
        gy, gx = torch.meshgrid(grid, grid, indexing="ij")
        # (dx, dy) of each position in a row-major (2r+1)^2 window, as F.unfold orders it.
        self.register_buffer("window_xy", torch.stack([gx, gy], -1).view(-1, 2), persistent=False)

    # --- dense maps -------------------------------------------------------------------------
    def branches(self, image: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The four aggregation branches (SELU(1x1 conv) of each encoder stage) of the image
        padded to a multiple of 32, and the (left, top) padding."""
        h, w = image.shape[-2:]
        # The encoder downsamples by 32: pad (replicating edges, split evenly) to a multiple.
        pad_h, pad_w = (-h) % 32, (-w) % 32
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(image, (left, pad_w - left, top, pad_h - top), mode="replicate")
        return self.encode(x), (left, top)

    def encode(self, padded: torch.Tensor) -> list[torch.Tensor]:
        """The encoder and aggregation branches of an image padded to a multiple of 32: the
        dense part of the network, and most of its time on a CPU."""
        x1 = self.block1(padded)
        x2 = self.block2(F.avg_pool2d(x1, 2))
        x3 = self.block3(F.avg_pool2d(x2, 4))
        x4 = self.block4(F.avg_pool2d(x3, 4))
        return [F.selu(conv(t)) for conv, t in
                ((self.conv1, x1), (self.conv2, x2), (self.conv3, x3), (self.conv4, x4))]

    def score_map(self, branches: list[torch.Tensor], image_size: tuple[int, int],
                  offset: tuple[int, int]) -> torch.Tensor:
        """Keypoint score map (B x 1 x h x w, in [0, 1]).

        The head starts with a 1x1 convolution over the concatenated, upsampled branches.
        Both operations are linear, so it equals the sum of per-branch 1x1 convolutions
        upsampled afterwards: 8 channels are upsampled instead of 4 x 32.
        """
        weight = self.score_head[0].weight                         # 8 x dim x 1 x 1
        parts = weight.split([b.shape[1] for b in branches], dim=1)
        full = branches[0].shape[-2:]
        merged = F.conv2d(branches[0], parts[0])
        for branch, part in zip(branches[1:], parts[1:]):
            merged = merged + F.interpolate(F.conv2d(branch, part), size=full, mode="bilinear",
                                            align_corners=True)
        scores = torch.sigmoid(self.score_head[1:](merged))
        (w, h), (left, top) = image_size, offset
        return scores[..., top:top + h, left:left + w].contiguous()

    def dense_maps(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The full feature map (B x D x H x W, unit norm per pixel) and score map, as the
        official implementation computes them: for tests and visualisation. Extraction
        itself never builds the full feature map (see FeatureSource)."""
        h, w = image.shape[-2:]
        branches, (left, top) = self.branches(image)
        full = branches[0].shape[-2:]
        merged = torch.cat([branches[0]] + [
            F.interpolate(b, size=full, mode="bilinear", align_corners=True) for b in branches[1:]], 1)
        features = F.normalize(merged, p=2, dim=1)[..., top:top + h, left:left + w]
        return features.contiguous(), self.score_map(branches, (w, h), (left, top))

    # --- detection --------------------------------------------------------------------------
    def peaks(self, scores: torch.Tensor) -> torch.Tensor:
        """The score map with everything but local maxima (NMS) and the border zeroed."""
        h, w = scores.shape[-2:]
        radius = self.conf["nms_radius"]
        peaks = simple_nms(scores, radius)
        # Keypoints need a full soft-argmax window inside the image.
        peaks[..., :radius, :] = 0
        peaks[..., :, :radius] = 0
        peaks[..., h - radius:, :] = 0
        peaks[..., :, w - radius:] = 0
        return peaks

    def dense(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Everything dense, for an image of one size: the four branches (of the padded
        image) and the score map. Most of the network's time on a CPU, and free of
        data-dependent shapes, so an inference engine can compile it (engine/backends.py).
        NMS is not part of it: above a detection threshold it runs on the few pixels above
        it (`detect`), ~20x cheaper than the ten full-resolution max-pools of a dense NMS."""
        h, w = image.shape[-2:]
        branches, offset = self.branches(image)
        return [*branches, self.score_map(branches, (w, h), offset)]

    def _selected(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per image, the row-major flat indices of the keypoints: NMS peaks inside the
        border above the detection threshold, the `max_num_keypoints` best if more (or, with
        threshold 0, the best peaks)."""
        b, _, h, w = scores.shape
        radius = self.conf["nms_radius"]
        threshold = self.conf["detection_threshold"]
        cap = self.conf["max_num_keypoints"]
        cap = cap if cap > 0 else self.max_keypoints_limit
        flat_scores = scores.view(b, -1)
        if threshold <= 0:
            flat_peaks = self.peaks(scores).view(b, -1)
            return list(torch.topk(flat_peaks, min(cap, flat_peaks.shape[1]), dim=1).indices)
        selected = []
        for i in range(b):
            idx = local_maxima_above(scores[i, 0], radius, threshold)
            x, y = idx % w, torch.div(idx, w, rounding_mode="floor")
            # Keypoints need a full soft-argmax window inside the image (as `peaks`).
            selected.append(idx[(x >= radius) & (x < w - radius)
                                & (y >= radius) & (y < h - radius)])
        if self.conf["mean_fallback"] and not any(idx.numel() for idx in selected):
            flat_peaks = self.peaks(scores).view(b, -1)
            above = flat_peaks > flat_scores.mean(dim=1, keepdim=True)
            selected = [above[i].nonzero()[:, 0] for i in range(b)]
        for i, idx in enumerate(selected):
            if idx.numel() > cap:
                order = flat_scores[i, idx].sort(descending=True).indices
                selected[i] = idx[order[:cap]]
        return selected

    def detect(self, scores: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keypoints (pixels, Nx2 as x, y) and their scores per image from a score map."""
        b, _, h, w = scores.shape
        radius = self.conf["nms_radius"]
        selected = self._selected(scores)

        # Soft-argmax refinement in the (2r+1)^2 window around each peak, gathering only the
        # selected windows (zero padding outside the image, like F.unfold with padding).
        # The soft-argmax gives keypoint positions: fp32 even under autocast (its matmul
        # would otherwise round positions to half precision, integer-exact only to 2048 px).
        scores = scores.float()
        padded = F.pad(scores, (radius, radius, radius, radius)).view(b, -1)
        padded_w = w + 2 * radius
        window = (self.window_xy[:, 1] * padded_w + self.window_xy[:, 0]).long()  # K^2
        keypoints, keypoint_scores = [], []
        for i, idx in enumerate(selected):
            centre = (torch.div(idx, w, rounding_mode="floor") + radius) * padded_w + idx % w + radius
            patch = padded[i][centre[:, None] + window[None]]            # N x K^2
            weights = ((patch - patch.max(dim=1, keepdim=True).values)
                       / self.soft_argmax_temperature).exp()
            with torch.autocast(scores.device.type, enabled=False):
                residual = weights @ self.window_xy / weights.sum(dim=1, keepdim=True)
            xy = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], 1).to(residual)
            kpts = xy + residual
            grid = (2.0 * kpts / kpts.new_tensor([w - 1, h - 1]) - 1.0).view(1, 1, -1, 2)
            kscores = F.grid_sample(scores[i:i + 1], grid, mode="bilinear", align_corners=True)
            keypoints.append(kpts)
            keypoint_scores.append(kscores.view(-1))
        return keypoints, keypoint_scores

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Detect and describe. image: Bx3xHxW (or Bx1xHxW, replicated to RGB) in [0, 1].

        Returns lists (one entry per image) of keypoints (Nx2 pixels), keypoint_scores (N)
        and descriptors (NxD, unit norm).
        """
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        h, w = image.shape[-2:]
        *branches, scores = (self.dense_runner or self.dense)(image)
        offset = (((-w) % 32) // 2, ((-h) % 32) // 2)  # as branches() pads
        keypoints, keypoint_scores = self.detect(scores)
        padded = (branches[0].shape[-1], branches[0].shape[-2])
        descriptors = [
            self.desc_head(FeatureSource([b[i:i + 1] for b in branches], padded, offset, (w, h)), kpts)
            for i, kpts in enumerate(keypoints)]
        return {"keypoints": keypoints, "keypoint_scores": keypoint_scores,
                "descriptors": descriptors}
