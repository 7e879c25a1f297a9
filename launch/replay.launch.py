"""Replay a bag through sync -> mu0 -> expert with use_sim_time (the bag supplies /clock).

    ros2 launch mu0 replay.launch.py bag:=/path/to/bag rate:=1.0
"""
import os
import sys

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, os.path.dirname(__file__))
from _mu0_graph import graph_nodes  # noqa: E402


def _setup(context):
    config = LaunchConfiguration("config").perform(context)
    with open(config) as handle:
        graph = (yaml.safe_load(handle) or {}).get("mu0_graph", {}).get("ros__parameters", {})
    exclude = graph.get("exclude_topics", [])
    play = ["ros2", "bag", "play", LaunchConfiguration("bag").perform(context), "--clock",
            "--rate", LaunchConfiguration("rate").perform(context)]
    if exclude:
        play += ["--exclude-topics", *exclude]
    return [*graph_nodes(config, use_sim_time=True), ExecuteProcess(cmd=play, output="screen")]


def generate_launch_description():
    share = get_package_share_directory("mu0")
    return LaunchDescription([
        DeclareLaunchArgument("bag"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "mu0_replay.yaml")),
        OpaqueFunction(function=_setup),
    ])
