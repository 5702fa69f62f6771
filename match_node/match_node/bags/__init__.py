"""Bags in and out, without ROS: message types, our own typestore and message building
(`msgtypes`), rosbag2 read/write (`rosbag`), the offline runner, bag in -> bag out
(`offline`), many bags on a Ray cluster (`batch`, with `batch_driver` handing out tasks,
`batch_worker` the actors and atomic outputs, `chunks` splitting and stitching long bags,
`progress` the bars), and test/demo bag generation (`make`). Ray is imported only inside
the batch modules' functions.

It may import the engine, `params`, `messages` and `groundtruth` (to render bags with known
geometry); never `ros`.
"""
