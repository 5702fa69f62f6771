"""DISK keypoint detector and descriptor (Tyszkiewicz et al., NeurIPS 2020), official weights.

The network is a thin U-Net on the RGB image: five encoder stages (16, 32, 64, 64, 64
channels; each after the first halves the resolution by 2x2 average pooling) and four
decoder stages (bilinear x2 upsampling, concatenation with the encoder map of that size).
Every stage is instance norm -> per-channel PReLU -> 5x5 convolution, except the first,
which convolves the image directly. The last stage outputs 129 channels at full resolution:
128 descriptor channels and one detection heatmap (logits). Keypoints are the strict local
maxima of the heatmap in a square window whose logit exceeds a threshold, strongest first;
each descriptor is the descriptor map at the keypoint's pixel, L2-normalised.

Weights: the official "depth" checkpoint (`depth-save.pth`, trained with depth supervision),
which nests its tensors under "extractor" with the original module names;
`DISK.rename_official_keys` maps them to this module. Input: RGB images in [0, 1], Bx3xHxW,
of any size (zero-padded at the bottom and right to a multiple of 16, the U-Net's stride).
Keypoints are integer pixels (x, y) of the input image, pixel centres at integer values.
Keypoint scores are the raw heatmap logits (unbounded), as the official LightGlue wrapper
returns them.

Detection follows kornia.feature.DISK (the extractor the official LightGlue code uses), so the
keypoints are the same: a maximum must be strictly greater than every other value in its
window, and pixels whose window runs off the image are never keypoints.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

KERNEL_SIZE = 5
ENCODER_CHANNELS = (16, 32, 64, 64, 64)
DECODER_CHANNELS = (64, 64, 64)   # then descriptor_dim + 1 for the last stage
STRIDE = 2 ** len(ENCODER_CHANNELS[1:])  # 16: four poolings


class Stage(nn.Module):
    """Instance norm (no affine parameters) -> PReLU -> 5x5 'same' convolution.

    The first encoder stage has no norm and gate (`plain=True`): it convolves the image.
    """

    def __init__(self, in_channels: int, out_channels: int, plain: bool = False) -> None:
        super().__init__()
        self.gate = None if plain else nn.PReLU(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL_SIZE, padding=KERNEL_SIZE // 2)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the convolution: normalised and gated (unchanged for a plain stage)."""
        if self.gate is None:
            return x
        return self.gate(F.instance_norm(x, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.activate(x))


def strict_maxima(scores: torch.Tensor, window: int) -> torch.Tensor:
    """Mask (B x H x W, bool) of the positions strictly greater than every other value in
    their `window` x `window` neighbourhood.

    The window spans (window - 1) // 2 positions before the centre and window // 2 after it
    on each axis, as kornia's nms2d. Only positions whose whole window lies inside the map
    can be maxima: at the border a clipped window would judge a pixel against part of its
    neighbourhood. Ties (plateaus) are never maxima, so the result does not depend on an
    arbitrary order.
    """
    b, h, w = scores.shape
    before, after = (window - 1) // 2, window // 2
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if window <= 1:
        return torch.ones_like(mask)
    if h < window or w < window:
        return mask
    rows, cols = h - window + 1, w - window + 1  # positions with a full window
    centre = scores[:, before:before + rows, before:before + cols]

    def block_max(kernel: tuple[int, int], top: int, left: int) -> torch.Tensor:
        # Max over the `kernel` block whose top-left corner is (top, left) relative to each
        # full-window position (one max pool, no padding).
        pooled = F.max_pool2d(scores, kernel, stride=1)
        return pooled[:, top:top + rows, left:left + cols]

    # The window minus its centre is four blocks: the rows above, the rows below, and the
    # left and right parts of the centre row.
    neighbours = block_max((1, after), before, before + 1)                  # right
    neighbours = torch.maximum(neighbours, block_max((after, window), before + 1, 0))  # below
    if before > 0:
        neighbours = torch.maximum(neighbours, block_max((1, before), before, 0))      # left
        neighbours = torch.maximum(neighbours, block_max((before, window), 0, 0))      # above
    mask[:, before:before + rows, before:before + cols] = centre > neighbours
    return mask


class DISK(nn.Module):
    default_conf: dict[str, Any] = {
        "max_num_keypoints": 2048,    # <= 0 or None: no cap
        "detection_threshold": 0.0,   # keypoints need a heatmap logit strictly above this
        # NMS window side. `nms_radius` (r) is the generic name the other extractors use:
        # setting it selects a window of 2r + 1. Set one of them; they may not disagree.
        "nms_window_size": 5,
        "nms_radius": None,
        "pad_if_not_divisible": True,  # False: sizes must be multiples of 16
    }
    descriptor_dim = 128

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown DISK options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        radius = conf.get("nms_radius")
        window = conf.get("nms_window_size")
        if radius is not None:
            if radius < 0:
                raise ValueError(f"nms_radius must be >= 0, got {radius}")
            if window is not None and window != 2 * radius + 1:
                raise ValueError(f"nms_radius={radius} means nms_window_size={2 * radius + 1}, "
                                 f"but nms_window_size={window} was given")
            window = 2 * radius + 1
        window = self.conf["nms_window_size"] if window is None else window
        if window < 1:
            raise ValueError(f"nms_window_size must be >= 1, got {window}")
        self.conf["nms_window_size"] = window
        self.conf["nms_radius"] = (window - 1) // 2 if window % 2 else None

        widths = (3, *ENCODER_CHANNELS)
        self.down = nn.ModuleList([Stage(c_in, c_out, plain=i == 0)
                                   for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]))])
        # Decoder stage i takes the upsampled previous output and the encoder map of its size.
        bottoms = (ENCODER_CHANNELS[-1], *DECODER_CHANNELS)
        skips = ENCODER_CHANNELS[-2::-1]
        outs = (*DECODER_CHANNELS, self.descriptor_dim + 1)
        self.up = nn.ModuleList([Stage(bot + skip, out)
                                 for bot, skip, out in zip(bottoms, skips, outs)])

    @staticmethod
    def rename_official_keys(state: Mapping[str, Any]) -> dict[str, Any]:
        """Map the official checkpoint to this module's names.

        The file holds {"extractor": {"unet.path_down.I.1.K.*", "unet.path_up.I.conv.K.*"}}
        (nested, or flattened to "extractor.unet..." by a loader); K is 1 for the PReLU and
        3 for the convolution (0 and 2 are the parameterless norm and dropout). Keys that do
        not follow that layout are passed through unchanged, so a strict load names them.
        """
        if "extractor" in state and isinstance(state["extractor"], Mapping):
            state = state["extractor"]
        renamed = {}
        for key, value in state.items():
            key = key.removeprefix("extractor.")
            match = (re.fullmatch(r"unet\.path_down\.(\d+)\.1\.([13])\.(\w+)", key)
                     or re.fullmatch(r"unet\.path_up\.(\d+)\.conv\.([13])\.(\w+)", key))
            if match:
                stage, layer, name = match.groups()
                path = "down" if ".path_down." in key else "up"
                key = f"{path}.{stage}.{'gate' if layer == '1' else 'conv'}.{name}"
            renamed[key] = value
        return renamed

    # --- dense maps -------------------------------------------------------------------------
    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The U-Net up to its last convolution.

        Returns the input of the last convolution (normalised and gated, B x 80 x H' x W' on
        the padded image) and the heatmap logits cropped to the image (B x H x W).

        The last convolution (80 -> 129 channels, 5x5, at full resolution) is about 80 % of
        DISK's arithmetic, but only its heatmap channel is needed everywhere: the 128 descriptor
        channels are needed at the keypoints only, and `describe` computes them there.
        """
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        if pad_h or pad_w:
            if not self.conf["pad_if_not_divisible"]:
                raise ValueError(f"DISK needs image sizes that are multiples of {STRIDE}, got "
                                 f"{w}x{h} (set pad_if_not_divisible)")
            # Zero padding at the bottom and right, as the reference: the instance norms see
            # the padded image, so the padding must be the same for the same numbers.
            image = F.pad(image, (0, pad_w, 0, pad_h))
        skips = []
        x = image
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for stage, skip in zip(self.up[:-1], skips[-2::-1]):
            x = stage(self._merge(x, skip))
        last = self.up[-1]
        gated = last.activate(self._merge(x, skips[0]))
        d = self.descriptor_dim
        heatmap = F.conv2d(gated, last.conv.weight[d:], last.conv.bias[d:],
                           padding=KERNEL_SIZE // 2)
        return gated, heatmap[:, 0, :h, :w]

    @staticmethod
    def _merge(bottom: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(bottom, scale_factor=2, mode="bilinear", align_corners=False)
        return torch.cat([up, skip], 1)

    def describe(self, gated: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Descriptors (N x 128, unit norm) at integer pixels (N x 2, x, y) of one image.

        gated: 1 x C x H' x W', the input of the last convolution. Each descriptor is that
        convolution evaluated at one pixel: its 5x5 x C patch (zero outside the padded
        image, as the convolution's padding) times the descriptor rows of the weights.
        """
        d = self.descriptor_dim
        conv = self.up[-1].conv
        if keypoints.shape[0] == 0:
            return gated.new_zeros((0, d))
        r = KERNEL_SIZE // 2
        c, h, w = gated.shape[1:]
        steps = torch.arange(-r, r + 1, device=gated.device)
        xy = keypoints.long()
        xs = xy[:, 0, None, None] + steps[None, None, :]             # N x 1 x 5
        ys = xy[:, 1, None, None] + steps[None, :, None]             # N x 5 x 1
        # Row-major 5x5 windows; taps outside the map read zero, as the convolution's padding.
        inside = ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)).view(len(xy), -1)
        flat = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).view(len(xy), -1)  # N x 25
        patches = gated[0].reshape(c, -1)[:, flat] * inside             # C x N x 25
        patches = patches.permute(1, 0, 2).reshape(len(xy), -1)     # N x (C * 25), as weight
        desc = torch.addmm(conv.bias[:d], patches, conv.weight[:d].reshape(d, -1).t())
        return F.normalize(desc, p=2.0, dim=1)

    # --- detection --------------------------------------------------------------------------
    def detect(self, heatmap: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keypoints (N x 2 integer pixels as float, x, y) and their logits per image, strongest
        first. Of maxima tied at the cap, those first in raster order are kept."""
        b, h, w = heatmap.shape
        # The generic `nms_radius` wins when set (a pipeline may change it at run time).
        radius = self.conf["nms_radius"]
        window = 2 * int(radius) + 1 if radius is not None else self.conf["nms_window_size"]
        peaks = strict_maxima(heatmap, window)
        peaks &= heatmap > self.conf["detection_threshold"]
        cap = self.conf["max_num_keypoints"]
        keypoints, scores = [], []
        for i in range(b):
            idx = peaks[i].view(-1).nonzero()[:, 0]                  # raster order
            values = heatmap[i].reshape(-1)[idx]
            # A stable sort keeps raster order among equal scores, so the cut is deterministic.
            order = torch.sort(values, descending=True, stable=True).indices
            if cap is not None and cap > 0:
                order = order[:cap]
            idx, values = idx[order], values[order]
            xy = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], 1)
            keypoints.append(xy.to(torch.promote_types(heatmap.dtype, torch.float32)))
            scores.append(values)
        return keypoints, scores

    def forward(self, image: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Detect and describe. image: Bx3xHxW (or Bx1xHxW, replicated to RGB) in [0, 1].

        Returns lists (one entry per image) of keypoints (N x 2 pixels), keypoint_scores (N,
        heatmap logits, descending) and descriptors (N x 128, unit norm).
        """
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        gated, heatmap = self.features(image)
        keypoints, scores = self.detect(heatmap)
        descriptors = [self.describe(gated[i:i + 1], kpts) for i, kpts in enumerate(keypoints)]
        return {"keypoints": keypoints, "keypoint_scores": scores, "descriptors": descriptors}
