import pytest

from match_node import params as P


def test_defaults_validate():
    values = P.validate({})
    assert values["extractor"] == "aliked-n16"
    assert set(values) == {s.name for s in P.PARAMETERS}


@pytest.mark.parametrize("name,value,fragment", [
    ("max_keypoints", 0, ">= 1"),
    ("max_keypoints", 2.5, "integer"),
    ("extractor", "sift-xyz", "one of"),
    ("depth_confidence", 1.5, "<= 1"),
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
