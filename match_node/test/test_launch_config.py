"""Static checks of config/*.yaml and launch/*.launch.py that need no `launch` package."""
import ast
from pathlib import Path

import pytest

from match_node import params as P

PACKAGE = Path(__file__).resolve().parents[1]
ROS_BUILTIN_PARAMETERS = {"use_sim_time"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parameter_is_declared_and_valid(path):
    values = P.load_yaml(path)
    assert values, f"{path.name} sets no parameters"
    unknown = set(values) - set(P.SPECS) - ROS_BUILTIN_PARAMETERS
    assert not unknown, f"{path.name} sets undeclared parameters {sorted(unknown)}"
    P.validate({k: v for k, v in values.items() if k in P.SPECS})


def test_default_config_matches_declared_defaults():
    values = P.load_yaml(PACKAGE / "config" / "match_node.yaml")
    assert values == P.defaults(), "config/match_node.yaml drifted from params.py defaults"


def _launch_arguments(tree: ast.AST) -> tuple[set[str], set[str]]:
    declared, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "DeclareLaunchArgument":
                declared.add(node.args[0].value)
            elif name == "LaunchConfiguration":
                used.add(node.args[0].value)
    return declared, used


@pytest.mark.parametrize("path", sorted((PACKAGE / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_every_launch_argument_is_used(path):
    declared, used = _launch_arguments(ast.parse(path.read_text()))
    assert declared, "no launch arguments"
    assert declared == used, f"declared but unused: {declared - used}; used but undeclared: {used - declared}"
    for required in ("namespace", "config", "device"):
        assert required in declared
    assert any(name.endswith("topic") for name in declared)


@pytest.mark.parametrize("path", sorted((PACKAGE / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_description_loads_when_launch_is_installed(path):
    pytest.importorskip("launch_ros", reason="launch_ros is not installable from PyPI; on a "
                        "robot it comes with the ROS 2 distribution")
    import importlib.util
    spec = importlib.util.spec_from_file_location("launch_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert {"namespace", "config", "device"} <= names


def test_readme_documents_every_parameter():
    readme = (PACKAGE.parent / "README.md").read_text()
    missing = [s.name for s in P.PARAMETERS if f"| `{s.name}` |" not in readme]
    assert not missing, f"README parameter table lacks {missing}"
