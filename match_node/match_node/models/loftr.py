"""LoFTR (Sun et al., CVPR 2021), detector-free matching, loading the official checkpoints.
(Over 400 lines: one readable file per model, as the official code, backbone, attention
and both matching stages together.)

The network: a ResNet-FPN backbone gives a 1/8-resolution coarse map (256-d) and a
1/2-resolution fine map (128-d) of each image. The coarse maps get a sinusoidal positional
encoding and pass through a transformer of linear-attention layers (self, cross) x 4; a
dual-softmax over all pairs of coarse cells gives the coarse matches (mutual nearest
neighbours above a threshold, away from the border). Each match is refined in a 5x5 window
of the fine maps: a small transformer (self, cross) and the expectation of a softmax heatmap
move the point of image 1 by at most 4 px; the point of image 0 stays on the coarse grid.

Parameter names follow the official Lightning checkpoints (`outdoor_ds.ckpt`,
`indoor_ds.ckpt`, `indoor_ds_new.ckpt`; weights under `state_dict`, prefixed `matcher.`),
so they load unchanged after `rename_official_keys`. Input: grayscale images in [0, 1],
1x1xHxW, of any size. Keypoints are returned in pixels of the input image with integer
values at pixel centres (see `LoFTR.match`).

Numerics: the linear attention, the dual-softmax and the fine heatmap run in fp32 even under
fp16 autocast (see `linear_attention` for why).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The positional encoding each official checkpoint was trained with. The weights do not tell
# (both encodings fit the same tensors), so it is part of the variant, never guessed.
VARIANTS: dict[str, dict[str, str]] = {
    "loftr-outdoor": {"pos_encoding": "original"},     # outdoor_ds.ckpt (MegaDepth)
    "loftr-indoor": {"pos_encoding": "original"},      # indoor_ds.ckpt (ScanNet)
    "loftr-indoor-new": {"pos_encoding": "fixed"},     # indoor_ds_new.ckpt (ScanNet)
}

# The reference implementation's keypoints put the centre of pixel (x, y) at (x + 0.5, y + 0.5):
# its supervision treats the grid points 8 * (column, row) as continuous image coordinates
# (unprojected with the dataset intrinsics, scaled with the resize factor), so that is what the
# trained weights mean by them. kornia returns them unchanged and documents that frame (its
# LoFTR docstring: "subtract 0.5 to get kornia's frame"). Ours = reference - 0.5.
REFERENCE_TO_PIXEL_CENTRES = -0.5


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 to fp32; fp32 and fp64 unchanged (tests compare in fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# --- backbone -------------------------------------------------------------------------------

def _conv1x1(in_dim: int, out_dim: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, 1, stride=stride, bias=False)


def _conv3x3(in_dim: int, out_dim: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block; a strided block projects its shortcut with a 1x1 conv and BN."""

    def __init__(self, in_dim: int, dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_dim, dim, stride)
        self.conv2 = _conv3x3(dim, dim)
        self.bn1 = nn.BatchNorm2d(dim)
        self.bn2 = nn.BatchNorm2d(dim)
        self.downsample = (nn.Sequential(_conv1x1(in_dim, dim, stride), nn.BatchNorm2d(dim))
                           if stride != 1 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Upsample by 2 (bilinear, corners aligned, as the weights were trained) and crop to the
    size of the skip connection `like`.

    Every strided layer has a centred kernel, so each map has ceil(n / 2) cells of the finer
    one and cell i of any map sits on pixel stride * i. For sides that are multiples of 8 the
    upsampled map has exactly the skip's size (the official code's only case); otherwise it
    has one row or column more, and cropping keeps the same cell mapping, i * (n - 1) /
    (2n - 1), for the cells that exist. kornia does the same, so odd sizes match it too.
    """
    up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
    return up[..., :like.shape[-2], :like.shape[-1]]


class ResNetFPN(nn.Module):
    """ResNet with three stages (1/2, 1/4, 1/8) and an FPN back to 1/2: coarse 1/8, fine 1/2."""

    def __init__(self, initial_dim: int = 128, block_dims: tuple[int, int, int] = (128, 196, 256)
                 ) -> None:
        super().__init__()
        d1, d2, d3 = block_dims
        self.conv1 = nn.Conv2d(1, initial_dim, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(initial_dim)
        self.layer1 = nn.Sequential(BasicBlock(initial_dim, d1, 1), BasicBlock(d1, d1, 1))  # 1/2
        self.layer2 = nn.Sequential(BasicBlock(d1, d2, 2), BasicBlock(d2, d2, 1))           # 1/4
        self.layer3 = nn.Sequential(BasicBlock(d2, d3, 2), BasicBlock(d3, d3, 1))           # 1/8
        self.layer3_outconv = _conv1x1(d3, d3)
        self.layer2_outconv = _conv1x1(d2, d3)
        self.layer2_outconv2 = nn.Sequential(
            _conv3x3(d3, d3), nn.BatchNorm2d(d3), nn.LeakyReLU(), _conv3x3(d3, d2))
        self.layer1_outconv = _conv1x1(d1, d2)
        self.layer1_outconv2 = nn.Sequential(
            _conv3x3(d2, d2), nn.BatchNorm2d(d2), nn.LeakyReLU(), _conv3x3(d2, d1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = F.relu(self.bn1(self.conv1(image)))
        x1 = self.layer1(x0)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        coarse = self.layer3_outconv(x3)
        x2_out = self.layer2_outconv(x2)
        x2_out = self.layer2_outconv2(x2_out + _upsample_to(coarse, x2_out))
        x1_out = self.layer1_outconv(x1)
        fine = self.layer1_outconv2(x1_out + _upsample_to(x2_out, x1_out))
        return coarse, fine


# --- positional encoding --------------------------------------------------------------------

def sine_encoding(dim: int, height: int, width: int, variant: str,
                  device: torch.device | None = None) -> torch.Tensor:
    """The 2-D sinusoidal encoding, 1 x dim x height x width (fp32).

    Positions start at 1; channels interleave (sin x, cos x, sin y, cos y) per frequency.
    """
    exponents = torch.arange(0, dim // 2, 2, device=device).float()
    if variant == "fixed":
        frequencies = torch.exp(exponents * (-math.log(10000.0) / (dim // 2)))
    elif variant == "original":
        # The original code wrote `-log(10000) / d_model // 2`, which floors to -1: frequencies
        # exp(-0), exp(-2), ... (most vanish). outdoor_ds and indoor_ds were trained with it.
        frequencies = torch.exp(exponents * -1.0)
    else:
        raise ValueError(f"unknown positional encoding {variant!r}; use 'fixed' or 'original'")
    frequencies = frequencies[:, None, None]
    y = torch.arange(1, height + 1, device=device).float()[None, :, None].expand(1, height, width)
    x = torch.arange(1, width + 1, device=device).float()[None, None, :].expand(1, height, width)
    encoding = torch.stack([torch.sin(x * frequencies), torch.cos(x * frequencies),
                            torch.sin(y * frequencies), torch.cos(y * frequencies)], 1)
    return encoding.reshape(1, dim, height, width)


class PositionEncodingSine(nn.Module):
    """Adds the sinusoidal encoding. A 256 x 256 table (images up to 2048 px) is kept as a
    non-persistent buffer, as in the official code; larger maps get an encoding computed for
    their size (the formula extends beyond the table unchanged)."""

    def __init__(self, dim: int, variant: str, max_shape: tuple[int, int] = (256, 256)) -> None:
        super().__init__()
        self.dim, self.variant = dim, variant
        self.register_buffer("pe", sine_encoding(dim, *max_shape, variant), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= self.pe.shape[-2] and w <= self.pe.shape[-1]:
            return x + self.pe[..., :h, :w]
        return x + sine_encoding(self.dim, h, w, self.variant, x.device)


# --- transformer ----------------------------------------------------------------------------

def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
                     ) -> torch.Tensor:
    """Linear attention with the ELU + 1 feature map. q: B x H x L x D, k, v: B x H x S x D.

    The official form is  phi(q) (phi(k)^T v/S) / (phi(q) . sum phi(k) + eps) * S. Its
    denominator grows with the sequence length S: ~1.5e5 at 640x480 (S = 4800), beyond fp16's
    6.55e4, where it becomes inf and the message silently zero. This is the same expression
    with S moved inside both numerator and denominator, so every intermediate is a mean over
    the sequence (phi(q) . mean phi(k) + eps / S) and stays of the order of the activations.
    Callers still run it in fp32 (see EncoderLayer); the mean form keeps fp16 safe as well.
    """
    q, k = F.elu(q) + 1, F.elu(k) + 1
    length = k.shape[-2]
    kv = k.transpose(-1, -2) @ (v / length)              # B x H x D x D: mean of phi(k) v^T
    k_mean = k.mean(-2, keepdim=True)                     # B x H x 1 x D
    denominator = q @ k_mean.transpose(-1, -2) + eps / length
    return (q @ kv) / denominator


class EncoderLayer(nn.Module):
    """One LoFTR layer: linear multi-head attention of x to source, then an MLP on [x, message].
    Self-attention is the case source = x."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        def heads(t: torch.Tensor) -> torch.Tensor:  # B x N x (H D) -> B x H x N x D
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(source)), heads(self.v_proj(source))
        # The attention itself is a few small products: fp32 costs nothing and rules out the
        # overflow that fp16 autocast would otherwise risk (see linear_attention).
        with torch.autocast(x.device.type, enabled=False):
            message = linear_attention(*map(_at_least_fp32, (q, k, v)))
        message = self.norm1(self.merge(message.transpose(1, 2).flatten(-2).to(x.dtype)))
        return x + self.norm2(self.mlp(torch.cat([x, message.to(x.dtype)], -1)))


