"""ONNX export of ALIKED's dense part (image -> 4 branches, score map), for
`backend: onnxruntime` (engine/backends.py) and for deployment with other engines (TensorRT:
README, "Deployment: ONNX / TensorRT").

ALIKED's deformable convolutions call torchvision's `deform_conv2d`, which no ONNX exporter
knows. For export only, each DeformConv is swapped for ExportableDeformConv, which computes
the same function in plain tensor ops (bilinear sampling of the 9 taps by gather, then one
matmul with the convolution weight); the model that runs in PyTorch is never changed.

One graph per input size: shapes are traced as constants, as for OpenVINO. NMS is not in
the graph: it runs in PyTorch on the pixels above the detection threshold (ALIKED.detect).

    python -m match_node.engine.export --extractor aliked-n16 --size 640x480 --output DIR
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..models.aliked import DeformConv

OPSET = 19
OUTPUT_NAMES = ("branch1", "branch2", "branch3", "branch4", "scores")


def deform_conv2d_gather(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None, padding: int = 1) -> torch.Tensor:
    """torchvision.ops.deform_conv2d for a 3x3 (any kh x kw) kernel, stride 1, one offset
    group and no mask, in gather and matmul ops that ONNX exports.

    x: B x C x H x W; offset: B x 2*kh*kw x H' x W' with (dy, dx) per tap, taps row-major;
    weight: O x C x kh x kw. Samples outside the map are zero (per bilinear corner, as
    torchvision's bilinear_interpolate)."""
    b, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    taps = kh * kw
    out_h, out_w = offset.shape[-2:]
    offset = offset.view(b, taps, 2, out_h, out_w)
    ky, kx = torch.meshgrid(torch.arange(kh, dtype=x.dtype, device=x.device),
                            torch.arange(kw, dtype=x.dtype, device=x.device), indexing="ij")
    oy = torch.arange(out_h, dtype=x.dtype, device=x.device).view(1, 1, out_h, 1)
    ox = torch.arange(out_w, dtype=x.dtype, device=x.device).view(1, 1, 1, out_w)
    # Sample positions per tap: B x taps x H' x W'.
    y = oy - padding + ky.reshape(1, taps, 1, 1) + offset[:, :, 0]
    xx = ox - padding + kx.reshape(1, taps, 1, 1) + offset[:, :, 1]
    y0, x0 = torch.floor(y), torch.floor(xx)
    ly, lx = y - y0, xx - x0
    flat = x.reshape(b, c, h * w)
    size = taps * out_h * out_w
    sampled = torch.zeros(b, c, size, dtype=x.dtype, device=x.device)
    for cy, cx, wy, wx in ((y0, x0, 1 - ly, 1 - lx), (y0, x0 + 1, 1 - ly, lx),
                           (y0 + 1, x0, ly, 1 - lx), (y0 + 1, x0 + 1, ly, lx)):
        inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
        index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()   # B x taps x H' x W'
        values = flat.gather(2, index.view(b, 1, size).expand(b, c, size))
        sampled = sampled + values * (wy * wx * inside.to(x.dtype)).view(b, 1, size)
    # B x C x (taps x L): the column order of weight.view(O, C * taps).
    columns = sampled.reshape(b, c * taps, out_h * out_w)
    out = torch.matmul(weight.reshape(out_channels, c * taps), columns)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, out_channels, out_h, out_w)


