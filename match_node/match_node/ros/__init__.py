"""The ROS 2 layer: nodes (`node`: mono, `stereo_node`, `vo_node`: the VO example), their
parameter declaration (`parameters`), start-up/Ctrl-C/shutdown handling (`process`) and
console entry points (`entry`), message and image conversion (`conversions`), the node's
one-slot buffer and health (`runtime`), bag replay (`replay`, with its ROS-free waits in
`replay_logic`), the demo, and the launch files' ROS-free helpers (`launch_support`).

Thin: it adapts ROS input and output to the engine's frame runner (engine/runner.py);
everything it calls is testable without ROS. It may import everything else in match_node;
nothing imports it.
"""
