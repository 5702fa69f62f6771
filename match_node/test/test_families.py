"""Every extractor / matcher family through the Pipeline (the API the node and the CLI use):
real weights where they exist offline, official-layout files with random values where they do
not (SuperPoint, SuperGlue: non-commercial, never shipped)."""
import numpy as np
import pytest
import torch

from match_node import ParameterError, Pipeline
from match_node.groundtruth.planar import reprojection_errors
from match_node.engine.weights import WeightsNotFoundError

from conftest import HOMOGRAPHY


@pytest.fixture(scope="module")
def pair(coffee_pair):
    image0, image1, _ = coffee_pair
    return image0[:320, :480].copy(), image1[:320, :480].copy()


# Measured on the 480x320 coffee crop under the test homography, 512 keypoints: matches,
# precision within 3 px, median error. DISK+LightGlue 417 / 0.995 / 0.55 px, XFeat+LighterGlue
# 223 / 0.89 / 1.2 px, ALIKED+NN 168 / 0.99 / 0.27 px, DISK+NN 405 / 1.0 / 0.54 px, XFeat+NN
# 139 / 0.78 / 1.0 px (XFeat localises more coarsely; its descriptors are weaker alone).
@pytest.mark.parametrize("extractor,matcher,name,min_matches,min_precision", [
    ("disk", "lightglue", "lightglue", 300, 0.97),
    ("xfeat", "lightglue", "lighterglue", 150, 0.85),
    ("aliked-n16", "nn", "nn", 120, 0.97),
    ("disk", "nn", "nn", 300, 0.97),
    ("xfeat", "nn", "nn", 100, 0.72),
])
def test_real_weights_match_precisely(pair, extractor, matcher, name, min_matches,
                                      min_precision):
    pipeline = Pipeline(device="cpu", extractor=extractor, matcher=matcher, max_keypoints=512,
                        allow_download=False)
    result = pipeline.match(*pair)
    errors = reprojection_errors(HOMOGRAPHY, result.keypoints0, result.keypoints1)
    assert result.extractor == extractor and result.matcher == name
    assert len(result) >= min_matches
    assert (errors < 3).mean() > min_precision
    assert result.num_keypoints0 <= 512
    assert np.all(result.scores >= 0) and np.all(result.scores <= 1)


@pytest.fixture(scope="module")
def superpoint_file(tmp_path_factory):
    from test_superpoint import official_state
    path = tmp_path_factory.mktemp("superpoint") / "superpoint_v1.pth"
    torch.save(official_state(), path)
    return path


@pytest.fixture(scope="module")
def superglue_file(tmp_path_factory):
    from test_superglue import official_state
    path = tmp_path_factory.mktemp("superglue") / "superglue_outdoor.pth"
    torch.save(official_state(), path)
    return path


def test_superpoint_superglue_from_user_files(pair, superpoint_file, superglue_file):
    pipeline = Pipeline(device="cpu", extractor="superpoint", matcher="superglue",
                        extractor_weights=str(superpoint_file),
                        matcher_weights=str(superglue_file), superglue_model="outdoor",
                        superglue_threshold=0.0, max_keypoints=256, allow_download=False)
    assert pipeline.matcher.conf["sinkhorn_iterations"] == 20
    pipeline.update(sinkhorn_iterations=50)
    assert pipeline.matcher.conf["sinkhorn_iterations"] == 50
    result = pipeline.match(*pair)
    # Random weights: no accuracy to check, but every stage ran on real images.
    assert result.matcher == "superglue" and result.num_keypoints0 == 256
    assert len(result) > 0 and result.exit_layer == 18


def test_superpoint_lightglue_layout(pair, superpoint_file, tmp_path):
    """SuperPoint's LightGlue has 256-d inputs and no input projection: an official-layout
    file of that shape loads, and the ALIKED one (with a projection) is refused. (The layer
    names are those of the official ALIKED/DISK files, checked in test_reference_equivalence.)"""
    from match_node.models.lightglue import LightGlue
    from match_node.engine.weights import WeightsMismatchError
    state = {k: v for k, v in LightGlue(features="superpoint").state_dict().items()}
    assert not any(k.startswith("input_proj") for k in state)
    path = tmp_path / "superpoint_lightglue.pth"
    torch.save(state, path)
    pipeline = Pipeline(device="cpu", extractor="superpoint", extractor_weights=str(superpoint_file),
                        matcher_weights=str(path), max_keypoints=128, filter_threshold=0.0,
                        allow_download=False)
    assert len(pipeline.match(*pair)) > 0
    with pytest.raises(WeightsMismatchError, match="input_proj"):
        Pipeline(device="cpu", extractor="superpoint", extractor_weights=str(superpoint_file),
                 matcher_weights=str(_aliked_lightglue()), allow_download=False)


