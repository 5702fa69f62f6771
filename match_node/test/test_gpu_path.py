"""What the CUDA path relies on, checked on the CPU (issue 15; see /work/shared/GPU-NOTES.md):
the compiled LightGlue layers give the eager matches, the parts meant to stay fp32 stay fp32
under half-precision autocast (CPU autocast stands in for CUDA's), every tensor reaching a
model is on the model's device, the engine builds no tensor on an implicit device, and the
GPU benchmark runs end to end as a dry run on the CPU."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from match_node import Pipeline, SequentialMatcher
from match_node.engine.weights import WeightsNotFoundError
from match_node.groundtruth.planar import make_sequence
from match_node.models import aliked as aliked_module
from match_node.models.nearest import pairwise_distances

PACKAGE = Path(__file__).resolve().parents[1] / "match_node"
REPO = Path(__file__).resolve().parents[2]
SIZE = (320, 240)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Three frames of a camera path over a real photograph, 320x240."""
    return make_sequence("coffee", num_frames=3, size=SIZE, step=6, seed=1).frames


def _pipeline(extractor: str, matcher: str, max_keypoints: int = 256, **extra: Any) -> Pipeline:
    try:
        return Pipeline(device="cpu", extractor=extractor, matcher=matcher,
                        max_keypoints=max_keypoints, allow_download=False, **extra)
    except WeightsNotFoundError as error:  # weights not on this machine
        pytest.skip(str(error))


# --- a. the compiled path -------------------------------------------------------------------
def test_compiled_lightglue_layers_match_eager(frames):
    """LightGlue's per-layer transformer blocks compiled (inductor, dynamic shapes) give the
    eager matches. The blocks, not the whole matcher, are compiled: the early exit and the
    pruning between layers depend on the data (and on the budget's hook), so they stay eager
    Python around the compiled layers, as they would on the GPU."""
    pipeline = _pipeline("disk", "lightglue", max_keypoints=256)
    features = [pipeline.extract(f) for f in frames[:2]]
    eager = pipeline.match_features(*features)
    layers = pipeline.matcher.transformers
    eager_forward = [layer.forward for layer in layers]
    try:
        for layer in layers:
            layer.compile(dynamic=True)
        compiled = pipeline.match_features(*features)
    finally:
        for layer, forward in zip(layers, eager_forward):
            layer._compiled_call_impl = None  # back to eager for other tests of the module
            assert layer.forward == forward
    assert len(eager) > 50
    assert compiled.exit_layer == eager.exit_layer
    np.testing.assert_array_equal(compiled.indices0, eager.indices0)
    np.testing.assert_array_equal(compiled.indices1, eager.indices1)
    np.testing.assert_allclose(compiled.scores, eager.scores, atol=1e-4)


