"""Closed loop in MuJoCo: sim_arm -> rgbd_sync -> mu0_node -> action_expert -> sim_arm.

    ros2 launch mu0 sim.launch.py [config:=...] [robot:=sim_sawyer_joint] [model:=...] [rviz:=true]

The graph is config/mu0_sim.yaml (installed in share/mu0/config): the same file `mu0 sim` runs,
use_sim_time included (the sim publishes /clock). mu0_node is a lifecycle node this launch
configures and activates. Ctrl-C stops every node cleanly.
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import OpaqueFunction

sys.path.insert(0, os.path.dirname(__file__))
from _mu0_graph import common_arguments, default_config, graph_actions, load_graph  # noqa: E402


def _setup(context):
    return graph_actions(context, load_graph(context))


def generate_launch_description():
    return LaunchDescription([*common_arguments(default_config("sim")), OpaqueFunction(function=_setup)])
