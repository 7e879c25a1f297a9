"""Closed loop over real DDS with the MuJoCo sim node: action_expert commands move the arm.

Processes: sim_arm (mu0_sim, real MuJoCo physics, publishes /joint_states and /clock) and
action_expert (live, use_sim_time). The test process stands in for mu0_node: it keeps publishing a
gripper trace that starts at the current end effector and heads along DIRECTION, stamped with the
sim time of the latest joint state. After a few seconds the end effector (forward kinematics of the
sim's own /joint_states) must have moved along DIRECTION.
"""
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from mu0_msgs.msg import TraceArray
from mu0_policy.experts import load_robot_config
from mu0_ros import convert

from robot_configs import follower_config
from test_expert_node import trace_set

DIRECTION = np.array([0.0, 0.06, 0.04])     # toward the table centre and up, within the hand's box


@pytest.mark.parametrize("embodiment,cfg", [
    ("sawyer_joint", follower_config("sim_sawyer_joint", hold_orientation=True)),
    ("sawyer_joint", follower_config("sim_sawyer_forward", hold_orientation=True)),
    ("sawyer_ee", follower_config("sim_sawyer_ee", max_ee_speed=0.4)),
])
def test_commands_move_the_sim_arm_along_the_trace(embodiment, cfg):
    robot = load_robot_config(cfg)
    kin = robot.build_kinematics()
    sim = subprocess.Popen([sys.executable, "-m", "mu0_sim.nodes.sim_node", "--ros-args", "-p", "task:=reach-v3",
                            "-p", f"embodiment:={embodiment}", "-p", "camera_rate_hz:=1.0"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expert = subprocess.Popen([sys.executable, "-m", "mu0_policy.nodes.action_expert_node", "--ros-args",
                               "-p", f"robot_config:={cfg}", "-p", "dry_run:=false", "-p", "use_sim_time:=true"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    node = rclpy.create_node("closed_loop_test")
    latest = {}

    def on_js(msg):
        stamp, names = convert.stamp_to_ns(msg.header.stamp), list(msg.name)
        if all(n in names for n in robot.joint_names):
            q = np.array([msg.position[names.index(n)] for n in robot.joint_names])
            latest.update(stamp=stamp, ee=kin.ee_pose(q)[:3, 3])
            latest.setdefault("start_ee", latest["ee"])
            latest.setdefault("start_stamp", stamp)

    node.create_subscription(JointState, "/joint_states", on_js, 10)
    pub = node.create_publisher(TraceArray, "/mu0/traces", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    def publish_trace():
        if "ee" in latest:
            pub.publish(convert.trace_set_to_msg(trace_set(latest["stamp"], latest["ee"], direction=DIRECTION)))

    node.create_timer(0.1, publish_trace)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 60
        while "start_ee" not in latest and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        assert "start_ee" in latest, f"no /joint_states from the sim (exit {sim.poll()})"
        # the expert node may come up seconds after the sim on a loaded machine: the 3 s window
        # starts once the hand has begun to move (5 mm), in SIM time (the sim may run slower than
        # real time here)
        while np.linalg.norm(latest["ee"] - latest["start_ee"]) < 0.005 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        follow_start = latest["stamp"]
        while latest["stamp"] - follow_start < 3_000_000_000 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        assert sim.poll() is None and expert.poll() is None
    finally:
        for p in (expert, sim):
            p.terminate()
        for p in (expert, sim):
            try:
                out, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
        node.destroy_node()
        rclpy.shutdown()
    moved = latest["ee"] - latest["start_ee"]
    along = moved @ DIRECTION / np.linalg.norm(DIRECTION)
    across = np.linalg.norm(moved - along * DIRECTION / np.linalg.norm(DIRECTION))
    print(f"{cfg}: end effector moved {np.round(moved, 4)} m, {along:.3f} m along the trace, {across:.3f} m across")
    # the trace heads 7.2 cm per 1.6 s; after 3 s of following it the hand is well on its way
    assert along > 0.03, f"moved {moved} ({along:.3f} m along the trace)"
    assert across < 0.5 * along, f"moved {moved}: {across:.3f} m off the trace direction"
