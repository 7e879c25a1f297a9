"""Helpers shared by the tests that drive nodes over real rclpy / Fast DDS and by the pure sync tests.

- `private_graph(name)`: a test node in an rclpy Context of its own (a test elsewhere that leaked
  the default context cannot break it) and `spin(seconds, until=None)`;
- `make_spin(executor)`: that spin function for a test that builds its own executor;
- `start_node` / `stop_node` / `node_process`: a node as its own process, stopped like Ctrl-C
  (SIGINT); `with node_process(start_node(...)) as p:` also asserts a clean exit;
- `start_expert_remapped(prefix, ...)` / `start_sync_remapped(prefix, ...)`: the action expert /
  rgbd_sync with every topic under /<prefix>/, so one test's traffic never mixes with another's;
- `diag_value`, `joint_state_msg`, `frame_msgs`: reading /diagnostics and building the messages.

rclpy is imported only by the helpers that need it, so the pure-code tests (test_robustness_sync)
can use `frame_msgs` without starting any ROS machinery.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_core.frames import RGBDFrame
from mu0_ros import convert

SEC = 1_000_000_000
RESET_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])   # the sim Sawyer's reset pose


def reliable_qos(depth: int = 50):
    """Reliable and deep enough that a test never misses a command it counts."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def make_spin(executor, step_s: float = 0.01):
    """spin(seconds, until=None): spins up to `seconds`; with `until`, stops as soon as it holds and
    returns whether it held (without, returns True)."""
    def spin(seconds, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=step_s)
            if until is not None and until():
                return True
        return until is None or until()
    return spin


@contextlib.contextmanager
def private_graph(name: str):
    """Yields (node, spin) on a Context of its own; destroys the node and shuts the context down."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(name, context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        yield node, make_spin(ex)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def start_node(module, *args):
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_node(p):
    """SIGINT like Ctrl-C; returns (returncode, output). Idempotent: a second call (say, an
    assertion message that stopped the node to show its log) returns the first call's answer."""
    if getattr(p, "stopped", None) is not None:
        return p.stopped
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    p.stopped = (p.returncode, out)
    return p.stopped


@contextlib.contextmanager
def node_process(p):
    """Yields the node process p; afterwards stops it like Ctrl-C and asserts that it exited 0
    without a traceback. When the body fails, the node is stopped and the body's failure is the
    one reported."""
    try:
        yield p
    except BaseException:
        stop_node(p)
        raise
    rc, out = stop_node(p)
    assert rc == 0 and "Traceback" not in out, out[-3000:]


def start_expert_remapped(prefix: str, robot_config, robot, *params):
    """action_expert (NOT dry-run) named expert_<prefix>, its joint states, traces, commands,
    gripper and e-stop under /<prefix>/."""
    return start_node("mu0_policy.nodes.action_expert_node", "-p", f"robot_config:={robot_config}",
                      "-p", "dry_run:=false", *params, "-r", f"__node:=expert_{prefix}",
                      "-r", f"/joint_states:=/{prefix}/joint_states", "-r", f"/mu0/traces:=/{prefix}/traces",
                      "-r", f"{robot.command_topic}:=/{prefix}/commands",
                      "-r", f"{robot.gripper.topic}:=/{prefix}/gripper", "-p", f"estop_topic:=/{prefix}/estop")


def start_sync_remapped(prefix: str, *params):
    """rgbd_sync named sync_<prefix>, reading /<prefix>/{color,depth,info}, publishing /<prefix>/rgbd."""
    return start_node("mu0_perception.nodes.rgbd_sync", "-r", f"__node:=sync_{prefix}",
                      "-p", f"color_topic:=/{prefix}/color", "-p", f"depth_topic:=/{prefix}/depth",
                      "-p", f"camera_info_topic:=/{prefix}/info", "-p", f"output_topic:=/{prefix}/rgbd", *params)


def diag_value(diags, name_part, key):
    """The newest value of `key` in a status whose name contains name_part (or whose hardware id
    is name_part), searching the DiagnosticArrays newest first; None when never reported."""
    for m in reversed(diags):
        for s in m.status:
            if name_part in s.name or name_part == s.hardware_id:
                vals = {kv.key: kv.value for kv in s.values}
                if key in vals:
                    return vals[key]
    return None


def joint_state_msg(robot, stamp_ns: int, q=RESET_Q, gripper: float = -1.0):
    """/joint_states of the arm at q, the gripper joint last (-1: open)."""
    from sensor_msgs.msg import JointState

    js = JointState()
    js.header.stamp = convert.ns_to_stamp(stamp_ns)
    js.name = list(robot.joint_names) + ["gripper"]
    js.position = [float(v) for v in q] + [float(gripper)]
    return js


def frame_msgs(stamp_ns=None, sec=None, w=16, h=12):
    """(color, depth, camera_info) of a w x h frame (black, 1 m depth) stamped stamp_ns, or with a
    raw (possibly negative) `sec` written straight into the header, as a broken driver would."""
    intr = CameraIntrinsics.from_K(np.array([[1.25 * w, 0, w / 2], [0, 1.25 * w, h / 2], [0, 0, 1]]), w, h)
    f = RGBDFrame(stamp_ns=0, frame_id="cam", color=np.zeros((h, w, 3), np.uint8),
                  depth=np.ones((h, w), np.float32), intrinsics=intr)
    msg = convert.frame_to_rgbd_msg(f)
    for m in (msg.color, msg.depth, msg.camera_info):
        if sec is None:
            m.header.stamp = convert.ns_to_stamp(stamp_ns)
        else:
            m.header.stamp.sec, m.header.stamp.nanosec = sec, 0
    return msg.color, msg.depth, msg.camera_info