class ExportableDeformConv(DeformConv):
    """ALIKED's DeformConv computed with deform_conv2d_gather (exports to ONNX)."""

    @classmethod
    def like(cls, conv: DeformConv) -> "ExportableDeformConv":
        """A copy of `conv` (same weights) that exports."""
        new = cls(conv.regular_conv.in_channels, conv.regular_conv.out_channels)
        new.load_state_dict(conv.state_dict())
        return new.to(conv.regular_conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = max(x.shape[-2:]) / 4.0  # as DeformConv
        offset = self.offset_conv(x).clamp(-limit, limit)
        return deform_conv2d_gather(x, offset, self.regular_conv.weight,
                                    self.regular_conv.bias, padding=1)


class ExportableDense(nn.Module):
    """An export-ready copy of an ALIKED model's dense part: image (B x 3 x H x W) -> the
    tuple of `dense`'s outputs, with every DeformConv swapped for ExportableDeformConv."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # A copy without the model's dense runner (it may hold an inference session).
        runner = getattr(model, "dense_runner", None)
        self.model = copy.deepcopy(model, memo={id(runner): None}).eval()
        for name, module in list(self.model.named_modules()):
            if isinstance(module, DeformConv) and not isinstance(module, ExportableDeformConv):
                parent_name, _, child = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child, ExportableDeformConv.like(module))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.dense(image))


def export_dense(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write `model`'s dense part, traced for `example`'s shape, as ONNX to `path` (written
    under a temporary name and renamed, so a killed process leaves no half file)."""
    module = ExportableDense(model).to(example.device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns that shapes become constants: intended, one graph per size.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(partial), opset_version=OPSET,
                          input_names=["image"], output_names=list(OUTPUT_NAMES),
                          dynamo=False)
    os.replace(partial, path)
    return path


def export_lightglue_layers(matcher: nn.Module, directory: Path,
                            prefix: str = "lightglue") -> list[Path]:
    """Write each of a LightGlue's transformer layers as its own ONNX graph,
    `{prefix}-layer{i}.onnx` in `directory`: inputs desc0 (1 x N0 x D), desc1 (1 x N1 x D),
    encoding0 (2 x 1 x 1 x N0 x head_dim), encoding1; outputs the updated desc0, desc1. The
    point counts are dynamic, so early exit, pruning and the latency budget can stay in
    Python between layers (one graph for the whole stack would fix its depth and widths)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dim = matcher.conf["descriptor_dim"]
    head_dim = dim // matcher.conf["num_heads"]
    # Different point counts, so the traced graph cannot mix up the two sides' axes.
    example = (torch.randn(1, 7, dim), torch.randn(1, 5, dim),
               torch.randn(2, 1, 1, 7, head_dim), torch.randn(2, 1, 1, 5, head_dim))
    axes = {"desc0": {1: "n0"}, "desc1": {1: "n1"}, "encoding0": {3: "n0"},
            "encoding1": {3: "n1"}, "out0": {1: "n0"}, "out1": {1: "n1"}}
    paths = []
    for i, layer in enumerate(matcher.transformers):
        layer = copy.deepcopy(layer).cpu().float().eval()
        path = directory / f"{prefix}-layer{i}.onnx"
        partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(layer, example, str(partial), opset_version=OPSET,
                              input_names=["desc0", "desc1", "encoding0", "encoding1"],
                              output_names=["out0", "out1"], dynamic_axes=axes, dynamo=False)
        os.replace(partial, path)
        paths.append(path)
    return paths


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480) (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: export an ALIKED extractor's dense part for one image size (and, with
    --lightglue, its LightGlue's transformer layers)."""
    from . import families
    from .pipeline import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractor", default="aliked-n16",
                        choices=[n for n, f in families.EXTRACTOR_FAMILIES.items()
                                 if "onnxruntime" in f.backends])
    parser.add_argument("--size", type=parse_size, required=True, help="WIDTHxHEIGHT")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument("--weights", default="", help="checkpoint (default: official file)")
    parser.add_argument("--lightglue", action="store_true",
                        help="also write the LightGlue layers, one graph each")
    parser.add_argument("--allow-download", action="store_true")
    args = parser.parse_args(argv)
    # The pipeline resolves weights and run-time parameters exactly as the node does.
    pipeline = Pipeline({"device": "cpu", "extractor": args.extractor,
                         "extractor_weights": args.weights,
                         "allow_download": args.allow_download, "matcher": "lightglue"})
    model = pipeline.extractor
    w, h = args.size
    path = args.output / f"{args.extractor}-dense-{w}x{h}.onnx"
    export_dense(model.eval(), torch.zeros(1, 3, h, w), path)
    print(path)
    if args.lightglue:
        for layer in export_lightglue_layers(pipeline.matcher, args.output,
                                             f"{args.extractor}-lightglue"):
            print(layer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
