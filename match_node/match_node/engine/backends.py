"""Where a network runs: PyTorch (the default), or OpenVINO on the CPU for the part that pays.

On a CPU the time of the default pipeline is in the extractor's dense part (ALIKED's encoder:
small-channel full-resolution convolutions and deformable convolutions; its score head and
NMS: ~70% of a frame, measured with torch.profiler), while
LightGlue's layers are close to what the CPU can do and must stay in Python anyway: the
latency budget decides after every layer whether to run the next, and pruning changes the
number of points from layer to layer. So `backend: openvino` runs the extractor's dense part
(`dense`: image -> feature branches, score map) as a compiled OpenVINO model and
everything else (keypoint selection, descriptors, matching, budget) as before; outputs agree
with PyTorch to ~1e-5 (test_backends.py checks keypoints to 1e-3 px and identical matches on
real images).

Shapes: OpenVINO compiles for one input size. The image size is fixed per camera, so the
dense part is converted and compiled once per size and kept; a new size compiles again
without stopping anything (the frame that brings it pays the compile). Converted models are
cached on disk under `cache_dir()`, keyed by the model's name, a hash of its weights, the
input size, the revision of what `dense` returns (GRAPH_REVISION), the OpenVINO version and
the precision, so a restart reads them instead of converting again; OpenVINO's own
compiled-blob cache sits beside them.

Precision: f32, always. OpenVINO's CPU plugin otherwise picks bf16 on CPUs that have it, which
moves ALIKED's outputs by ~0.15 (measured) and changes keypoints.

`backend: onnxruntime` does the same with ONNX Runtime's CPU execution provider: the dense part
is exported to ONNX (engine/export.py, with ALIKED's deformable convolutions in plain ops) once
per size into the same cache directory, keyed the same way; the exported file is
also what other engines (TensorRT) take. test_export.py checks it like test_backends.py.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
# In cached file names: bumped whenever what the models' `dense` returns changes, so that a
# cache written by an older version is never read as this one's graph. 2: ALIKED's NMS peaks
# left the graph (detection runs it on the pixels above the threshold).
GRAPH_REVISION = 2
# An image (B x C x H x W) -> the dense part's output tensors.
Dense = Callable[[torch.Tensor], list[torch.Tensor]]


class BackendError(RuntimeError):
    """The chosen backend cannot run here (package missing, wrong device, unsupported model)."""


def cache_dir() -> Path:
    """Where converted models are cached: $MATCH_NODE_CACHE or ~/.cache/match_node, /backends."""
    root = os.environ.get("MATCH_NODE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "match_node")
    return Path(root) / "backends"


def weights_digest(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values): a cached
    conversion is only reused for the weights it was made from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class _DenseModule(nn.Module):
    """The dense part as a module with tensor outputs only (what the converter traces)."""

    def __init__(self, owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner  # registers the weights, so they are traced as constants

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.owner.dense(image))


class _EngineDense(abc.ABC):
    """What every inference-engine runner of a dense part shares: one compiled model per
    input shape (what a traced graph bakes in), built on first use by the
    subclass's `_build`, run on CPU float arrays by its `_run`.

    `owner` is the extractor with its weights loaded; `name` identifies the model in cache
    file names.
    """
    backend = ""
    # The outputs the engine returns channels-last (N x H x W x C arrays).
    channels_last_outputs: tuple[int, ...] = ()

    def __init__(self, owner: nn.Module, name: str, threads: int | None = None,
                 cache: Path | None = None) -> None:
        self._owner = owner
        self.name = name
        self.digest = weights_digest(owner)
        self.cache = cache or cache_dir()
        self.threads = threads or torch.get_num_threads()
        self._built: dict[tuple, object] = {}

    def _key(self, image: torch.Tensor) -> tuple:
        return tuple(image.shape)

    @abc.abstractmethod
    def _build(self, example: torch.Tensor, key: tuple) -> object:
        """The engine's model for `key`, converted or read from the cache."""

    @abc.abstractmethod
    def _run(self, built: object, array: np.ndarray) -> list[np.ndarray]:
        """The dense part's outputs for one float32 image array."""

    def __call__(self, image: torch.Tensor) -> list[torch.Tensor]:
        if image.device.type != "cpu":
            raise BackendError(f"backend '{self.backend}' runs on the CPU; use backend 'torch' "
                               f"on {image.device}")
        key = self._key(image)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = self._build(image, key)
        outputs = [torch.from_numpy(output)
                   for output in self._run(built, image.detach().float().contiguous().numpy())]
        for index in self.channels_last_outputs:  # N x H x W x C, as N x C x H x W views
            outputs[index] = outputs[index].permute(0, 3, 1, 2)
        return outputs


