"""backend 'openvino': the extractor's encoder compiled with OpenVINO gives the keypoints and
matches of the PyTorch pipeline on real images, once per image size, cached on disk."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from match_node import Pipeline, SequentialMatcher
from match_node.engine import backends
from match_node.engine.families import check_combined
from pathlib import Path

from match_node import params as P
from match_node.groundtruth.planar import make_sequence, reprojection_errors
from match_node.params import ParameterError

pytest.importorskip("openvino")  # in requirements.txt; the skip only serves partial installs

SETTINGS = {"device": "cpu", "allow_download": False, "max_keypoints": 512}
PIXEL_TOLERANCE = 1e-3


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCH_NODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "backends"


def stream_results(pipeline: Pipeline, frames: list[np.ndarray]) -> list:
    stream = SequentialMatcher(pipeline)
    return [stream.push(frame, t).result for t, frame in enumerate(frames)][1:]


def test_openvino_reproduces_torch_keypoints_and_matches(cache):
    # Two real sequences at two sizes: the second size compiles again without a restart.
    small = make_sequence("coffee", num_frames=3, size=(320, 240), step=6, seed=2).frames
    other = make_sequence("astronaut", num_frames=2, size=(352, 256), step=6, seed=4).frames
    torch_pipeline = Pipeline(SETTINGS, refine="none")
    ov_pipeline = Pipeline(SETTINGS, refine="none", backend="openvino")
    for frames in (small, other):
        for frame in frames:  # the extractor's own output: keypoints to 1e-3 px
            e, a = torch_pipeline.extract(frame), ov_pipeline.extract(frame)
            assert len(e) > 100 and len(a) == len(e)
            torch.testing.assert_close(a.keypoints, e.keypoints, atol=PIXEL_TOLERANCE, rtol=0)
            torch.testing.assert_close(a.descriptors, e.descriptors, atol=1e-4, rtol=0)
        expected = stream_results(torch_pipeline, frames)
        actual = stream_results(ov_pipeline, frames)
        for e, a in zip(expected, actual):  # identical matches
            assert len(e) > 100
            np.testing.assert_array_equal(a.indices0, e.indices0)
            np.testing.assert_array_equal(a.indices1, e.indices1)
            np.testing.assert_allclose(a.keypoints1, e.keypoints1, atol=PIXEL_TOLERANCE, rtol=0)
    encoder = ov_pipeline.extractor.dense_runner
    assert encoder.compiles == 2 and encoder.conversions == 2
    assert len(list(cache.glob("aliked-n16-*.xml"))) == 2


def by_position(keypoints: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Keypoints (and rows of `others`) sorted by (x, y)."""
    order = np.lexsort(keypoints.numpy().T.round(3))
    return [keypoints[order], *(t[order] for t in others)]


def match_pairs(result) -> set[tuple[float, ...]]:
    return {tuple(row) for row in np.hstack([result.keypoints0, result.keypoints1]).round(3)}


@pytest.mark.parametrize("matcher", ["lightglue", "nn"])
def test_openvino_reproduces_torch_xfeat(cache, matcher):
    """XFeat's dense part (backbone, heads) in OpenVINO: the same keypoints (to 1e-3 px) and
    descriptors, and the same matches. Keypoints whose scores tie to ~1e-5 may come in
    another order (the scores differ by float rounding), so both are compared by position;
    one size is not a multiple of 32 (the resize is part of the compiled graph)."""
    settings = {**SETTINGS, "extractor": "xfeat", "matcher": matcher, "refine": "none"}
    torch_pipeline = Pipeline(settings)
    ov_pipeline = Pipeline(settings, backend="openvino")
    for photo, size in (("chelsea", (320, 240)), ("coffee", (350, 270))):
        frames = make_sequence(photo, num_frames=3, size=size, step=6, seed=3).frames
        for frame in frames:
            e, a = torch_pipeline.extract(frame), ov_pipeline.extract(frame)
            assert len(e) > 100 and len(a) == len(e)
            expected = by_position(e.keypoints, e.descriptors)
            actual = by_position(a.keypoints, a.descriptors)
            torch.testing.assert_close(actual[0], expected[0], atol=PIXEL_TOLERANCE, rtol=0)
            torch.testing.assert_close(actual[1], expected[1], atol=1e-4, rtol=0)
        for e, a in zip(stream_results(torch_pipeline, frames), stream_results(ov_pipeline, frames)):
            assert len(e) > 50 and match_pairs(a) == match_pairs(e)
    assert ov_pipeline.extractor.dense_runner.compiles == 2
    assert len(list(cache.glob("xfeat-*.xml"))) == 2