# --- b. half precision: what must stay fp32 -------------------------------------------------
class DtypeRecorder(TorchDispatchMode):
    """Records the dtype of every floating-point result, per aten operation, as executed
    (below autocast, so after its casts)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: dict[str, set[torch.dtype]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.is_floating_point():
            self.dtypes.setdefault(func.overloadpacket.__name__, set()).add(first.dtype)
        return out


# Operations that must run in fp32 in every model (normalisation statistics, softmax and
# log-assignment probabilities).
FP32_OPS = ("native_layer_norm", "_softmax", "_log_softmax", "logsumexp", "log_sigmoid_forward")
HALF = [torch.float16, torch.bfloat16]
# DISK is left out: its full-resolution U-Net takes ~90 s per case under CPU autocast (its
# fp16 behaviour is in GPU-NOTES: 96-99% of the fp32 matches); LightGlue's fp32 parts are
# covered by the ALIKED and XFeat cases.
FAMILIES = [("aliked-n16", "lightglue"), ("xfeat", "lightglue"), ("aliked-n16", "nn"),
            ("sift", "nn")]


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("extractor,matcher", FAMILIES)
def test_autocast_keeps_fp32_parts(frames, extractor, matcher, dtype):
    """Under CPU autocast every family runs (ALIKED's deformable convolution included: it
    samples in fp32), half precision is really used, the fp32 parts stay fp32, keypoints are
    fp32, and most of the fp32 matches come back within 0.5 px."""
    pipeline = _pipeline(extractor, matcher, max_keypoints=256)
    reference = pipeline.match(frames[0], frames[1])
    recorder = DtypeRecorder()
    with torch.autocast("cpu", dtype=dtype), recorder:
        half = pipeline.match(frames[0], frames[1])
    seen = recorder.dtypes
    if extractor != "sift":  # SIFT is classical: nothing autocast would lower
        assert any(dtype in d for d in seen.values()), "autocast did not lower anything"
    for op in FP32_OPS:
        assert seen.get(op, {torch.float32}) <= {torch.float32, torch.float64}, (op, seen[op])
    if matcher == "nn":
        # The distances' matmul (an addmm) stays fp32 (test_nearest_distances_ignore_autocast
        # checks it alone); ALIKED's descriptor head mixes and aggregates its samples with
        # matmuls (mm) that autocast lowers, as it lowered that head's convolutions.
        assert seen["addmm"] == {torch.float32}, seen["addmm"]
        if extractor.startswith("aliked"):
            assert seen["mm"] == {torch.float32, dtype}, seen["mm"]
    assert half.keypoints0.dtype == np.float32
    # fp16 ties reorder keypoints: compare by position.
    # bf16's 8-bit mantissa moves more keypoints (GPU-NOTES: 90-93% agree at 640x480).
    least = 0.8 if dtype == torch.float16 else 0.65
    found = _share_within(reference, half, 0.5)
    assert len(half) > least * len(reference) and found > least, (len(half), len(reference), found)


def _share_within(reference, other, pixels: float) -> float:
    """Share of `reference`'s matches that `other` has within `pixels` on both sides."""
    if len(reference) == 0:
        return 1.0
    a = np.concatenate([reference.keypoints0, reference.keypoints1], 1)
    b = np.concatenate([other.keypoints0, other.keypoints1], 1)
    if len(b) == 0:
        return 0.0
    distance = np.abs(a[:, None, :] - b[None]).max(-1)
    return float((distance.min(1) <= pixels).mean())


