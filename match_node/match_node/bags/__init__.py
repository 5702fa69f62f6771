"""Bags in and out, without ROS: message types, our own typestore and message building
(`msgtypes`), rosbag2 read/write (`rosbag`), the offline runner, bag in -> bag out
(`offline`), and test/demo bag generation (`make`).

It may import the engine, `params`, `messages` and `groundtruth` (to render bags with known
geometry); never `ros`.
"""
