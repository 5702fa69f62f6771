"""match_node: learned feature matching (ALIKED + LightGlue) for visual odometry.

The core (this package minus `match_node.ros`) has no ROS imports: it runs, tests and
benchmarks without ROS. Public API:

    from match_node import Pipeline, SequentialMatcher
"""
from .params import ParameterError
from .pipeline import Features, MatchResult, Pipeline, SequentialMatcher, StreamEvent

__all__ = ["Features", "MatchResult", "ParameterError", "Pipeline", "SequentialMatcher",
           "StreamEvent"]
