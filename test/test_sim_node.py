"""sim_arm node over real rclpy/DDS: a client commands it and sees frames and joint motion."""
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from mu0_sim.nodes.sim_node import SimArmNode


def test_sim_node_publishes_and_moves_on_commands():
    rclpy.init()
    try:
        sim = SimArmNode(task="reach", embodiment="sawyer_joint", mode="lockstep", width=96,
                         height=72, camera_rate_hz=80.0)
        client = rclpy.create_node("sim_test_client")
        images, states = [], []
        client.create_subscription(Image, "/camera/camera/color/image_raw",
                                   lambda m: images.append(m), qos_profile_sensor_data)
        client.create_subscription(JointState, "/joint_states", lambda m: states.append(m), 10)
        pub = client.create_publisher(Float64MultiArray, "/forward_position_controller/commands", 10)
        ex = SingleThreadedExecutor()
        ex.add_node(sim)
        ex.add_node(client)
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        q0 = sim.env.arm_positions()
        target = q0 + np.array([0.25, 0, 0, 0, 0, 0, 0])
        for _ in range(40):
            pub.publish(Float64MultiArray(data=[*target.tolist(), -1.0]))
            ex.spin_once(timeout_sec=0.05)
        pub.publish(Float64MultiArray(data=[1.0, 2.0]))   # malformed: counted and dropped
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (len(states) < 20 or sim.dropped == 0):
            ex.spin_once(timeout_sec=0.05)
        assert sim.env.step_count >= 20, "lockstep: each command advances the physics"
        assert images and images[-1].encoding == "rgb8" and images[-1].width == 96
        j0 = [m.position[0] for m in states if m.name[0] == "right_j0"]
        assert j0[-1] - q0[0] > 0.15, "right_j0 should follow the commanded target"
        assert sim.dropped == 1
        sim.destroy_node()
        client.destroy_node()
    finally:
        rclpy.try_shutdown()
