"""The core (everything but match_node.ros) must import and run without any ROS package."""
import subprocess
import sys
import textwrap


def test_core_imports_without_ros():
    code = textwrap.dedent("""
        import importlib.abc, sys
        BLOCKED = ("rclpy", "sensor_msgs", "std_msgs", "builtin_interfaces", "match_node_msgs",
                   "diagnostic_msgs", "rcl_interfaces", "launch", "launch_ros")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("ROS import from the core: " + name)
        sys.meta_path.insert(0, Block())
        import match_node, match_node.pipeline, match_node.image, match_node.weights
        import match_node.params, match_node.runtime, match_node.tracker, match_node.sequence
        import match_node.match, match_node.viz, match_node.budget, match_node.texture
        import match_node.stereo, match_node.scene, match_node.vo, match_node.messages
        import match_node.bags, match_node.make_bag, match_node.offline
        from match_node.models import loftr
        from match_node.models import aliked, lightglue
        leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not leaked, leaked
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
