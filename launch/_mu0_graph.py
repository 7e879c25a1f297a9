"""Shared by the launch files: the node graph of one graph YAML, started the way `mu0 run CONFIG`
starts it (mu0_app.graph_config: the same merged parameters file, `use_sim_time` and every node
parameter from the YAML, resource paths resolved through the package's share directory), with
`mu0_node` as a LifecycleNode that this launch drives through configure -> activate.

Launch arguments common to every graph launch file (declared by `common_arguments`):
  config:=PATH|NAME     graph YAML (default: the launch file's own, from share/mu0/config)
  robot:=NAME|PATH      action_expert.robot_config (config/robots/NAME.yaml)
  model:=PATH|baseline:NAME   mu0_node.model
  use_sim_time:=true|false    overrides the YAML's mu0_graph.use_sim_time (default: the YAML's)
  set:='node.param=value;node.param=value'   any other override (YAML values)
  rviz:=true            also start rviz2 with share/mu0/config/rviz/mu0.rviz
"""
import os
import shutil
import tempfile

from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.event_handlers import OnProcessExit, OnShutdown
from launch.substitutions import LaunchConfiguration

EXECUTABLES = {"rgbd_sync": "rgbd_sync", "realsense_camera": "realsense_camera", "mu0_node": "mu0_node",
               "action_expert": "action_expert", "sim_arm": "sim_arm", "bag_player": "bag_player"}


def common_arguments(default_config):
    return [
        DeclareLaunchArgument("config", default_value=default_config, description="graph YAML (path or short name)"),
        DeclareLaunchArgument("robot", default_value="", description="robot config: name in config/robots or path"),
        DeclareLaunchArgument("model", default_value="", description="mu0_node model: checkpoint dir or baseline:NAME"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true|false; empty: as the graph YAML says (mu0_graph.use_sim_time)"),
        DeclareLaunchArgument("set", default_value="", description="'node.param=value;...' parameter overrides"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with the mu0 config"),
    ]


def _arg(context, name):
    return LaunchConfiguration(name).perform(context).strip()


def load_graph(context, extra_overrides=()):
    """The GraphConfig of the `config` argument with the launch arguments applied."""
    from mu0_app.graph_config import load_graph_config, resolve_config
    from mu0_core.resources import resolve

    overrides = [item.strip() for item in _arg(context, "set").split(";") if item.strip()]
    robot = _arg(context, "robot")
    if robot:
        path = robot if robot.endswith((".yaml", ".yml")) else f"config/robots/{robot}.yaml"
        overrides.append(f"action_expert.robot_config={resolve(path)}")
    if _arg(context, "model"):
        overrides.append(f"mu0_node.model={_arg(context, 'model')}")
    overrides += list(extra_overrides)
    graph = load_graph_config(resolve_config(_arg(context, "config")), overrides)
    sim_time = _arg(context, "use_sim_time").lower()
    if sim_time in ("true", "false"):
        for node in graph.nodes:
            graph.params.setdefault(node, {}).setdefault("ros__parameters", {})["use_sim_time"] = sim_time == "true"
    return graph


def graph_actions(context, graph, skip=()):
    """Node actions for every node of `graph` (but `skip`), all given one merged parameters file."""
    from launch.events import matches_action
    from launch_ros.actions import LifecycleNode, Node
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    from mu0_app.graph_config import write_params_file
    from mu0_core.resources import share_path

    if "mu0_node" in graph.nodes:   # this launch drives the lifecycle (autostart is for the no-launch path)
        graph.params.setdefault("mu0_node", {}).setdefault("ros__parameters", {})["autostart"] = False
    tmp = tempfile.mkdtemp(prefix="mu0_launch_")
    params_file = str(write_params_file(graph, tmp))
    actions = [LogInfo(msg=f"mu0: graph {graph.path} -> nodes {graph.nodes}; parameters {params_file}"),
               RegisterEventHandler(OnShutdown(on_shutdown=lambda *_: shutil.rmtree(tmp, ignore_errors=True)))]
    for name in graph.nodes:
        if name in skip:
            continue
        if name != "mu0_node":
            node = Node(package="mu0", executable=EXECUTABLES[name], name=name, output="screen",
                        parameters=[params_file])
            actions.append(node)
            if name == "realsense_camera":
                actions.append(RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_camera_exit)))
            continue
        node = LifecycleNode(package="mu0", executable="mu0_node", name="mu0_node", namespace="",
                             output="screen", parameters=[params_file])

        def change(transition, node=node):
            return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

        actions += [
            node,
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
                entities=[LogInfo(msg="mu0_node configured; activating"), change(Transition.TRANSITION_ACTIVATE)])),
            RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="unconfigured",
                entities=[LogInfo(msg="mu0_node: configure FAILED (reason in its log above); it stays unconfigured "
                                      "- fix the parameter, then `ros2 lifecycle set /mu0_node configure`")])),
            *_configure_with_retry(node, change(Transition.TRANSITION_CONFIGURE),
                                   lambda: change(Transition.TRANSITION_CONFIGURE)),
        ]
    if _arg(context, "rviz").lower() == "true":
        actions.append(Node(package="rviz2", executable="rviz2", output="screen",
                            arguments=["-d", str(share_path("config/rviz/mu0.rviz"))]))
    return actions


CONFIGURE_RETRY_S = 20.0
CONFIGURE_RETRIES = 5


def _configure_with_retry(node, first, again):
    """Emit configure; if the node shows no lifecycle transition at all within CONFIGURE_RETRY_S,
    ask again (up to CONFIGURE_RETRIES times). A service request sent right after
    `wait_for_service` can be lost while DDS is still matching the endpoints (seen here on a loaded
    machine: launch then waits forever for the response). A repeated request that arrives after
    the first one worked is refused by the node as an invalid transition, which changes nothing."""
    from launch.actions import OpaqueFunction, TimerAction
    from launch_ros.event_handlers import OnStateTransition

    seen = {"transition": False, "tries": 0}

    def saw_transition(context):
        seen["transition"] = True
        return []

    def check(context):
        if seen["transition"] or seen["tries"] >= CONFIGURE_RETRIES:
            return []
        seen["tries"] += 1
        return [LogInfo(msg=f"mu0_node: no lifecycle transition {CONFIGURE_RETRY_S:.0f} s after the configure request; "
                            f"asking again ({seen['tries']}/{CONFIGURE_RETRIES})"),
                again(), TimerAction(period=CONFIGURE_RETRY_S, actions=[OpaqueFunction(function=check)])]

    return [RegisterEventHandler(OnStateTransition(target_lifecycle_node=node,
                                                   entities=[OpaqueFunction(function=saw_transition)])),
            first, TimerAction(period=CONFIGURE_RETRY_S, actions=[OpaqueFunction(function=check)])]


def _camera_exit(event, context):
    if event.returncode == 0:
        return None
    return LogInfo(msg=f"mu0: no camera - realsense_camera exited with code {event.returncode} (reason above). "
                       "Connect a RealSense (pyrealsense2), or start realsense-ros with use_realsense_ros:=true; "
                       "the rest of the graph keeps running and waits for /camera/camera/... frames")


def default_config(name):
    """share/mu0/config/mu0_<name>.yaml (the source tree's config/ when run from it)."""
    from mu0_core.resources import share_path

    return os.fspath(share_path(f"config/mu0_{name}.yaml"))
