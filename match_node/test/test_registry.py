"""The registry (engine/families.py, engine/matchers.py) is the one place that knows what each
`extractor` / `matcher` value means: the pipeline branches on no model name, every keypoint
matcher runs through one signature, the model-default convention holds for every parameter
that has one, and the registry loads neither torch nor any model until a model is built."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from match_node import ParameterError, Pipeline
from match_node import params as P
from match_node.engine import families as F
from match_node.groundtruth.planar import reprojection_errors
from match_node.models.lightglue import MatchOutput

from conftest import HOMOGRAPHY

PIPELINE = Path(__file__).resolve().parents[1] / "match_node" / "engine" / "pipeline.py"
# 'auto' is also a value of the device and precision parameters: comparing those with it is
# no branch on a matcher.
OTHER_PARAMETERS_WITH_MODEL_NAMES = ("device", "precision")


def _model_names() -> set[str]:
    return (set(F.EXTRACTOR_FAMILIES) | set(F.MATCHER_MODES) | set(F.KEYPOINT_MATCHERS)
            | {F.LOFTR.name} | set(P.LOFTR_MODELS) | {p.name for p in F.textureless_paths()})


def _model_classes() -> set[str]:
    return ({f.class_name for f in F.EXTRACTOR_FAMILIES.values()}
            | {m.class_name for m in F.KEYPOINT_MATCHERS.values()} | {F.LOFTR.class_name})


def _literals(node: ast.AST) -> list[str] | None:
    """The strings of a string literal or a tuple/list/set of them; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        values = [_literals(e) for e in node.elts]
        if all(v is not None for v in values):
            return [s for v in values for s in v]
    return None


def branches_on_model_names(source: str) -> list[str]:
    """Comparisons of anything with a registered model name, and type tests or uses of model
    classes (outside annotations), in `source`."""
    names, classes = _model_names(), _model_classes()
    tree = ast.parse(source)
    annotations = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if annotation is not None:
                annotations |= {id(n) for n in ast.walk(annotation)}
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            found = {s for o in operands for s in (_literals(o) or ())} & names
            others = [ast.unparse(o) for o in operands if _literals(o) is None]
            if found and not all(any(word in text for word in OTHER_PARAMETERS_WITH_MODEL_NAMES)
                                 for text in others):
                wrong.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Match):
            wrong.append(f"line {node.lineno}: match statement")
        elif (isinstance(node, ast.Name) and node.id in classes
              and id(node) not in annotations):
            wrong.append(f"line {node.lineno}: uses model class {node.id}")
    return wrong


def test_the_check_finds_branches_on_model_names():
    old = textwrap.dedent("""
        if self.matcher_name == "auto": pass
        if self.matcher_name in ("nn", "superglue"): pass
        if isinstance(self.matcher, LightGlue): pass
        if precision in ("auto", "fp16"): pass
        x: LoFTR | None = None
    """)
    assert len(branches_on_model_names(old)) == 3


def test_pipeline_does_not_branch_on_model_names():
    assert branches_on_model_names(PIPELINE.read_text()) == []


def test_registry_covers_every_parameter_value():
    from match_node.engine.weights import CHECKPOINTS
    assert set(F.EXTRACTOR_FAMILIES) == set(P.EXTRACTORS)
    assert set(F.MATCHER_MODES) == set(P.MATCHERS)
    for name, family in F.EXTRACTOR_FAMILIES.items():
        assert family.name == name
        assert family.checkpoint is None or family.checkpoint in CHECKPOINTS
        own = F.keypoint_matcher(family, F.MATCHER_MODES["lightglue"])
        assert F.lightglue_checkpoint(family) in CHECKPOINTS, own.name
    for mode in F.MATCHER_MODES.values():
        assert mode.keypoint == "" or mode.keypoint in F.KEYPOINT_MATCHERS
    for key in P.LOFTR_MODELS:
        assert key in CHECKPOINTS
    # A family each keypoint matcher works with (every one is loaded by some combination).
    served = {F.keypoint_matcher(family, mode).name: family
              for family in F.EXTRACTOR_FAMILIES.values() for mode in F.MATCHER_MODES.values()
              if F.combination_problem(family.name, mode.name) is None}
    assert set(served) == set(F.KEYPOINT_MATCHERS)
    for entry in F.KEYPOINT_MATCHERS.values():
        # Run-time parameters are pipeline parameters that change at run time, and each
        # sets an option the model has.
        own = entry.own_conf(served[entry.name])
        for name, key in entry.parameters.items():
            assert P.SPECS[name].scope == "pipeline" and not P.SPECS[name].read_only
            assert key in own, (entry.name, key)
    for path in F.textureless_paths():
        # LoFTR and the direct alignment (no model) are not keypoint families.
        assert path.detector_free or path.direct or (path.extractor in F.EXTRACTOR_FAMILIES
                                                     and path.matcher in F.KEYPOINT_MATCHERS)
    assert [path.name for path in F.textureless_paths() if path.direct] == ["shi-tomasi+direct"]


