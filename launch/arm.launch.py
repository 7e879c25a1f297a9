"""A real arm: camera (realsense-ros or our pyrealsense2 node) -> rgbd_sync -> mu0_node -> action_expert.

    ros2 launch mu0 arm.launch.py config:=/path/to/mu0_arm.yaml use_realsense_ros:=true
With use_realsense_ros, realsense2_camera is started (aligned depth on) instead of our camera node.
The action expert starts in dry-run unless the robot config says otherwise.
"""
import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, os.path.dirname(__file__))
from _mu0_graph import graph_nodes  # noqa: E402


def _setup(context):
    from launch_ros.actions import Node

    config = LaunchConfiguration("config").perform(context)
    nodes = graph_nodes(config)
    if LaunchConfiguration("use_realsense_ros").perform(context).lower() == "true":
        nodes = [n for n in nodes if getattr(n, "node_executable", "") != "realsense_camera"]
        nodes.insert(0, Node(package="realsense2_camera", executable="realsense2_camera_node",
                             namespace="camera", name="camera", output="screen",
                             parameters=[{"align_depth.enable": True, "pointcloud.enable": False}]))
    return nodes


def generate_launch_description():
    share = get_package_share_directory("mu0")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mu0_arm.yaml")),
        DeclareLaunchArgument("use_realsense_ros", default_value="false"),
        OpaqueFunction(function=_setup),
    ])
