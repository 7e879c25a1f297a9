"""action_expert node over real rclpy / Fast DDS, in its own processes (the console-script module).

The test process plays the rest of the graph: it publishes /joint_states and /mu0/traces, listens
to the command topics, publishes the e-stop and calls ~/reset_estop. No robot exists here, so the
joint states are a fixed pose (the closed-loop test with the MuJoCo sim is test_expert_closed_loop).
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from graph_fixtures import make_spin
from mu0_msgs.msg import TraceArray
from mu0_policy.experts import load_robot_config
from mu0_core.traces import TraceSet
from mu0_ros import convert
from robot_configs import follower_config

RESET_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])   # the 7 arm joints
GRIPPER_Q = -1.0                                                           # /joint_states "gripper" (own interface)
FWD_CFG = follower_config("sim_sawyer_forward", hold_orientation=True)
JTC_CFG = follower_config("sim_sawyer_joint", hold_orientation=True)
DIRECTION = np.array([0.1, 0.0, -0.05])


def trace_set(stamp_ns, start, direction=DIRECTION, frame="base_link", nan=False):
    samples = start + np.linspace(0, 1, 33)[:, None] * direction
    if nan:
        samples[5, 1] = np.nan
    ctrl = start + np.linspace(0, 1, 4)[:, None] * direction
    return TraceSet(stamp_ns=stamp_ns, frame_id=frame, instruction="reach", model_id="test", horizon_steps=32,
                    step_period=0.05, query_ids=np.array([7], np.uint32), entities=["gripper"],
                    pixels=np.zeros((1, 2), np.float32), positions=samples[None, 0],
                    knots=np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), control_points=ctrl[None],
                    samples=samples[None], validity=np.ones((1, 33), np.float32),
                    confidence=np.ones(1, np.float32))


def start_node(cfg, *args):
    cmd = [sys.executable, "-m", "mu0_policy.nodes.action_expert_node", "--ros-args",
           "-p", f"robot_config:={cfg}", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def graph():
    robot = load_robot_config(FWD_CFG)
    kin = robot.build_kinematics()
    # a context of its own: a test elsewhere that left the default context initialised cannot break this one
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = None
    procs = {
        # live forward-position node with its own e-stop topic
        "fwd": start_node(FWD_CFG, "-p", "dry_run:=false", "-p", "estop_topic:=/fwd/estop",
                          "-r", "__node:=expert_fwd"),
        # live trajectory node
        "jtc": start_node(JTC_CFG, "-p", "dry_run:=false", "-r", "__node:=expert_jtc",
                          "-p", "estop_topic:=/jtc/estop"),
        # the shipped default: dry-run; its command topic is remapped so only it could publish there
        "dry": start_node(JTC_CFG, "-p", "dry_run:=true", "-r", "__node:=expert_dry",
                          "-r", "/joint_trajectory_controller/joint_trajectory:=/dry/joint_trajectory"),
    }
    try:
        node = rclpy.create_node("expert_test_graph", context=ctx)
        got = {"fwd": [], "jtc": [], "dry": [], "diag": [], "grip": []}
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Float64MultiArray, robot.command_topic, lambda m: got["fwd"].append((time.monotonic(), m)), rel)
        node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                 lambda m: got["jtc"].append((time.monotonic(), m)), rel)
        node.create_subscription(JointTrajectory, "/dry/joint_trajectory", lambda m: got["dry"].append(m), rel)
        node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: got["diag"].append(m), rel)
        node.create_subscription(Float64MultiArray, robot.gripper.topic, lambda m: got["grip"].append(m), rel)
        pubs = {
            "js": node.create_publisher(JointState, "/joint_states", 10),
            "traces": node.create_publisher(TraceArray, "/mu0/traces", rel),
            "estop": node.create_publisher(Bool, "/fwd/estop", rel),
        }
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        state = {"q": RESET_Q.copy(), "nan_traces": False, "nan_js": False, "send": True}
        ee = kin.ee_pose(RESET_Q)[:3, 3]

        def publish_inputs():
            now = node.get_clock().now().nanoseconds
            q = state["q"].copy()
            if state["nan_js"]:
                q[2] = np.nan
            js = JointState()
            js.header.stamp = convert.ns_to_stamp(now)
            js.name = list(robot.joint_names) + ["gripper"]
            js.position = [float(v) for v in q] + [GRIPPER_Q]
            pubs["js"].publish(js)
            if state["send"]:
                pubs["traces"].publish(convert.trace_set_to_msg(trace_set(now, ee, nan=state["nan_traces"])))

        node.create_timer(0.05, publish_inputs)

        spin = make_spin(ex, step_s=0.02)

        yield dict(node=node, got=got, pubs=pubs, spin=spin, state=state, kin=kin, ee=ee, robot=robot, procs=procs)
    finally:   # also when the set-up failed: never leave node processes running
        for p in procs.values():
            p.terminate()
        for name, p in procs.items():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_live_node_publishes_guarded_commands_toward_the_trace(graph):
    got, spin = graph["got"], graph["spin"]
    # >= 15: the first command may be the start-up hold (joint states before the first traces)
    assert spin(40, until=lambda: len(got["fwd"]) >= 15 and len(got["jtc"]) >= 2), \
        {k: p.poll() for k, p in graph["procs"].items()}
    robot, kin, ee = graph["robot"], graph["kin"], graph["ee"]
    lim = robot.joints
    for _, m in got["fwd"][-10:]:
        q = np.asarray(m.data)
        assert q.shape == (7,) and np.all(np.isfinite(q))
        assert np.all(q >= lim.lower) and np.all(q <= lim.upper)
        # the arm "stays" at RESET_Q here, so every command is within a few steps of it
        assert np.all(np.abs(q - RESET_Q) <= 3 * lim.max_step_delta + 1e-9)
        moved = kin.ee_pose(q)[:3, 3] - ee
        assert moved @ DIRECTION > 0                         # toward where the gripper trace goes
    grip = [np.asarray(m.data) for m in got["grip"]]
    assert grip and all(g.shape == (1,) and np.isfinite(g[0]) and -1.0 <= g[0] <= 1.0 for g in grip)
    # a plan is a whole chunk; a single-point trajectory is a hold (start-up, or traces gone stale
    # for a tick under load), so the newest plan is checked, not whatever came last
    plans = [m for _, m in got["jtc"] if len(m.points) > 1]
    assert plans, [len(m.points) for _, m in got["jtc"]]
    traj = plans[-1]
    assert list(traj.joint_names) == robot.joint_names and len(traj.points) == load_robot_config(JTC_CFG).chunk_horizon
    t = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in traj.points]
    assert np.allclose(np.diff(t), 0.05)
    final = kin.ee_pose(np.asarray(traj.points[-1].positions))[:3, 3] - ee
    assert final @ DIRECTION / np.linalg.norm(DIRECTION) > 0.01


def test_estop_holds_until_reset(graph):
    got, spin, pubs, node = graph["got"], graph["spin"], graph["pubs"], graph["node"]
    spin(30, until=lambda: len(got["fwd"]) >= 5)
    pubs["estop"].publish(Bool(data=True))
    spin(0.5)
    mark = time.monotonic()
    spin(1.5)
    during = [np.asarray(m.data) for t, m in got["fwd"] if t > mark]
    assert len(during) >= 10
    assert all(np.allclose(q, RESET_Q) for q in during)      # hold = the measured pose, every tick
    pubs["estop"].publish(Bool(data=False))                   # false does not release the latch
    spin(0.5)
    assert np.allclose(np.asarray(got["fwd"][-1][1].data), RESET_Q)
    client = node.create_client(Trigger, "/expert_fwd/reset_estop")
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(Trigger.Request())
    assert spin(10, until=future.done) and future.result().success
    mark = time.monotonic()
    spin(1.0)
    after = [np.asarray(m.data) for t, m in got["fwd"] if t > mark]
    assert after and not np.allclose(after[-1], RESET_Q)      # moving again


def test_dry_run_node_publishes_nothing(graph):
    got, spin = graph["got"], graph["spin"]
    spin(30, until=lambda: len(got["jtc"]) >= 3)
    spin(1.0)
    assert got["jtc"] and got["dry"] == []                    # same inputs, same config, dry-run


def test_dry_run_parameter_can_be_switched_off_at_run_time(graph):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    got, spin, node = graph["got"], graph["spin"], graph["node"]
    assert got["dry"] == []
    client = node.create_client(SetParameters, "/expert_dry/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    req = SetParameters.Request(parameters=[Parameter(
        name="dry_run", value=ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=False))])
    future = client.call_async(req)
    assert spin(10, until=future.done) and future.result().results[0].successful
    assert spin(5, until=lambda: len(got["dry"]) > 0)
    req.parameters[0].value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="no")
    future = client.call_async(req)
    assert spin(10, until=future.done) and not future.result().results[0].successful


def diag_value(got, robot, key):
    """Latest value of a counter in the /diagnostics status of the node driving `robot`."""
    for m in reversed(got["diag"]):
        for s in m.status:
            vals = {kv.key: kv.value for kv in s.values}
            if s.hardware_id == robot and key in vals:
                return int(vals[key])
    return None


def test_malformed_inputs_are_counted_and_cause_a_hold(graph):
    got, spin, state = graph["got"], graph["spin"], graph["state"]
    state["nan_traces"] = True
    assert spin(5, until=lambda: (diag_value(got, "sim_sawyer_forward", "malformed_traces") or 0) > 0)
    state["nan_traces"] = False
    state["nan_js"] = True
    assert spin(5, until=lambda: (diag_value(got, "sim_sawyer_forward", "malformed_joint_states") or 0) > 0)
    spin(1.0)   # beyond the 0.5 s joint-state timeout: the node holds at the last command
    mark = time.monotonic()
    spin(1.0)
    during = [np.asarray(m.data) for t, m in got["fwd"] if t > mark]
    assert during and all(np.array_equal(q, during[0]) for q in during) and np.all(np.isfinite(during))
    state["nan_js"] = False
    assert all(p.poll() is None for p in graph["procs"].values())     # nobody crashed


def test_bad_config_fails_at_start_naming_the_file(tmp_path):
    bad = tmp_path / "robot.yaml"
    bad.write_text(open(FWD_CFG).read().replace("rate_hz: 20.0", "rate_hz: -3"))
    p = start_node(str(bad))
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2 and str(bad) in out and "control.rate_hz" in out
