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
    from launch_ros.actions import LifecycleNode, Node

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
        actions += [node, *drive_lifecycle(node)]
    if _arg(context, "rviz").lower() == "true":
        actions.append(Node(package="rviz2", executable="rviz2", output="screen",
                            arguments=["-d", str(share_path("config/rviz/mu0.rviz"))]))
    return actions


CONFIGURE_RETRY_S = 20.0     # re-request configure when the node showed no transition at all for this long
CONFIGURE_RETRIES = 5


def drive_lifecycle(node):
    """Take the LifecycleNode action `node` through configure -> activate, from outside.

    Configure is requested when the process has started (OnProcessStart, launch_ros' own idiom),
    activate when the node reports configuring -> inactive (OnStateTransition). A configure
    request can get no answer when it is sent while DDS is still matching the service endpoints
    (seen on a loaded machine), so when the node shows no transition at all within
    CONFIGURE_RETRY_S, configure is requested again (up to CONFIGURE_RETRIES times). A slow
    configure (a model load of a minute under load) does not trigger that: the node reports
    `configuring` when it starts one, and every transition it reports cancels the retry timer.

    Nothing here may outlive a shutdown (Ctrl-C), because of how launch and launch_ros end:
    - LaunchService.run_async (launch/launch_service.py) ends only when it is idle
      (`_is_idle`): no event queued, every action's future done (a TimerAction's too) and every
      `context.add_completion_future` done.
    - LifecycleNode._on_change_state_event (launch_ros/actions/lifecycle_node.py) runs each
      ChangeState request as `_call_change_state` in a worker thread of the loop's default
      executor and adds it as such a completion future; it polls for the response once a second
      and gives up only when `context.is_shutdown`.
    - the rclpy node those requests go through is destroyed by an OnShutdown handler
      (launch_ros/ros_adapters.py, get_ros_adapter); a request emitted after that fails in its
      worker thread, and launch reports that exception and exits 1.
    - a TimerAction cancels itself on Shutdown only if it was executed before the Shutdown event
      (the handler is registered in TimerAction.execute); one created later runs its full period
      and launch waits for it (launch/actions/timer_action.py).
    So: the retry timer is cancelled by the first transition the node reports and on shutdown;
    once `context.is_shutdown` is set no request and no timer is emitted any more (a transition
    event already queued when Ctrl-C came would otherwise emit `activate` against the destroyed
    client); requests still pending at shutdown end within launch_ros' 1 s poll.
    """
    from launch.actions import OpaqueFunction, TimerAction
    from launch.event_handlers import OnProcessStart
    from launch.events import Shutdown, matches_action
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState
    from lifecycle_msgs.msg import Transition

    state = {"transitions": 0, "tries": 0, "timer": None, "exited": False}

    def request(transition):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

    def cancel_timer():
        if state["timer"] is not None:
            state["timer"].cancel()
            state["timer"] = None

    def arm_timer():
        state["timer"] = TimerAction(period=CONFIGURE_RETRY_S, actions=[OpaqueFunction(function=retry)])
        return state["timer"]

    def configure(context):
        if context.is_shutdown:
            return []
        return [request(Transition.TRANSITION_CONFIGURE), arm_timer()]

    def retry(context):
        state["timer"] = None
        if context.is_shutdown or state["exited"] or state["transitions"] or state["tries"] >= CONFIGURE_RETRIES:
            return []
        state["tries"] += 1
        return [LogInfo(msg=f"mu0_node: no lifecycle transition {CONFIGURE_RETRY_S:.0f} s after the configure "
                            f"request; asking again ({state['tries']}/{CONFIGURE_RETRIES})"),
                *configure(context)]

    def node_exited(event, context):
        # mu0_node is required: without it the graph has no traces. Its exit also ends launch, as
        # ROS launch files do for required nodes (on_exit=Shutdown). Without this, a configure
        # request left unanswered by the dead node (launch_ros polls it until launch shuts down)
        # and the retry timer kept `ros2 launch` alive with every node gone - seen in CI when a
        # Ctrl-C reached the nodes but launch did not act on it
        state["exited"] = True
        cancel_timer()
        if context.is_shutdown:
            return []
        return [LogInfo(msg=f"mu0_node exited (code {event.returncode}): shutting the graph down"),
                EmitEvent(event=Shutdown(reason="mu0_node exited"))]

    def saw_transition(context):
        state["transitions"] += 1
        cancel_timer()
        return []

    def activate(context):
        if context.is_shutdown:
            return []
        return [LogInfo(msg="mu0_node configured; activating"), request(Transition.TRANSITION_ACTIVATE)]

    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node,
                                               entities=[OpaqueFunction(function=saw_transition)])),
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[OpaqueFunction(function=activate)])),
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="unconfigured",
            entities=[LogInfo(msg="mu0_node: configure FAILED (reason in its log above); it stays unconfigured "
                                  "- fix the parameter, then `ros2 lifecycle set /mu0_node configure`")])),
        RegisterEventHandler(OnProcessStart(target_action=node, on_start=[OpaqueFunction(function=configure)])),
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=node_exited)),
        RegisterEventHandler(OnShutdown(on_shutdown=lambda *_: cancel_timer())),
    ]


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
