"""Bags in and out, without ROS: rosbag2 read/write with our own typestore (`rosbag`), the
offline runner, bag in -> bag out (`offline`), and test/demo bag generation (`make`).

It may import the engine, `params`, `messages` and `groundtruth` (to render bags with known
geometry); never `ros`.
"""
