"""Networks, one file each: plain torch modules with config dicts, no I/O, no ROS, no timing."""
