"""ament_python package of match_node: core (no ROS imports) and the thin ROS layer."""
from glob import glob

from setuptools import find_packages, setup

package_name = "match_node"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="match_node maintainers",
    maintainer_email="maintainers@match-node.dev",
    description="Real-time learned feature matching for visual odometry.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "match_node = match_node.ros.entry:match_node",
            "stereo_match_node = match_node.ros.entry:stereo_match_node",
            "vo_example = match_node.ros.vo_node:main",
            "replay = match_node.ros.replay:main",
        ],
    },
)
