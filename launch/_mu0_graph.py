"""Shared by the launch files: the nodes named in a graph YAML's `mu0_graph.nodes`, each given the
same YAML as its parameters file (what `mu0 run CONFIG` starts as processes without ROS launch)."""
import os

import yaml

EXECUTABLES = {"rgbd_sync": "rgbd_sync", "realsense_camera": "realsense_camera", "mu0_node": "mu0_node",
               "action_expert": "action_expert", "sim_arm": "sim_arm", "bag_player": "bag_player"}


def graph_nodes(config_path, use_sim_time=False, extra_params=None):
    from launch_ros.actions import Node

    with open(config_path) as handle:
        params = yaml.safe_load(handle) or {}
    names = params.get("mu0_graph", {}).get("ros__parameters", {}).get("nodes", [])
    nodes = []
    for name in names:
        overrides = {"use_sim_time": bool(use_sim_time), **(extra_params or {}).get(name, {})}
        nodes.append(Node(package="mu0", executable=EXECUTABLES[name], name=name, output="screen",
                          parameters=[os.fspath(config_path), overrides]))
    return nodes
