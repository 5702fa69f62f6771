"""The core (everything but match_node.ros's nodes) imports and runs without any ROS package,
and the folders depend on each other in one direction only (see each folder's docstring)."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "match_node"
# ROS-free modules of the ROS layer: the node's buffer and health, the launch files' helpers.
ROS_FREE_IN_ROS = ("match_node.ros.runtime", "match_node.ros.launch_support")

# What each part of the package may import from the rest of it (besides itself).
ALLOWED = {
    "models": {"messages"},  # the exit codes only
    "groundtruth": set(),
    "messages": set(),
    "params": set(),
    "engine": {"models", "params", "messages"},
    "vo": set(),
    "vo_metric": {"vo"},
    "viz": set(),
    "match": {"engine", "params", "viz"},
    "bags": {"engine", "params", "messages", "groundtruth"},
    "ros": {"engine", "params", "messages", "bags", "groundtruth", "vo", "vo_metric", "viz"},
    "__init__": {"engine", "params"},
}


def test_core_imports_without_ros():
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, pkgutil, sys
        BLOCKED = ("rclpy", "sensor_msgs", "std_msgs", "builtin_interfaces", "match_node_msgs",
                   "diagnostic_msgs", "rcl_interfaces", "launch", "launch_ros")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("ROS import from the core: " + name)
        sys.meta_path.insert(0, Block())
        import match_node
        names = [m.name for m in pkgutil.walk_packages(match_node.__path__, "match_node.")
                 if not m.name.startswith("match_node.ros.") or m.name in {ROS_FREE_IN_ROS!r}]
        for name in names:
            importlib.import_module(name)
        leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not leaked, leaked
        assert "match_node.engine.pipeline" in names and "match_node.bags.offline" in names
        print(len(names))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 30


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """match_node modules imported by a file (relative imports resolved), at any depth."""
    module = "match_node." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "match_node":  # from match_node import x: x is a module or a name
                found |= {f"match_node.{alias.name}" for alias in node.names}
            elif target.startswith("match_node."):
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("match_node.")}
    return found


def test_nothing_points_upward():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" \
            else "__init__"
        for target in imports_of(path):
            other = _part(target)
            if other != part and other not in ALLOWED[part] and other != "__init__":
                wrong.append(f"{rel} imports {target} ({part} may import "
                             f"{sorted(ALLOWED[part]) or 'nothing else'})")
    assert not wrong, "\n".join(wrong)
