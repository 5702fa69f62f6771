"""Console entry points of the nodes: Ctrl-C is answered from the first instant.

Importing the node loads torch and the models' modules, which takes seconds. Python's
default SIGINT handler would turn a Ctrl-C in that time (a launch stopped right after it
started) into a KeyboardInterrupt traceback from deep inside an import. So the entry point
installs a quiet handler first, imports the node, and only then hands SIGINT back to Python
(rclpy.init installs its own handler after that). Nothing heavy is imported here.
"""
from __future__ import annotations

import os
import signal
import sys


def _leave_quietly(signum: int, frame: object) -> None:
    # Nothing has started yet: no node, no thread, no file written. Leaving at once is clean.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _import_quietly(module: str):
    previous = signal.signal(signal.SIGINT, _leave_quietly)
    try:
        return __import__(module, fromlist=["main"])
    finally:
        signal.signal(signal.SIGINT, previous)


def match_node() -> int:
    """`ros2 run match_node match_node`."""
    return _import_quietly("match_node.ros.node").main()


def stereo_match_node() -> int:
    """`ros2 run match_node stereo_match_node`."""
    return _import_quietly("match_node.ros.stereo_node").main()