class LocalFeatureTransformer(nn.Module):
    """Layers named "self" or "cross". A cross layer updates image 0 first; image 1 then
    attends to the already-updated image 0 (the order the weights were trained with)."""

    def __init__(self, dim: int, num_heads: int, layer_names: list[str]) -> None:
        super().__init__()
        if any(name not in ("self", "cross") for name in layer_names):
            raise ValueError(f"layer names must be 'self' or 'cross', got {layer_names}")
        self.layer_names = list(layer_names)
        self.layers = nn.ModuleList([EncoderLayer(dim, num_heads) for _ in layer_names])

    def forward(self, feat0: torch.Tensor, feat1: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, name in zip(self.layers, self.layer_names):
            if name == "self":
                feat0, feat1 = layer(feat0, feat0), layer(feat1, feat1)
            else:
                feat0 = layer(feat0, feat1)
                feat1 = layer(feat1, feat0)
        return feat0, feat1


# --- matching -------------------------------------------------------------------------------

def dual_softmax(feat0: torch.Tensor, feat1: torch.Tensor, temperature: float,
                 block: int = 1024) -> torch.Tensor:
    """Confidence of every pair of cells: softmax over rows times softmax over columns of the
    similarity / temperature. feat: 1 x N0 x C, 1 x N1 x C; returns 1 x N0 x N1 (>= fp32).

    The matrix is the largest tensor of LoFTR (19200^2 floats, 1.5 GB, at 1280x960), so only
    one is ever allocated: the product of the two softmaxes is exp(2 sim - lse_row - lse_col),
    computed in place once both log-normalisers are known. They are reduced a block of rows
    or columns at a time, because torch.logsumexp makes a temporary the size of its input.
    """
    with torch.autocast(feat0.device.type, enabled=False):
        scale = feat0.shape[-1] ** -0.5  # each side scaled by 1/sqrt(C), as trained
        sim = (_at_least_fp32(feat0) * scale) @ (_at_least_fp32(feat1) * scale).transpose(-1, -2)
        sim /= temperature
        matrix = sim[0]
        lse_rows = torch.cat([torch.logsumexp(rows, 1) for rows in matrix.split(block, 0)])
        lse_cols = torch.cat([torch.logsumexp(cols, 0) for cols in matrix.split(block, 1)])
        # = (sim - lse_row) + (sim - lse_col), both <= 0: exp cannot overflow.
        return sim.mul_(2).sub_(lse_rows[:, None]).sub_(lse_cols).exp_()


def _inner_cells(height: int, width: int, border: int, device: torch.device) -> torch.Tensor:
    """Flattened (row-major) mask of the cells at least `border` cells away from every edge."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    inner = (rows >= border) & (rows < height - border) & (cols >= border) & (cols < width - border)
    return inner.flatten()


def select_coarse_matches(confidence: torch.Tensor, shape0: tuple[int, int],
                          shape1: tuple[int, int], threshold: float, border: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of the N0 x N1 confidence above `threshold`, both cells off
    the border. shape: (rows, columns) of each coarse grid. Returns cell indices in image 0
    and image 1 and the confidences (K each)."""
    row_best, best_j = confidence.max(1)
    col_best = confidence.amax(0)
    keep = (row_best > threshold) & (col_best[best_j] == row_best)
    keep &= _inner_cells(*shape0, border, confidence.device)
    keep &= _inner_cells(*shape1, border, confidence.device)[best_j]
    indices0 = keep.nonzero()[:, 0]
    return indices0, best_j[indices0], row_best[indices0]


def crop_windows(fine: torch.Tensor, cells: torch.Tensor, coarse_width: int, window: int,
                 stride: int) -> torch.Tensor:
    """The window x window patch of the fine map (1 x C x H x W) centred on fine cell
    stride * (row, col) of each coarse cell, zero outside the map; K x window^2 x C, row-major.

    These are the patches of unfold(fine, window, stride=stride, padding=window // 2), read
    only where there is a match (unfolding the whole map would take window^2 / stride^2 of its
    memory again).
    """
    pad = window // 2
    padded = F.pad(fine[0], (pad, pad, pad, pad))                       # C x H' x W'
    offsets = torch.arange(window, device=fine.device)
    rows = (cells // coarse_width * stride)[:, None] + offsets          # K x window
    cols = (cells % coarse_width * stride)[:, None] + offsets
    patches = padded[:, rows[:, :, None], cols[:, None, :]]             # C x K x window x window
    return patches.flatten(2).permute(1, 2, 0)


class FinePreprocess(nn.Module):
    """Adds the coarse context to each fine window: the matched coarse feature, projected to
    the fine width, is concatenated to every window position and merged by a linear layer."""

    def __init__(self, coarse_dim: int, fine_dim: int) -> None:
        super().__init__()
        self.down_proj = nn.Linear(coarse_dim, fine_dim)
        self.merge_feat = nn.Linear(2 * fine_dim, fine_dim)

    def forward(self, windows: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """windows: K x W^2 x Cf, coarse: K x Cc -> K x W^2 x Cf."""
        context = self.down_proj(coarse)[:, None].expand(-1, windows.shape[1], -1)
        return self.merge_feat(torch.cat([windows, context], -1))


def window_expectation(feat0: torch.Tensor, feat1: torch.Tensor) -> torch.Tensor:
    """Expected position in window 1 of the centre feature of window 0, in [-1, 1]^2 (x, y).

    feat: K x W^2 x C. The heatmap is softmax(similarity / sqrt(C)) over the W x W window.
    """
    _, ww, c = feat1.shape
    size = math.isqrt(ww)
    with torch.autocast(feat0.device.type, enabled=False):
        feat0, feat1 = _at_least_fp32(feat0), _at_least_fp32(feat1)
        # A reduction, not a batched matrix-vector product: on the CPU the latter summed less
        # accurately (3x the error of this against fp64).
        sim = (feat1 * feat0[:, None, ww // 2]).sum(-1) / c ** 0.5          # K x W^2
        heatmap = torch.softmax(sim, 1)
        steps = torch.linspace(-1.0, 1.0, size, device=sim.device, dtype=sim.dtype)
        grid = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1).view(ww, 2)
        return heatmap @ grid


class LoFTR(nn.Module):
    default_conf: dict[str, Any] = {
        "model_name": "loftr-outdoor",  # which official checkpoint (see VARIANTS)
        # "fixed" | "original"; None: the encoding the checkpoint of model_name was trained with.
        "pos_encoding": None,
        "match_threshold": 0.2,      # dual-softmax confidence
        "border_removal": 2,         # coarse cells dropped along every edge
        "temperature": 0.1,          # dual-softmax temperature
        "fine_window": 5,            # fine window side, in fine cells
        "coarse_dim": 256,
        "fine_dim": 128,
        "num_heads": 8,
        "coarse_layers": ["self", "cross"] * 4,
        "fine_layers": ["self", "cross"],
    }
    coarse_stride = 8   # pixels per coarse cell
    fine_stride = 2     # pixels per fine cell

    def __init__(self, **conf: Any) -> None:
        super().__init__()
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(f"unknown LoFTR options: {sorted(unknown)}")
        self.conf = {**self.default_conf, **conf}
        name = self.conf["model_name"]
        if name not in VARIANTS:
            raise ValueError(f"unknown LoFTR variant {name!r}; choose from {sorted(VARIANTS)}")
        if self.conf["pos_encoding"] is None:
            self.conf["pos_encoding"] = VARIANTS[name]["pos_encoding"]
        cdim, fdim, heads = self.conf["coarse_dim"], self.conf["fine_dim"], self.conf["num_heads"]
        if fdim != 128:
            raise ValueError("the ResNet-FPN backbone gives 128-d fine features")
        self.backbone = ResNetFPN(initial_dim=128, block_dims=(128, 196, cdim))
        self.pos_encoding = PositionEncodingSine(cdim, self.conf["pos_encoding"])
        self.loftr_coarse = LocalFeatureTransformer(cdim, heads, self.conf["coarse_layers"])
        self.fine_preprocess = FinePreprocess(cdim, fdim)
        self.loftr_fine = LocalFeatureTransformer(fdim, heads, self.conf["fine_layers"])

    @staticmethod
    def rename_official_keys(state: dict) -> dict:
        """The Lightning checkpoints hold the network as the `matcher` attribute of the
        training module: strip that prefix (and nothing else, so other files still fail)."""
        prefix = "matcher."
        return {(key[len(prefix):] if key.startswith(prefix) else key): value
                for key, value in state.items()}

    @torch.no_grad()
    def extract(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one image that do not depend on the other image of a pair: the
        position-encoded coarse map (1 x 256 x ceil(H/8) x ceil(W/8)) and the fine map
        (1 x 128 x ceil(H/2) x ceil(W/2)). image: 1 x 1 x H x W grayscale in [0, 1]."""
        if image.ndim != 4 or image.shape[:2] != (1, 1):
            raise ValueError("LoFTR expects one grayscale image, 1x1xHxW; "
                             f"got {tuple(image.shape)}")
        coarse, fine = self.backbone(image)
        return {"coarse": self.pos_encoding(coarse), "fine": fine}

    @torch.no_grad()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Match two grayscale images (1 x 1 x H x W each, in [0, 1], any sizes); see `match`.

        The backbone runs once per image, not on a batch of both: on the CPU a batch of two was
        no faster and its peak memory was ~3x that of one image (+950 vs +330 MB at 640x480).
        """
        return self.match(self.extract(image0), self.extract(image1))

    @torch.no_grad()
    def match(self, feats0: dict[str, torch.Tensor], feats1: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """Match two images from their `extract` features.

        Returns keypoints0, keypoints1 (K x 2, x y in pixels of each image, integers at pixel
        centres), confidence (K, the coarse dual-softmax value), indices0, indices1 (K, coarse
        cell row * columns + column in each image: a per-frame identity of the point of
        image 0, which stays on the grid) and coarse_confidence (1 x N0 x N1, fp32 or fp64).
        """
        conf = self.conf
        c0, c1 = feats0["coarse"], feats1["coarse"]
        shape0, shape1 = tuple(c0.shape[-2:]), tuple(c1.shape[-2:])
        # 1 x C x H x W -> 1 x HW x C, token-major (contiguous rows for the linear layers).
        c0 = c0.flatten(2).transpose(1, 2).contiguous()
        c1 = c1.flatten(2).transpose(1, 2).contiguous()
        c0, c1 = self.loftr_coarse(c0, c1)

        confidence = dual_softmax(c0, c1, conf["temperature"])
        indices0, indices1, scores = select_coarse_matches(
            confidence[0], shape0, shape1, conf["match_threshold"], conf["border_removal"])

        window = conf["fine_window"]
        cells_per_coarse = self.coarse_stride // self.fine_stride
        if len(indices0) > 0:
            w0 = crop_windows(feats0["fine"], indices0, shape0[1], window, cells_per_coarse)
            w1 = crop_windows(feats1["fine"], indices1, shape1[1], window, cells_per_coarse)
            # Both images' windows through one linear layer, as a batch of 2K.
            merged = self.fine_preprocess(torch.cat([w0, w1]), torch.cat([c0[0, indices0],
                                                                          c1[0, indices1]]))
            w0, w1 = self.loftr_fine(*merged.chunk(2))
            # Expectation in [-1, 1] of a window whose radius is window // 2 fine cells.
            offsets = window_expectation(w0, w1) * (window // 2) * self.fine_stride
        else:
            offsets = confidence.new_zeros((0, 2))

        def grid_points(cells: torch.Tensor, columns: int) -> torch.Tensor:
            # Coarse cell (col, row) sits on pixel stride * (col, row) of the reference frame.
            xy = torch.stack([cells % columns, cells // columns], -1).to(confidence.dtype)
            return xy * self.coarse_stride + REFERENCE_TO_PIXEL_CENTRES

        return {
            "keypoints0": grid_points(indices0, shape0[1]),
            "keypoints1": grid_points(indices1, shape1[1]) + offsets,
            "confidence": scores,
            "indices0": indices0,
            "indices1": indices1,
            "coarse_confidence": confidence,
        }
