"""A real arm: camera (realsense-ros or our pyrealsense2 node) -> rgbd_sync -> mu0_node -> action_expert.

    ros2 launch mu0 arm.launch.py robot:=ur5e [config:=/path/to/mu0_arm.yaml] [use_realsense_ros:=true]
                                  [robot_description:=true] [rviz:=true]

With use_realsense_ros, realsense2_camera is started (aligned depth on; namespace/name `camera`, so
its topics are the /camera/camera/... that rgbd_sync reads) instead of our camera node.
The action expert starts in dry-run unless the robot config says otherwise. The graph YAML's
parameters (use_sim_time included) are what every node gets; see _mu0_graph.py for the arguments.
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, os.path.dirname(__file__))
from _mu0_graph import common_arguments, default_config, graph_actions, load_graph  # noqa: E402


def robot_state_publisher(graph):
    """robot_state_publisher with the robot config's URDF (kinematics.source: urdf), for RViz's
    RobotModel and the arm's TF when the robot's own driver does not publish them."""
    from pathlib import Path

    import yaml
    from launch.actions import LogInfo
    from launch_ros.actions import Node

    robot_yaml = Path(graph.node_params("action_expert").get("robot_config", ""))
    kinematics = (yaml.safe_load(robot_yaml.read_text()) or {}).get("kinematics", {}) if robot_yaml.is_file() else {}
    if kinematics.get("source") != "urdf":
        return [LogInfo(msg=f"mu0: robot_description:=true needs a URDF robot config; {robot_yaml} has none")]
    urdf = (robot_yaml.parent / kinematics["path"]).read_text()
    sim_time = bool(graph.node_params("action_expert").get("use_sim_time", False))
    return [Node(package="robot_state_publisher", executable="robot_state_publisher", output="screen",
                 parameters=[{"robot_description": urdf, "use_sim_time": sim_time}])]


def _setup(context):
    from launch_ros.actions import Node

    graph = load_graph(context)
    extra = robot_state_publisher(graph) if LaunchConfiguration("robot_description").perform(context).lower() == "true" \
        else []
    if LaunchConfiguration("use_realsense_ros").perform(context).lower() != "true":
        return [*extra, *graph_actions(context, graph)]
    camera = Node(package="realsense2_camera", executable="realsense2_camera_node",
                  namespace="camera", name="camera", output="screen",
                  parameters=[{"align_depth.enable": True, "pointcloud.enable": False,
                               "use_sim_time": bool(graph.node_params("rgbd_sync").get("use_sim_time", False))}])
    return [*extra, camera, *graph_actions(context, graph, skip=("realsense_camera",))]


def generate_launch_description():
    return LaunchDescription([
        *common_arguments(default_config("arm")),
        DeclareLaunchArgument("use_realsense_ros", default_value="false",
                              description="start realsense2_camera instead of mu0's pyrealsense2 node"),
        DeclareLaunchArgument("robot_description", default_value="false",
                              description="start robot_state_publisher with the robot config's URDF "
                                          "(when the robot's driver does not)"),
        OpaqueFunction(function=_setup),
    ])
