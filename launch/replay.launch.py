"""Replay a bag through sync -> mu0 -> expert with use_sim_time (the bag supplies /clock).

    ros2 launch mu0 replay.launch.py bag:=/path/to/bag [rate:=1.0] [config:=...]

`ros2 bag play --clock` plays the bag. The topics listed in the graph YAML's
`mu0_graph.exclude_topics` (recorded commands) are not played: on Jazzy and later with
`--exclude-topics`; on Humble, whose `ros2 bag play` has no exclude option, by passing every other
topic of the bag (read from its metadata.yaml) to `--topics`.
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, os.path.dirname(__file__))
from _mu0_graph import common_arguments, default_config, graph_actions, load_graph  # noqa: E402


def _setup(context):
    from mu0_app.launcher import bag_play_command, episode_overrides

    graph = load_graph(context)
    sim_extrinsic = episode_overrides(LaunchConfiguration("bag").perform(context), graph)   # a sim bag's episode.json
    if sim_extrinsic:
        graph = load_graph(context, sim_extrinsic)
    exclude = graph.node_params("mu0_graph").get("exclude_topics", [])
    play = bag_play_command(LaunchConfiguration("bag").perform(context), LaunchConfiguration("rate").perform(context),
                            exclude)
    return [*graph_actions(context, graph), ExecuteProcess(cmd=play, output="screen")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 directory"),
        DeclareLaunchArgument("rate", default_value="1.0"),
        *common_arguments(default_config("replay")),
        OpaqueFunction(function=_setup),
    ])