def test_model_default_convention():
    """A parameter's model_default (-1 for every parameter that has one) takes the model's
    own setting; every other value, 'off' (0) included, is used as given whatever the
    family."""
    for spec in P.PARAMETERS:
        if spec.model_default is not None:
            assert spec.validate(spec.model_default) == spec.model_default
            assert f"{spec.model_default:g}" in spec.description, spec.name

    def lightglue(extractor: str, **values) -> dict:
        family = F.EXTRACTOR_FAMILIES[extractor]
        entry = F.keypoint_matcher(family, F.MATCHER_MODES["lightglue"])
        return entry.options(family, P.validate(values, scope="pipeline"))

    # The shipped default: ALIKED's LightGlue at its official 0.95 / 0.99.
    assert lightglue("aliked-n16") == {"depth_confidence": 0.95, "width_confidence": 0.99,
                                       "filter_threshold": 0.1}
    assert lightglue("xfeat")["depth_confidence"] == -1  # LighterGlue's own: no early exit
    assert lightglue("xfeat")["width_confidence"] == 0.95
    explicit = lightglue("xfeat", depth_confidence=0.95, width_confidence=0.99)
    assert explicit["depth_confidence"] == 0.95 and explicit["width_confidence"] == 0.99
    off = lightglue("aliked-n16", depth_confidence=0, width_confidence=0)
    assert off["depth_confidence"] == 0 and off["width_confidence"] == 0
    # -1 is the model default for every parameter that has one: one convention.
    assert {spec.model_default for spec in P.PARAMETERS if spec.model_default is not None} == {-1}
    disk = F.EXTRACTOR_FAMILIES["disk"]
    assert disk.threshold(-1.0) == disk.own_threshold == 0.0 and disk.threshold(0.3) == 0.3


def test_params_knows_no_models_and_families_checks_the_combination():
    values = {"extractor": "aliked-t16", "matcher": "lightglue"}
    P.validate(values)  # each value is valid; whether they fit is a fact of the models
    problem = F.combination_problem(**values)
    for check in (F.validate, F.check_combined):
        with pytest.raises(ParameterError) as error:
            check({**P.defaults(), **values})
        assert str(error.value) == problem
    # check_combined keeps the checks params.check_combined makes.
    with pytest.raises(ParameterError, match="texture_high_keypoints"):
        F.check_combined({"texture_low_keypoints": 300, "texture_high_keypoints": 200})
    F.check_combined(P.defaults())


def test_registry_and_launch_helpers_import_no_torch():
    code = textwrap.dedent("""
        import sys
        from match_node.engine import families
        from match_node.ros import launch_support
        families.check_combined({"device": "cpu", "texture_low_keypoints": 100})
        launch_support.parameter_overrides({"device": "cpu"}, {"device": "device"})
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] == "torch" or m.startswith("match_node.models"))
        assert not loaded, loaded
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --- every keypoint matcher through the one signature, on a real pair ----------------------
class RecordingHook:
    """A LayerHook that lets every layer run and counts the calls."""

    def __init__(self) -> None:
        self.layers = 0
        self.assignments: list[tuple[int, int]] = []

    def before_layer(self, layer: int, n0: int, n1: int) -> bool:
        self.layers += 1
        return True

    def before_assignment(self, layer: int, n0: int, n1: int) -> None:
        self.assignments.append((n0, n1))


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Official-layout SuperPoint and SuperGlue files with random values (the official files
    are non-commercial and never shipped)."""
    from test_superglue import official_state as superglue_state
    from test_superpoint import official_state as superpoint_state
    folder = tmp_path_factory.mktemp("registry")
    torch.save(superpoint_state(), folder / "superpoint_v1.pth")
    torch.save(superglue_state(), folder / "superglue_indoor.pth")
    return folder


# Pipeline parameters that load each entry, and the matches and precision (within 3 px) it
# must reach on the 480x320 coffee crop (None: random weights, no accuracy to check).
RUNS = {
    "lightglue": ({"extractor": "aliked-n16", "matcher": "lightglue"}, 150, 0.95),
    "lighterglue": ({"extractor": "xfeat", "matcher": "lightglue"}, 80, 0.8),
    "superglue": ({"extractor": "superpoint", "matcher": "superglue",
                   "superglue_threshold": 0.0}, 1, None),
    "nn": ({"extractor": "aliked-n16", "matcher": "nn"}, 80, 0.95),
}


def test_every_registered_keypoint_matcher_has_a_run():
    assert set(RUNS) == set(F.KEYPOINT_MATCHERS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_keypoint_matchers_run_through_one_signature(name, coffee_pair, weight_files,
                                                     one_torch_thread):
    values, min_matches, min_precision = RUNS[name]
    if name == "superglue":
        values = {**values, "extractor_weights": str(weight_files / "superpoint_v1.pth"),
                  "matcher_weights": str(weight_files / "superglue_indoor.pth")}
    pipeline = Pipeline(device="cpu", max_keypoints=256, refine="none", allow_download=False,
                        **values)
    entry = pipeline.keypoint_matcher
    assert entry is F.KEYPOINT_MATCHERS[name]
    image0, image1, _ = coffee_pair
    features0 = pipeline.extract(image0[:320, :480].copy())
    features1 = pipeline.extract(image1[:320, :480].copy())
    hook = RecordingHook()
    out = entry.run(pipeline.matcher, features0, features1, hook, 0)
    assert isinstance(out, MatchOutput)
    # The budget's hook sees the layers of the matchers it can cut, and no other's; every
    # matcher reports the step after its last layer once (for a matcher without layers its
    # whole match, on all the points), which the budget times.
    assert (hook.layers > 0) == entry.budget_cuts
    assert len(hook.assignments) == 1
    if not entry.budget_cuts:
        assert hook.assignments[0] == (len(features0), len(features1))
    matches = out.matches.numpy()
    assert matches.shape == (len(out.scores), 2) and len(matches) >= min_matches
    assert matches[:, 0].max() < len(features0) and matches[:, 1].max() < len(features1)
    assert np.all(out.scores.numpy() >= 0) and np.all(out.scores.numpy() <= 1)
    assert out.num_layers == entry.num_layers(pipeline.matcher) == pipeline.num_layers
    if min_precision is not None:
        kpts0 = features0.keypoints.numpy()[matches[:, 0]]
        kpts1 = features1.keypoints.numpy()[matches[:, 1]]
        errors = reprojection_errors(HOMOGRAPHY, kpts0, kpts1)
        assert (errors < 3).mean() > min_precision