class OpenVinoDense(_EngineDense):
    """A model's dense part (`owner.dense`: image -> list of maps) compiled with OpenVINO for
    the CPU, with converted models cached on disk. `conversions` and `compiles` count the
    work done by this object (for tests and logs).
    """
    backend = "openvino"

    def __init__(self, owner: nn.Module, name: str, threads: int | None = None,
                 cache: Path | None = None) -> None:
        try:
            import openvino
        except ImportError as error:  # pragma: no cover - openvino is in requirements.txt
            raise BackendError("backend 'openvino' needs the openvino package "
                               "(pip install openvino)") from error
        super().__init__(owner, name, threads, cache)
        self._ov = openvino
        self._module = _DenseModule(owner).eval()
        self._core = openvino.Core()
        self.channels_last_outputs = tuple(getattr(owner, "dense_channels_last_outputs", ()))
        self.conversions = 0   # models converted from PyTorch (not found in the cache)
        self.compiles = 0      # models compiled for the CPU

    def _path(self, key: tuple) -> Path:
        b, c, h, w = key
        version = self._ov.__version__.split("-")[0]
        return self.cache / (f"{self.name}-{self.digest}-{w}x{h}x{c}-b{b}-r{GRAPH_REVISION}"
                             f"-ov{version}-f32.xml")

    def _build(self, example: torch.Tensor, key: tuple) -> object:
        shape = tuple(example.shape)
        path = self._path(key)
        start = time.perf_counter()
        if path.is_file() and path.with_suffix(".bin").is_file():
            model = self._core.read_model(str(path))
            how = f"read from {path}"
        else:
            log.info("backend openvino: converting %s's dense part for %dx%d (once per image "
                     "size; cached in %s)", self.name, shape[-1], shape[-2], self.cache)
            with torch.no_grad(), warnings.catch_warnings():
                # Tracing warns that shapes become constants: intended, one model per size.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                model = self._ov.convert_model(self._module, example_input=example)
            self.cache.mkdir(parents=True, exist_ok=True)
            # Written under a temporary name and renamed, so a killed process never leaves a
            # half-written model that a later start would read.
            partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.xml")
            self._ov.save_model(model, str(partial), compress_to_fp16=False)
            os.replace(partial.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(partial, path)
            self.conversions += 1
            how = "converted"
        rewritten = selu_as_elu(model, self._ov)
        model = self._outputs_channels_last(model)
        self._core.set_property({"CACHE_DIR": str(self.cache / "compiled")})
        compiled = self._core.compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": int(self.threads),
            "PERFORMANCE_HINT": "LATENCY"})
        self.compiles += 1
        log.info("backend openvino: %s's dense part for %dx%d ready in %.1f s (%s; %d SELU "
                 "rewritten)", self.name, shape[-1], shape[-2], time.perf_counter() - start, how,
                 rewritten)
        return compiled

    def _run(self, built: object, array: np.ndarray) -> list[np.ndarray]:
        outputs = built(array)
        return [outputs[i] for i in range(len(outputs))]

    def _outputs_channels_last(self, model):
        """The model with the owner's `dense_channels_last_outputs` returned channels-last
        (OpenVINO inserts the transpose, done where its CPU plugin reorders its own blocked
        layout for the output anyway). Applied after reading the converted model, so cached
        files and their keys stay as they are."""
        if not self.channels_last_outputs:
            return model
        from openvino.preprocess import PrePostProcessor

        steps = PrePostProcessor(model)
        for index in self.channels_last_outputs:
            steps.output(index).model().set_layout(self._ov.Layout("NCHW"))
            steps.output(index).tensor().set_layout(self._ov.Layout("NHWC"))
        return steps.build()


