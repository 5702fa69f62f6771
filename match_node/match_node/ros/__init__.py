"""The ROS 2 layer: nodes (`node`: mono, `stereo_node`, `vo_node`: the VO example), message
and image conversion (`conversions`), the node's one-slot buffer and health (`runtime`),
console entry points (`entry`), bag replay (`replay`), the demo, and the launch files'
ROS-free helpers (`launch_support`).

Thin: it adapts ROS input and output to the engine's frame runner; everything it calls is
testable without ROS. It may import everything else in match_node; nothing imports it.
"""
