"""ROS 2 layer of match_node: node, message conversion. Everything it calls is in the core."""
