"""Closed loop in MuJoCo: sim_arm -> rgbd_sync -> mu0_node -> action_expert -> sim_arm.

    ros2 launch mu0 sim.launch.py [config:=...] [rviz:=true]
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

    share = get_package_share_directory("mu0")
    nodes = graph_nodes(LaunchConfiguration("config").perform(context))
    if LaunchConfiguration("rviz").perform(context).lower() == "true":
        nodes.append(Node(package="rviz2", executable="rviz2", output="screen",
                          arguments=["-d", os.path.join(share, "config", "rviz", "mu0.rviz")]))
    return nodes


def generate_launch_description():
    share = get_package_share_directory("mu0")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mu0_sim.yaml")),
        DeclareLaunchArgument("rviz", default_value="false"),
        OpaqueFunction(function=_setup),
    ])