def _aliked_lightglue():
    from match_node.engine.weights import CHECKPOINTS, resolve
    return resolve(CHECKPOINTS["lightglue-aliked"], allow_download=False)


def test_superpoint_weights_are_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="non-commercial"):
        Pipeline(device="cpu", extractor="superpoint", allow_download=True)


def test_superglue_needs_superpoint():
    with pytest.raises(ParameterError, match="superglue.*superpoint"):
        Pipeline(device="cpu", extractor="disk", matcher="superglue", allow_download=False)


def test_extractor_defaults_and_overrides():
    pipeline = Pipeline(device="cpu", extractor="xfeat", allow_download=False)
    assert pipeline.detection_threshold == pytest.approx(0.05)
    assert pipeline.extractor.conf["nms_radius"] == 2
    # LighterGlue keeps its official setting (no early exit) unless the user sets one.
    assert pipeline.matcher.conf["depth_confidence"] == -1
    assert pipeline.matcher.conf["width_confidence"] == pytest.approx(0.95)
    # An explicit value is honoured, the LightGlue defaults included; -1 is the model's own.
    pipeline.update(depth_confidence=0.95, width_confidence=0.99)
    assert pipeline.matcher.conf["depth_confidence"] == pytest.approx(0.95)
    assert pipeline.matcher.conf["width_confidence"] == pytest.approx(0.99)
    pipeline.update(depth_confidence=-1.0, width_confidence=0.0)
    assert pipeline.matcher.conf["depth_confidence"] == -1   # LighterGlue's own: off
    assert pipeline.matcher.conf["width_confidence"] == 0    # off, as given
    pipeline = Pipeline(device="cpu", extractor="xfeat", depth_confidence=0.9,
                        detection_threshold=0.1, allow_download=False)
    assert pipeline.matcher.conf["depth_confidence"] == pytest.approx(0.9)
    assert pipeline.extractor.conf["detection_threshold"] == pytest.approx(0.1)


def test_stream_with_another_family_keeps_track_ids(coffee_pair):
    from match_node import SequentialMatcher
    from match_node.groundtruth.planar import make_sequence
    sequence = make_sequence("coffee", num_frames=3, size=(320, 240), step=4)
    stream = SequentialMatcher(Pipeline(device="cpu", extractor="xfeat", max_keypoints=400,
                                        allow_download=False))
    events = [stream.push(frame, t) for t, frame in enumerate(sequence.frames)]
    first, second = events[1].result, events[2].result
    assert first.matcher == "lighterglue" and len(first) > 50 and len(second) > 50
    ids = dict(zip(first.indices1.tolist(), first.track_ids.tolist()))
    inherited = [ids[i] == t for i, t in zip(second.indices0.tolist(), second.track_ids.tolist())
                 if i in ids]
    assert len(inherited) > 30 and all(inherited)


# --- which extractor / matcher combinations can work (issue 11.6) --------------------------
# The documented table: matchers each extractor supports. aliked-t16 gives 64-d descriptors;
# the ALIKED LightGlue takes 128-d ones, and 'auto' and 'loftr' use that LightGlue too.
SUPPORTED = {
    "aliked-n16": {"lightglue", "nn", "loftr", "auto"},
    "aliked-n16rot": {"lightglue", "nn", "loftr", "auto"},
    "aliked-n32": {"lightglue", "nn", "loftr", "auto"},
    "aliked-t16": {"nn"},
    "superpoint": {"lightglue", "superglue", "nn", "loftr", "auto"},
    "disk": {"lightglue", "nn", "loftr", "auto"},
    "sift": {"lightglue", "nn", "loftr", "auto"},
    "xfeat": {"lightglue", "nn", "loftr", "auto"},
}


def test_table_covers_every_parameter_value():
    from match_node import params as P
    assert set(SUPPORTED) == set(P.EXTRACTORS)
    assert set().union(*SUPPORTED.values()) == set(P.MATCHERS)


