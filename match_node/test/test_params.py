import pytest

from match_node import params as P


def test_defaults_validate():
    values = P.validate({})
    assert values["extractor"] == "aliked-n16"
    assert set(values) == {s.name for s in P.PARAMETERS}


@pytest.mark.parametrize("name,value,fragment", [
    ("max_keypoints", 0, ">= 1 (allowed 1..32768), got 0"),
    ("max_keypoints", 2.5, "integer"),
    ("extractor", "sift-xyz", "one of"),
    ("depth_confidence", 1.5, "<= 1.0 (allowed -1.0..1.0), got 1.5"),
    ("device", "gpu0", "cuda:N"),
    ("allow_download", "yes", "bool"),
    ("filter_threshold", float("nan"), "NaN"),
])
def test_bad_values_name_the_parameter(name, value, fragment):
    with pytest.raises(P.ParameterError) as error:
        P.validate({name: value})
    assert name in str(error.value) and fragment in str(error.value)


def test_unknown_parameter_refused():
    with pytest.raises(P.ParameterError, match="unknown parameter 'max_keypoint'"):
        P.validate({"max_keypoint": 100})


@pytest.mark.parametrize("typo,nearest", [
    ("max_keypoint", "max_keypoints"), ("maxkeypoints", "max_keypoints"),
    ("latency_budget", "latency_budget_ms"), ("image_transprot", "image_transport"),
    ("expected_rate", "expected_rate_hz"), ("completely_unrelated", None)])
def test_misspelt_names_get_the_nearest_valid_name(typo, nearest):
    assert P.nearest_name(typo) == nearest
    message = P.unknown_name_message(typo)
    assert message.startswith(f"unknown parameter '{typo}'") and "\n" not in message
    if nearest:
        assert message.endswith(f"did you mean '{nearest}'?")
    with pytest.raises(P.ParameterError, match=f"unknown parameter '{typo}'"):
        P.parse_assignments([f"{typo}=1"])


@pytest.mark.parametrize("values,named", [
    ({"texture_low_keypoints": 300}, "texture_high_keypoints"),          # above high (250)
    ({"texture_high_keypoints": 10}, "texture_high_keypoints"),          # below low (150)
    ({"texture_low_coverage": 0.5, "texture_high_coverage": 0.45}, "texture_high_coverage"),
    ({"device": "gpu"}, "device"),
    ({"texture_blur_mismatch": 0.5}, "texture_blur_mismatch"),          # a ratio is >= 1
])
def test_combined_check_refuses_values_that_do_not_fit_together(values, named):
    # Each value is valid alone: only the one combined check can refuse it, at start-up
    # (validate) and at run time (the node's callback calls check_combined directly).
    for name, value in values.items():
        if name != "device":
            P.SPECS[name].validate(value)
    merged = {**P.defaults(), **values}
    with pytest.raises(P.ParameterError, match=named):
        P.check_combined(merged)
    with pytest.raises(P.ParameterError, match=named):
        P.validate(values)
    P.check_combined(P.defaults())
    P.check_combined({"texture_low_keypoints": 300, "texture_high_keypoints": 300})


def test_rate_thresholds_are_declared_for_the_node():
    for name in ("expected_rate_hz", "diagnostics_rate_warn", "diagnostics_rate_error"):
        spec = P.SPECS[name]
        assert spec.scope == "node" and not spec.read_only and spec.description
    assert P.SPECS["expected_rate_hz"].default == 0.0  # not checked unless set
    assert P.SPECS["expected_rate_hz"].validate(30) == 30.0  # an integer is taken as a float


def test_cli_assignments_are_typed():
    values = P.parse_assignments(["max_keypoints=256", "depth_confidence=-1",
                                  "allow_download=false", "device=cuda:1"])
    assert values == {"max_keypoints": 256, "depth_confidence": -1.0,
                      "allow_download": False, "device": "cuda:1"}
    with pytest.raises(P.ParameterError):
        P.parse_assignments(["max_keypoints=many"])


def test_ros_yaml_sections(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    max_keypoints: 100\n"
                    "cam/match_node:\n  ros__parameters:\n    max_keypoints: 200\n"
                    "other_node:\n  ros__parameters:\n    max_keypoints: 300\n")
    assert P.load_yaml(path, "match_node")["max_keypoints"] == 200
    assert P.load_yaml(path, "unrelated")["max_keypoints"] == 100
