"""match_node: learned feature matching (ALIKED + LightGlue) for visual odometry.

The core (this package minus `match_node.ros`) has no ROS imports: it runs, tests and
benchmarks without ROS. Public API:

    from match_node import Pipeline, SequentialMatcher

The pipeline (and with it torch) is imported on first use of these names, not by
`import match_node`: the bag tools, the replay, the VO consumer and the launch files' helpers
start in a fraction of a second and never load torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .params import ParameterError

_LAZY = {"Pipeline": "engine.pipeline", "SequentialMatcher": "engine.stream",
         **{name: "engine.results" for name in ("Features", "MatchResult", "StreamEvent")}}

__all__ = ["Features", "MatchResult", "ParameterError", "Pipeline", "SequentialMatcher",
           "StreamEvent"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