@pytest.mark.parametrize("extractor", sorted(SUPPORTED))
@pytest.mark.parametrize("matcher", ["lightglue", "superglue", "nn", "loftr", "auto"])
def test_every_combination_verdict(extractor, matcher, monkeypatch):
    from match_node.engine import families as F
    from match_node.engine import weights as W
    works = matcher in SUPPORTED[extractor]
    assert (F.combination_problem(extractor, matcher) is None) == works
    assert (matcher in F.supported_matchers(extractor)) == works
    if works:
        F.validate({"extractor": extractor, "matcher": matcher})
        return
    # Refused by parameter validation (the command-line tools) and by the Pipeline (the
    # node's start-up) before any weights are looked up, with the reason and what works.
    with pytest.raises(ParameterError) as by_params:
        F.validate({"extractor": extractor, "matcher": matcher})
    monkeypatch.setattr(W, "load_checkpoint", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(ParameterError) as by_pipeline:
        Pipeline(device="cpu", extractor=extractor, matcher=matcher, allow_download=False)
    message = str(by_pipeline.value)
    assert message == str(by_params.value)
    assert f"Use matcher {F._quoted(F.supported_matchers(extractor))} with {extractor}" in message
    if matcher == "superglue":
        assert "SuperGlue was trained on SuperPoint's 256-d descriptors" in message
    else:
        assert ("extractor 'aliked-t16' gives 64-d descriptors, but its family's official "
                "LightGlue weights (aliked_lightglue.pth) take 128-d ones") in message
        assert "'aliked-n16', 'aliked-n16rot' or 'aliked-n32'" in message


def test_aliked_t16_with_lightglue_message():
    from match_node.engine import families as F
    with pytest.raises(ParameterError) as error:
        F.validate({"extractor": "aliked-t16", "matcher": "lightglue"})
    assert str(error.value) == (
        "extractor 'aliked-t16' gives 64-d descriptors, but its family's official LightGlue "
        "weights (aliked_lightglue.pth) take 128-d ones; no LightGlue was trained for "
        "aliked-t16. Use matcher 'nn' with aliked-t16, or matcher 'lightglue' with extractor "
        "'aliked-n16', 'aliked-n16rot' or 'aliked-n32'")


@pytest.fixture(scope="module")
def small_image(coffee_pair):
    return coffee_pair[0][:96, :128].copy()


@pytest.mark.parametrize("extractor", ["aliked-n16", "aliked-n16rot", "aliked-n32",
                                       "aliked-t16", "disk", "sift", "xfeat"])
def test_descriptor_dims_are_those_of_the_official_weights(extractor, small_image,
                                                           one_torch_thread):
    """families.py states each extractor's descriptor size; its official file decides."""
    from match_node.engine.families import EXTRACTOR_FAMILIES
    pipeline = Pipeline(device="cpu", extractor=extractor, matcher="nn", max_keypoints=64,
                        detection_threshold=0.0, allow_download=False)
    features = pipeline.extract(small_image)
    assert len(features) > 0
    assert features.descriptors.shape[1] == EXTRACTOR_FAMILIES[extractor].descriptor_dim


def test_superpoint_descriptor_dim_is_its_architecture():
    # No official SuperPoint file here (non-commercial): its descriptor head is 256 wide.
    from match_node.engine.families import EXTRACTOR_FAMILIES
    from match_node.models.superpoint import SuperPoint
    assert SuperPoint().state_dict()["convDb.weight"].shape[0] == 256
    assert EXTRACTOR_FAMILIES["superpoint"].descriptor_dim == 256


@pytest.mark.parametrize("checkpoint,key,extractors", [
    ("lightglue-aliked", "input_proj.weight", ["aliked-n16", "aliked-n16rot", "aliked-n32"]),
    ("lightglue-disk", "input_proj.weight", ["disk"]),
    ("xfeat-lighterglue", "matcher.input_proj.weight", ["xfeat"]),
])
def test_lightglue_input_dims_are_those_of_the_official_weights(checkpoint, key, extractors):
    """The descriptor size a LightGlue file takes is its input projection's width."""
    from match_node.engine import families as F
    from match_node.engine.weights import CHECKPOINTS, read_state_dict, resolve
    state = read_state_dict(resolve(CHECKPOINTS[checkpoint], allow_download=False))
    takes = state[key].shape[1]
    for name in extractors:
        family = F.EXTRACTOR_FAMILIES[name]
        assert F.lightglue_checkpoint(family) == checkpoint
        assert F.lightglue_input_dim(family) == takes == family.descriptor_dim
    if checkpoint == "lightglue-aliked":
        t16 = F.EXTRACTOR_FAMILIES["aliked-t16"]
        assert F.lightglue_checkpoint(t16) == checkpoint and t16.descriptor_dim != takes


def test_aliked_t16_matches_with_nn(coffee_pair, one_torch_thread):
    image0, image1, _ = coffee_pair
    pipeline = Pipeline(device="cpu", extractor="aliked-t16", matcher="nn", max_keypoints=256,
                        allow_download=False)
    result = pipeline.match(image0[:240, :320], image1[:240, :320])
    errors = reprojection_errors(HOMOGRAPHY, result.keypoints0, result.keypoints1)
    assert len(result) > 30 and (errors < 3).mean() > 0.9