def test_the_cpu_realtime_preset_runs_xfeat_in_openvino(cache):
    """config/cpu_realtime.yaml as the node reads it: valid, XFeat's network compiled with
    OpenVINO, and precise matches along a real sequence (the preset's precision is measured
    by bench.cpu and bench.node_rate; 0.9 at 3 px here is a floor for 3 small frames)."""
    config = Path(__file__).resolve().parents[1] / "config" / "cpu_realtime.yaml"
    values = P.validate({**P.load_yaml(config), "device": "cpu", "allow_download": False})
    assert values["backend"] == "openvino" and values["extractor"] == "xfeat"
    assert values["latency_budget_ms"] > 0
    # Without its budget: what the budget does depends on this machine's speed.
    values["latency_budget_ms"] = 0.0
    pipeline = Pipeline({k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"})
    assert isinstance(pipeline.extractor.dense_runner, backends.OpenVinoDense)
    sequence = make_sequence("astronaut", num_frames=3, size=(320, 240), step=6, seed=5)
    for index, result in enumerate(stream_results(pipeline, sequence.frames), start=1):
        errors = reprojection_errors(sequence.relative(index - 1, index), result.keypoints0,
                                     result.keypoints1)
        assert len(result) >= 50 and (errors < 3).mean() >= 0.9
    assert pipeline.extractor.dense_runner.compiles == 1


def test_selu_is_rewritten_as_the_same_function_the_cpu_plugin_fuses():
    # SELU after a convolution, as in ALIKED: the rewritten graph has no Selu left and gives
    # the same outputs (a change of form, not of function).
    import openvino

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SELU(),
                                 torch.nn.Conv2d(8, 4, 1), torch.nn.SELU()).eval()
    image = torch.randn(1, 3, 24, 32) * 3
    with torch.no_grad():
        expected = module(image).numpy()
        model = openvino.convert_model(module, example_input=image)
    selus = [op for op in model.get_ordered_ops() if op.get_type_name() == "Selu"]
    assert len(selus) == 2
    assert backends.selu_as_elu(model, openvino) == 2
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "Selu"]
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    actual = compiled(image.numpy())[0]
    assert (expected < 0).any() and (expected > 0).any()  # both branches of SELU are used
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_refined_matches_agree_within_the_refinement_tolerance(cache):
    """With patch refinement (the default) matches are identical; refined positions agree to
    the refinement's own convergence step (0.01-0.05 px), which 1e-5 differences in the
    starting keypoint can shift. A match at the edge of the refinement's acceptance tests
    (last step 0.05 px, NCC) may be accepted by one and not the other: at most 1 in 100."""
    frames = make_sequence("coffee", num_frames=3, size=(320, 240), step=6, seed=2).frames
    expected = stream_results(Pipeline(SETTINGS), frames)
    actual = stream_results(Pipeline(SETTINGS, backend="openvino"), frames)
    for e, a in zip(expected, actual):
        np.testing.assert_array_equal(a.indices1, e.indices1)
        same = a.refined == e.refined
        assert same.mean() >= 0.99 and e.refined.mean() > 0.5
        np.testing.assert_allclose(a.keypoints1[same], e.keypoints1[same], atol=0.05, rtol=0)