def selu_as_elu(model, openvino) -> int:
    """Rewrite every Selu of an OpenVINO model as the same function, lambda * Elu(x, alpha);
    returns how many were rewritten.

    Why: OpenVINO's CPU plugin runs Selu with a reference kernel in plain layout, so each one
    costs a pass over the map plus two layout reorders around its convolutions, where Elu and
    a multiply fuse into the convolution as post-ops. On ALIKED-n16 at 640x480 (2 threads)
    the dense part went from 366 to 185 ms, Selu and reorders having taken 62% of it; outputs
    moved by at most 9e-6. Done on the graph before compiling, so the PyTorch model, the
    cached converted files and their keys stay as they are.
    """
    from openvino import opset13 as ops

    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Selu":
            continue
        data, alpha, scale = (op.input_value(i) for i in range(3))
        alphas = alpha.get_node().get_data().reshape(-1)
        if alphas.size != 1:  # Elu takes one alpha; a per-channel Selu stays as it is
            continue
        elu = ops.multiply(ops.elu(data, float(alphas[0])), scale)
        elu.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(elu.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


class OnnxRuntimeDense(_EngineDense):
    """A model's dense part exported to ONNX (engine/export.py) and run with ONNX Runtime's
    CPU execution provider, with exported files cached on disk. `exports` and `sessions`
    count the work done by this object."""
    backend = "onnxruntime"

    def __init__(self, owner: nn.Module, name: str, threads: int | None = None,
                 cache: Path | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as error:  # pragma: no cover - onnxruntime is in requirements.txt
            raise BackendError("backend 'onnxruntime' needs the onnxruntime package "
                               "(pip install onnxruntime)") from error
        super().__init__(owner, name, threads, cache)
        self._ort = onnxruntime
        self.exports = 0    # graphs exported from PyTorch (not found in the cache)
        self.sessions = 0   # inference sessions created

    def path(self, key: tuple) -> Path:
        """The cached ONNX file for a (B, C, H, W) key."""
        from .export import OPSET
        b, c, h, w = key
        version = torch.__version__.split("+")[0]
        return self.cache / (f"{self.name}-{self.digest}-{w}x{h}x{c}-b{b}-r{GRAPH_REVISION}"
                             f"-onnx{OPSET}-torch{version}-f32.onnx")

    def _build(self, example: torch.Tensor, key: tuple) -> object:
        from .export import export_dense
        path = self.path(key)
        start = time.perf_counter()
        how = f"read from {path}"
        if not path.is_file():
            log.info("backend onnxruntime: exporting %s's dense part for %dx%d (once per image "
                     "size; cached in %s)", self.name, key[3], key[2], self.cache)
            export_dense(self._owner, example.detach().float(), path)
            self.exports += 1
            how = "exported"
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = int(self.threads)
        session = self._ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self.sessions += 1
        log.info("backend onnxruntime: %s's dense part for %dx%d ready in %.1f s (%s)",
                 self.name, key[3], key[2], time.perf_counter() - start, how)
        return session

    def _run(self, built: object, array: np.ndarray) -> list[np.ndarray]:
        return built.run(None, {"image": array})


RUNNERS: dict[str, type] = {"openvino": OpenVinoDense, "onnxruntime": OnnxRuntimeDense}


def dense_backend(backend: str, model: nn.Module, name: str, device: torch.device,
                  threads: int | None = None) -> Dense | None:
    """The runner of `model`'s dense part for `backend`: None for 'torch' (the model runs it
    itself), an OpenVinoDense or OnnxRuntimeDense otherwise. Raises BackendError when the
    backend cannot serve this model or device (one line, for the node's start-up error)."""
    if backend == "torch":
        return None
    if backend not in RUNNERS:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if device.type != "cpu":
        raise BackendError(f"backend '{backend}' runs on the CPU, but device is {device}; use "
                           "backend 'torch' on a GPU")
    if not hasattr(model, "dense"):
        raise BackendError(f"backend '{backend}' is available for the ALIKED and XFeat "
                           f"extractors, not for {name}")
    return RUNNERS[backend](model, name, threads)
