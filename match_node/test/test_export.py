"""ONNX export of ALIKED's dense part (engine/export.py) and backend 'onnxruntime': the
exportable deformable convolution equals torchvision's, and ONNX Runtime on the CPU gives the
keypoints and matches of the PyTorch pipeline on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from match_node import Pipeline, SequentialMatcher
from match_node.engine import export
from match_node.engine.families import check_combined
from match_node.groundtruth.planar import make_sequence
from match_node.models.aliked import DeformConv
from match_node.params import ParameterError

onnx = pytest.importorskip("onnx")  # in requirements.txt; the skip only serves partial installs
onnxruntime = pytest.importorskip("onnxruntime")

SETTINGS = {"device": "cpu", "allow_download": False, "max_keypoints": 512}
PIXEL_TOLERANCE = 1e-3


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCH_NODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "backends"


def stream_results(pipeline: Pipeline, frames: list[np.ndarray]) -> list:
    stream = SequentialMatcher(pipeline)
    return [stream.push(frame, t).result for t, frame in enumerate(frames)][1:]


def test_gather_deform_conv_equals_torchvision_on_real_feature_maps():
    pipeline = Pipeline(SETTINGS, refine="none")
    convs = [m for m in pipeline.extractor.modules() if isinstance(m, DeformConv)]
    inputs: dict[int, torch.Tensor] = {}

    def keep_input(index: int):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs.setdefault(index, args[0])
        return hook

    hooks = [m.register_forward_hook(keep_input(i)) for i, m in enumerate(convs)]
    frame = make_sequence("coffee", num_frames=1, size=(320, 240), step=6, seed=2).frames[0]
    pipeline.extract(frame)
    for hook in hooks:
        hook.remove()
    assert len(convs) == 4 and len(inputs) == 4
    with torch.no_grad():
        for i, conv in enumerate(convs):
            x = inputs[i]
            exportable = export.ExportableDeformConv.like(conv)
            torch.testing.assert_close(exportable(x), conv(x), atol=1e-5, rtol=0)
            # Large offsets reach outside the map: zero padding per bilinear corner.
            offset = torch.randn(1, 18, *x.shape[-2:]) * 3
            weight = conv.regular_conv.weight
            bias = torch.randn(weight.shape[0])
            torch.testing.assert_close(
                export.deform_conv2d_gather(x, offset, weight, bias, 1),
                torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=(1, 1)),
                atol=1e-5, rtol=0)


def test_onnxruntime_reproduces_torch_keypoints_and_matches(cache):
    frames = make_sequence("coffee", num_frames=3, size=(320, 240), step=6, seed=2).frames
    torch_pipeline = Pipeline(SETTINGS, refine="none")
    ort_pipeline = Pipeline(SETTINGS, refine="none", backend="onnxruntime")
    for frame in frames:  # the extractor's own output: keypoints to 1e-3 px
        e, a = torch_pipeline.extract(frame), ort_pipeline.extract(frame)
        assert len(e) > 100 and len(a) == len(e)
        torch.testing.assert_close(a.keypoints, e.keypoints, atol=PIXEL_TOLERANCE, rtol=0)
        torch.testing.assert_close(a.descriptors, e.descriptors, atol=1e-4, rtol=0)
    for e, a in zip(stream_results(torch_pipeline, frames),
                    stream_results(ort_pipeline, frames)):  # identical matches
        assert len(e) > 100
        np.testing.assert_array_equal(a.indices0, e.indices0)
        np.testing.assert_array_equal(a.indices1, e.indices1)
        np.testing.assert_allclose(a.keypoints1, e.keypoints1, atol=PIXEL_TOLERANCE, rtol=0)
    runner = ort_pipeline.extractor.dense_runner
    assert runner.exports == 1 and runner.sessions == 1
    files = list(cache.glob("aliked-n16-*.onnx"))
    assert len(files) == 1
    onnx.checker.check_model(str(files[0]), full_check=True)
    # A restart reads the cached file instead of exporting again.
    again = Pipeline(SETTINGS, refine="none", backend="onnxruntime")
    torch.testing.assert_close(again.extract(frames[0]).keypoints,
                               torch_pipeline.extract(frames[0]).keypoints,
                               atol=PIXEL_TOLERANCE, rtol=0)
    assert again.extractor.dense_runner.exports == 0


def test_command_line_export_writes_a_valid_graph(tmp_path, capsys):
    assert export.main(["--extractor", "aliked-n16", "--size", "256x192",
                        "--output", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip()
    assert path.endswith("aliked-n16-dense-256x192.onnx")
    onnx.checker.check_model(path, full_check=True)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(export.OUTPUT_NAMES)
    # A real photograph, as the other checks.
    frame = make_sequence("coffee", num_frames=1, size=(256, 192), step=6, seed=2).frames[0]
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float().div(255).contiguous()
    model = Pipeline(SETTINGS).extractor
    with torch.no_grad():
        expected = model.dense(image)
    for actual, wanted in zip(session.run(None, {"image": image.numpy()}), expected):
        np.testing.assert_allclose(actual, wanted.numpy(), atol=1e-4, rtol=0)


def test_onnxruntime_choices_are_checked_like_openvino():
    with pytest.raises(ParameterError, match="onnxruntime.*CPU"):
        check_combined({"backend": "onnxruntime", "device": "cuda"})
    with pytest.raises(ParameterError, match="onnxruntime.*aliked"):
        check_combined({"backend": "onnxruntime", "extractor": "superpoint"})
    check_combined({"backend": "onnxruntime", "extractor": "aliked-t16", "device": "cpu"})


def test_lightglue_layers_exported_one_graph_each_give_torch_matches(tmp_path):
    """Every transformer layer as its own graph (dynamic point counts): on real features each
    layer's graph gives torch's descriptors from torch's inputs, the graphs chained in ONNX
    Runtime give identical matches from the last layer's assignment, and pruning between
    layers (fewer points than the graph was traced with) runs too.

    Each graph is compared on torch's own inputs, not on the chain's: float32 differences
    of ~1e-5 in one layer grow to ~1e-3 over the nine (measured: 1.4e-4 at most per layer,
    1.5e-3 chained), which says nothing about whether a graph is right."""
    from match_node.models.lightglue import filter_matches, normalize_keypoints

    pipeline = Pipeline(SETTINGS, refine="none")
    frames = make_sequence("coffee", num_frames=2, size=(320, 240), step=6, seed=2).frames
    f0, f1 = pipeline.extract(frames[0]), pipeline.extract(frames[1])
    matcher = pipeline.matcher
    paths = export.export_lightglue_layers(matcher, tmp_path)
    assert len(paths) == matcher.conf["n_layers"]
    onnx.checker.check_model(str(paths[0]), full_check=True)
    sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in paths]
    size = torch.tensor([[320, 240]])
    with torch.no_grad():
        encodings = [matcher.posenc(normalize_keypoints(f.keypoints[None], size)) for f in (f0, f1)]
        descs = [matcher.input_proj(f.descriptors[None].float()) for f in (f0, f1)]
        ours = [d.numpy() for d in descs]
        for layer, session in zip(matcher.transformers, sessions):
            inputs = {"encoding0": encodings[0].numpy(), "encoding1": encodings[1].numpy()}
            alone = session.run(None, {"desc0": descs[0].numpy(), "desc1": descs[1].numpy(),
                                       **inputs})
            descs = list(layer(*descs, *encodings))
            for a, e in zip(alone, descs):
                np.testing.assert_allclose(a, e.numpy(), atol=1e-3, rtol=1e-4)
            ours = session.run(None, {"desc0": ours[0], "desc1": ours[1], **inputs})
        assignment = matcher.log_assignment[-1]
        expected = filter_matches(assignment(*descs), matcher.conf["filter_threshold"])[0]
        actual = filter_matches(assignment(*(torch.from_numpy(d) for d in ours)),
                                matcher.conf["filter_threshold"])[0]
        assert (expected >= 0).sum() > 100
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)
        # Pruned: a subset of the points of image 0 through one layer graph.
        keep = torch.arange(0, len(f0), 3)
        pruned = sessions[0].run(None, {"desc0": descs[0][:, keep].numpy(),
                                        "desc1": descs[1].numpy(),
                                        "encoding0": encodings[0][..., keep, :].numpy(),
                                        "encoding1": encodings[1].numpy()})
        wanted = matcher.transformers[0](descs[0][:, keep], descs[1], encodings[0][..., keep, :],
                                         encodings[1])
        for a, e in zip(pruned, wanted):
            np.testing.assert_allclose(a, e.numpy(), atol=1e-3, rtol=1e-4)