def test_nearest_distances_ignore_autocast():
    generator = torch.Generator().manual_seed(0)
    desc0 = torch.nn.functional.normalize(torch.randn(300, 128, generator=generator), dim=1)
    desc1 = torch.nn.functional.normalize(torch.randn(200, 128, generator=generator), dim=1)
    expected = pairwise_distances(desc0, desc1)
    for dtype in HALF:
        with torch.autocast("cpu", dtype=dtype):
            got = pairwise_distances(desc0.to(dtype), desc1.to(dtype))
        assert got.dtype == torch.float32
        # Inputs rounded to the half dtype: distances within that rounding, not the matmul's.
        exact = pairwise_distances(desc0.to(dtype).float(), desc1.to(dtype).float())
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-5)
        assert (got - expected).abs().max() < 0.05


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_aliked_reads_the_right_pixels_in_half_precision(dtype):
    """GPU-NOTES item 2: ALIKED's pixel coordinates must not go through the half dtype
    (fp16 is integer-exact only to 2048, bf16 to 256): features read at x = 3001 from
    half-precision maps are the values at x = 3001."""
    generator = torch.Generator().manual_seed(0)
    width, height = 3072, 64
    branches = [torch.randn(1, 4, height, width, generator=generator),
                torch.randn(1, 4, height // 2, width // 2, generator=generator)]
    pixels = torch.tensor([[3001, 17], [2049, 3], [300, 40], [257, 5]])

    def read(maps: list[torch.Tensor]) -> torch.Tensor:
        source = aliked_module.FeatureSource(maps, (width, height), (0, 0), (width, height))
        return source.at_pixels(pixels).float()

    expected = read([b.to(dtype).float() for b in branches])
    with torch.autocast("cpu", dtype=dtype):
        got = read([b.to(dtype) for b in branches])
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-2)


def test_superglue_and_loftr_numerics_stay_fp32(monkeypatch):
    """SuperGlue's Sinkhorn and LoFTR's linear attention (with its denominator) and dual
    softmax take and return fp32 under autocast."""
    from match_node.models import loftr, superglue

    calls: list[tuple[str, torch.dtype]] = []

    def recording(name: str, function):
        def wrapper(*args, **kwargs):
            out = function(*args, **kwargs)
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            calls.extend((name, t.dtype) for t in tensors)
            calls.append((name, out.dtype if isinstance(out, torch.Tensor) else out[0].dtype))
            return out
        return wrapper

    monkeypatch.setattr(superglue, "log_optimal_transport",
                        recording("sinkhorn", superglue.log_optimal_transport))
    monkeypatch.setattr(loftr, "linear_attention",
                        recording("linear_attention", loftr.linear_attention))
    generator = torch.Generator().manual_seed(0)
    model = superglue.SuperGlue(sinkhorn_iterations=5).eval()
    kpts = [torch.rand(1, n, 2, generator=generator) * 200 for n in (40, 50)]
    desc = [torch.randn(1, n, 256, generator=generator) for n in (40, 50)]
    scores = [torch.rand(1, n, generator=generator) for n in (40, 50)]
    size = torch.tensor([[320, 240]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model.log_assignment(kpts[0], kpts[1], desc[0], desc[1], size, size, scores[0], scores[1])
        x = torch.randn(1, 30, 64, generator=generator)
        loftr.EncoderLayer(64, 4).eval()(x, x)
    assert ("sinkhorn", torch.float32) in calls and ("linear_attention", torch.float32) in calls
    assert all(d in (torch.float32, torch.float64) for _, d in calls), calls


# --- c. devices -----------------------------------------------------------------------------
def test_every_model_input_is_on_the_model_device(frames):
    """Forward pre-hooks on every submodule of extractor and matcher: each tensor argument is
    on the device of the module's parameters, over a stream of three frames."""
    pipeline = _pipeline("aliked-n16", "lightglue", max_keypoints=256)
    wrong: list[str] = []

    def check(module: torch.nn.Module, args: tuple) -> None:
        parameter = next(module.parameters(recurse=False), None)
        if parameter is None:
            parameter = next(module.parameters(), None)
        if parameter is None:
            return
        for value in list(args):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and t.device != parameter.device:
                    wrong.append(f"{type(module).__name__}: {t.device} != {parameter.device}")

    handles = [m.register_forward_pre_hook(check)
               for model in (pipeline.extractor, pipeline.matcher) for m in model.modules()]
    try:
        stream = SequentialMatcher(pipeline)
        results = []
        for t, frame in enumerate(frames):
            results.append(stream.push(frame, t * 100_000_000).result)
            stream.finish_frame()
    finally:
        for handle in handles:
            handle.remove()
    assert not wrong, wrong[:5]
    assert results[0] is None and all(r is not None and len(r) > 0 for r in results[1:])


# Factories that make a tensor on the default device unless told otherwise.
FACTORIES = {"tensor", "zeros", "ones", "empty", "arange", "full", "rand", "randn", "randint",
             "linspace", "eye", "as_tensor"}
# (file, function) pairs allowed to build tensors on the host: CPU-only helpers and module
# construction (buffers move with .to(device)).
ALLOWED = {
    ("engine/pipeline.py", "calibrate"),        # random image, converted to numpy
    ("engine/matchers.py", "layer_probe"),      # random inputs, then .to(device)
    ("engine/budget.py", "*"),                  # cost models: host numbers only
    ("engine/costmodel.py", "*"),
    ("engine/texture.py", "*"),                 # numpy / host statistics
    ("engine/refine.py", "*"),                  # OpenCV refinement on the host
    ("engine/weights.py", "*"),                 # checkpoint loading
    ("engine/backends.py", "*"),                # inference engines run on the host
    ("models/sift.py", "*"),                    # OpenCV on the host, results moved after
    ("engine/export.py", "*"),                  # offline export tool: example inputs
    ("models/superglue.py", "rename_official_keys"),  # checkpoint loading
}


def _implicit_device_calls(path: Path, relative: str) -> list[str]:
    """`torch.<factory>(...)` calls without `device=` outside `__init__` and allowed
    functions (their tensors would land on the CPU whatever the model's device)."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                    and isinstance(child.func.value, ast.Name) and child.func.value.id == "torch" \
                    and child.func.attr in FACTORIES \
                    and not any(k.arg == "device" for k in child.keywords) \
                    and function not in ("__init__", "<module>") \
                    and (relative, function) not in ALLOWED and (relative, "*") not in ALLOWED:
                found.append(f"{relative}:{child.lineno} torch.{child.func.attr} in {function}")
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_no_tensor_built_on_an_implicit_device():
    """Every tensor the engine and the models build on a frame's path names its device (or
    comes from an existing tensor: new_*, *_like)."""
    found = []
    for folder in ("engine", "models"):
        for path in sorted((PACKAGE / folder).glob("*.py")):
            found += _implicit_device_calls(path, f"{folder}/{path.name}")
    assert not found, found


# --- the GPU benchmark, as a dry run on the CPU ---------------------------------------------
def test_gpu_bench_dry_run(tmp_path):
    command = [sys.executable, "-m", "bench.gpu", "--device", "cpu", "--quick",
               "--frames", "3", "--sizes", "256", "--replay-s", "1", "--no-compile",
               "--output", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["settings"]["sizes"] == [256]
    rows = report["rows"]
    assert {(r["method"], r["precision"], r["keypoints"]) for r in rows} >= {
        ("ours", "fp32", 256), ("official", "fp32", 256)}
    for row in rows:
        assert row["frames"] == 2  # three frames, the first has nothing to match
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
        assert row["peak_memory_mb"] is None
    assert set(report["replay"]) >= {"frames", "p50_ms", "p99_ms", "rss_mb_start",
                                     "rss_mb_end", "peak_memory_mb"}
    assert report["replay"]["frames"] >= 1
    assert (tmp_path / "gpu_cpu.md").read_text().startswith("#")


def test_aliked_branch_sampling_is_grid_sample():
    """The descriptor head reads the low-resolution branches with a gather-and-sum
    (aliked._grid_sample_rows) instead of F.grid_sample: the same values, at interior
    points, on the borders and at the last row and column (align_corners=True)."""
    generator = torch.Generator().manual_seed(0)
    branch = torch.randn(1, 8, 15, 20, generator=generator)
    x = torch.cat([torch.rand(500, generator=generator) * 2 - 1, torch.tensor([-1.0, 1.0, 1.0, -1.0])])
    y = torch.cat([torch.rand(500, generator=generator) * 2 - 1, torch.tensor([-1.0, 1.0, -1.0, 1.0])])
    expected = torch.nn.functional.grid_sample(
        branch, torch.stack([x, y], -1).view(1, -1, 1, 2), mode="bilinear",
        align_corners=True)[0, :, :, 0].t()
    got = aliked_module._grid_sample_rows(branch, x, y)
    assert got.shape == (504, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_aliked_reads_channels_last_branches_alike():
    """The OpenVINO backend returns ALIKED's branches channels-last (N x C x H x W views of
    N x H x W x C memory); the descriptor head reads them by rows then, with the same values
    at pixels and between them. (Within 1e-6, not bit for bit: embedding_bag's weighted sums
    over two equal tables at other addresses were seen to differ in the last bit.)"""
    generator = torch.Generator().manual_seed(0)
    width, height = 96, 64
    branches = [torch.randn(1, 8, height // s, width // s, generator=generator)
                for s in (1, 2, 8, 32)]
    channels_last = [b.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for b in branches]
    assert all(aliked_module._is_channels_last(b) for b in channels_last)
    pixels = torch.stack([torch.randint(0, width, (300,), generator=generator),
                          torch.randint(0, height, (300,), generator=generator)], 1)
    positions = torch.rand(300, 2, generator=generator) * torch.tensor([width - 1.0, height - 1.0])

    def read(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        source = aliked_module.FeatureSource(maps, (width, height), (0, 0), (width, height))
        return source.at_pixels(pixels), source.bilinear(positions)

    for expected, got in zip(read(branches), read(channels_last)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # Reading through the rows view, not a copy of the map, is what makes it faster.
    assert (aliked_module._channels_last_rows(channels_last[1]).data_ptr()
            == channels_last[1].data_ptr())
