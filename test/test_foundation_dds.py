"""Two real rclpy nodes in two processes exchange mu0_msgs/RGBD and TraceArray over Fast DDS."""
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from mu0_msgs.msg import RGBD, TraceArray
from mu0_ros import convert

from test_foundation_convert import _frame, make_trace_set

PUBLISHER = textwrap.dedent("""
    import sys, time, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from mu0_msgs.msg import RGBD, TraceArray
    from mu0_ros import convert
    sys.path.insert(0, sys.argv[1])
    from test_foundation_convert import _frame, make_trace_set
    rclpy.init()
    node = rclpy.create_node("mu0_test_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_rgbd = node.create_publisher(RGBD, "/mu0/rgbd", qos)
    pub_traces = node.create_publisher(TraceArray, "/mu0/traces", qos)
    rgbd, traces = convert.frame_to_rgbd_msg(_frame()), convert.trace_set_to_msg(make_trace_set())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:   # publish until the subscriber has matched and we're killed
        pub_rgbd.publish(rgbd); pub_traces.publish(traces)
        rclpy.spin_once(node, timeout_sec=0.05)
""")


@pytest.fixture
def ros_node():
    rclpy.init()
    node = rclpy.create_node("mu0_test_subscriber")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def test_rgbd_and_traces_cross_processes_intact(ros_node):
    got = {}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    ros_node.create_subscription(RGBD, "/mu0/rgbd", lambda m: got.setdefault("rgbd", m), qos)
    ros_node.create_subscription(TraceArray, "/mu0/traces", lambda m: got.setdefault("traces", m), qos)
    here = str(__import__("pathlib").Path(__file__).parent)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, here])
    try:
        executor = SingleThreadedExecutor()
        executor.add_node(ros_node)
        deadline = time.monotonic() + 25
        while len(got) < 2 and time.monotonic() < deadline and proc.poll() is None:
            executor.spin_once(timeout_sec=0.1)
    finally:
        proc.kill()
        proc.wait()
    assert set(got) == {"rgbd", "traces"}, f"received only {set(got)}"

    sent_frame = _frame()
    frame = convert.rgbd_msg_to_frame(got["rgbd"])
    assert frame.stamp_ns == sent_frame.stamp_ns and frame.frame_id == sent_frame.frame_id
    assert frame.intrinsics == sent_frame.intrinsics
    np.testing.assert_array_equal(frame.color, sent_frame.color)
    np.testing.assert_array_equal(frame.depth, sent_frame.depth)   # NaN positions included

    sent = make_trace_set()
    traces = convert.trace_msg_to_set(got["traces"])
    assert traces.stamp_ns == sent.stamp_ns and traces.entities == sent.entities
    assert traces.instruction == sent.instruction and traces.horizon_steps == sent.horizon_steps
    np.testing.assert_allclose(traces.samples, sent.samples)
    np.testing.assert_allclose(traces.control_points, sent.control_points)
    np.testing.assert_allclose(traces.knots, sent.knots)