def test_a_restart_reads_the_cached_conversion(cache):
    frame = make_sequence("coffee", num_frames=1, size=(320, 240), step=6, seed=2).frames[0]
    first = Pipeline(SETTINGS, backend="openvino")
    first.extract(frame)
    assert first.extractor.dense_runner.conversions == 1
    again = Pipeline(SETTINGS, backend="openvino")
    features = again.extract(frame)
    assert again.extractor.dense_runner.conversions == 0  # read from the cache
    assert again.extractor.dense_runner.compiles == 1
    assert len(features) > 100
    # Different weights never reuse it: the file name carries a hash of the weights.
    with torch.no_grad():
        again.extractor.block1.conv1.weight.mul_(0.5)
    assert backends.weights_digest(again.extractor) != first.extractor.dense_runner.digest


def test_impossible_backend_choices_are_refused_in_one_line():
    with pytest.raises(ParameterError, match="openvino.*CPU"):
        check_combined({"backend": "openvino", "device": "cuda"})
    with pytest.raises(ParameterError, match="openvino.*aliked.*xfeat"):
        check_combined({"backend": "openvino", "extractor": "superpoint"})


def test_the_preset_budget_lowers_the_cap_and_holds_the_compiled_size(cache):
    """The CPU preset under a budget no frame can meet (1 ms, so that this machine's speed
    does not matter): nearest neighbours are timed as one step, which lets the budget lower
    the keypoint cap frame by frame to min_keypoints, while the resolution stays where
    OpenVINO compiled it (no compile after start-up; a budget free to resize would compile
    per size, seconds each)."""
    config = Path(__file__).resolve().parents[1] / "config" / "cpu_realtime.yaml"
    values = P.validate({**P.load_yaml(config), "device": "cpu", "allow_download": False,
                         "latency_budget_ms": 1.0, "min_keypoints": 200})
    pipeline = Pipeline({k: v for k, v in values.items() if P.SPECS[k].scope == "pipeline"})
    assert pipeline.fixed_resolution
    compiled = pipeline.extractor.dense_runner.compiles  # the budget's calibration sizes
    sequence = make_sequence("astronaut", num_frames=12, size=(320, 240), step=6, seed=5)
    results = stream_results(pipeline, sequence.frames)
    caps = [r.keypoint_cap for r in results]
    # Halfway to the target per frame, once 5 matches are timed: close to the floor by now.
    assert caps[0] == values["max_keypoints"] and 200 <= caps[-1] <= 230
    assert all(later <= earlier for earlier, later in zip(caps, caps[1:]))
    assert {r.extraction_scale for r in results} == {1.0}
    assert pipeline.budget.cost.assignment.count == len(results)
    assert pipeline.extractor.dense_runner.compiles == compiled  # 320x240 is one of them
    assert all(len(r) >= 20 for r in results)


def test_epipolar_filter_keeps_a_consistent_subset():
    """epipolar_filter_px (the CPU preset's outlier filter): the filtered matches are a subset
    of the unfiltered ones, fit one fundamental matrix, and are more often correct."""
    from match_node.engine.texture import epipolar_inliers
    from match_node.groundtruth.planar import reprojection_errors

    sequence = make_sequence("chelsea", num_frames=2, size=(320, 240), step=6, seed=1)
    settings = {**SETTINGS, "extractor": "xfeat", "matcher": "nn", "refine": "none"}
    plain = Pipeline(settings).match(*sequence.frames)
    filtered = Pipeline(settings, epipolar_filter_px=1.0).match(*sequence.frames)
    pairs = set(zip(plain.indices0.tolist(), plain.indices1.tolist()))
    kept = list(zip(filtered.indices0.tolist(), filtered.indices1.tolist()))
    assert 50 < len(kept) < len(pairs) and set(kept) <= pairs
    assert epipolar_inliers(filtered.keypoints0, filtered.keypoints1, 1.0).mean() > 0.95

    def precision(r):
        return (reprojection_errors(sequence.relative(0, 1), r.keypoints0.astype(float),
                                    r.keypoints1.astype(float)) < 3).mean()
    assert precision(filtered) > precision(plain)
