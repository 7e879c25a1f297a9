"""action_expert: traces + joint states -> guarded robot commands at the control rate.

Parameters
  robot_config  (string, required) path of config/robots/<robot>.yaml; a bad file stops the node at
                start with an error naming the file and the field.
  dry_run       (bool, default: the config's safety.dry_run, itself true by default) log what would
                be sent instead of sending; can be changed at run time (`ros2 param set`).
  traces_topic  (/mu0/traces)   mu0_msgs/TraceArray (reliable, keep last 1)
  estop_topic   (/mu0/estop)    std_msgs/Bool; true latches a hold until ~/reset_estop (std_srvs/Trigger)
  diagnostics_period_s (1.0)    /diagnostics
The joint-state topic, command interface + topic and the control rate come from the robot config.
Commands: trajectory_msgs/JointTrajectory (joint_trajectory), std_msgs/Float64MultiArray
(forward_position: joint targets; ee_delta: [dx, dy, dz, gripper] units). Malformed or non-finite
inputs are counted and dropped with a throttled warning; nothing is sent because of them.
The logic lives in mu0_policy.experts.runner.ExpertRunner (no ROS there).
"""
from __future__ import annotations

import sys
import threading
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from mu0_msgs.msg import TraceArray
from mu0_policy.experts import RobotConfigError, load_robot_config
from mu0_policy.experts.runner import ExpertRunner
from mu0_ros import convert
from mu0_ros.diagnostics import ERROR, OK, WARN, StatusData, diagnostic_array_msg
from mu0_ros.qos import QosEventMonitor

WARN_COUNTERS = ("malformed_traces", "malformed_joint_states", "expert_errors")




class ActionExpertNode(Node):
    def __init__(self, **kwargs):
        super().__init__("action_expert", **kwargs)
        path = self.declare_parameter("robot_config", "").value
        if not path:
            raise RobotConfigError("parameter 'robot_config': required (path of config/robots/<robot>.yaml)")
        self.robot = load_robot_config(path)
        self.runner = ExpertRunner(self.robot)
        dry = self.declare_parameter("dry_run", self.robot.safety.dry_run).value
        self.runner.guard.dry_run = bool(dry)
        traces_topic = self.declare_parameter("traces_topic", "/mu0/traces").value
        estop_topic = self.declare_parameter("estop_topic", "/mu0/estop").value
        diag_period = float(self.declare_parameter("diagnostics_period_s", 1.0).value)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._lock = threading.Lock()
        self.camera_to_command_ms = deque(maxlen=1000)
        self.counts = {"malformed_traces": 0, "malformed_joint_states": 0, "published": 0,
                       "dry_run_logged": 0, "estop_messages": 0}
        self.qos_events = QosEventMonitor(self)
        newest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        # best effort subscription: matches joint_state publishers of either reliability
        js_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(TraceArray, traces_topic, self._on_traces, newest,
                                 event_callbacks=self.qos_events.subscription(traces_topic))
        self.create_subscription(JointState, self.robot.joint_state_topic, self._on_joint_state, js_qos,
                                 event_callbacks=self.qos_events.subscription(self.robot.joint_state_topic))
        self.create_subscription(Bool, estop_topic, self._on_estop, reliable,
                                 event_callbacks=self.qos_events.subscription(estop_topic))
        msg_type = JointTrajectory if self.robot.command_interface == "joint_trajectory" else Float64MultiArray
        self.command_pub = self.create_publisher(msg_type, self.robot.command_topic, reliable,
                                                 event_callbacks=self.qos_events.publisher(self.robot.command_topic))
        self.gripper_pub = None
        if self.robot.gripper.interface == "forward_position":
            self.gripper_pub = self.create_publisher(Float64MultiArray, self.robot.gripper.topic, reliable)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        self.create_service(Trigger, "~/reset_estop", self._on_reset_estop)
        self.create_timer(self.robot.control_dt, self._on_tick)
        self.create_timer(diag_period, self._publish_diagnostics)
        self.get_logger().info(
            f"robot {self.robot.robot} ({path}): expert {self.robot.expert_name}, "
            f"{self.robot.command_interface} -> {self.robot.command_topic} at {self.robot.control_rate_hz:g} Hz, "
            f"dry_run={self.runner.guard.dry_run}")

    # --------------------------------------------------------------------------------- callbacks
    def _on_set_parameters(self, params):
        for p in params:
            if p.name == "dry_run":
                if not isinstance(p.value, bool):
                    return SetParametersResult(successful=False, reason="dry_run must be a bool")
                with self._lock:
                    self.runner.guard.dry_run = p.value
                self.get_logger().warning(f"dry_run set to {p.value}")
            elif p.name == "robot_config":
                return SetParametersResult(successful=False, reason="robot_config is read at start only")
        return SetParametersResult(successful=True)

    def _malformed(self, key: str, err: Exception):
        self.counts[key] += 1
        self.get_logger().warning(f"{key.replace('_', ' ')} dropped ({self.counts[key]} so far): {err}",
                                  throttle_duration_sec=5.0)

    def _on_traces(self, msg):
        try:
            traces = convert.trace_msg_to_set(msg)
            with self._lock:
                self.runner.update_traces(traces)
        except (ValueError, TypeError, AttributeError) as err:
            self._malformed("malformed_traces", err)

    def _on_joint_state(self, msg):
        try:
            stamp, names, pos, vel = convert.joint_state_to_arrays(msg)
            if stamp == 0:   # some drivers leave the stamp empty: take the arrival time
                stamp = self.get_clock().now().nanoseconds
            with self._lock:
                self.runner.update_joint_state(stamp, names, pos, vel)
        except (ValueError, TypeError) as err:
            self._malformed("malformed_joint_states", err)

    def _on_estop(self, msg):
        self.counts["estop_messages"] += 1
        if msg.data:
            with self._lock:
                was = self.runner.guard.estop_latched
                self.runner.estop("e-stop topic")
            if not was:
                self.get_logger().error("E-STOP latched: holding until ~/reset_estop")
            self._on_tick()   # hold now, not at the next tick

    def _on_reset_estop(self, request, response):
        with self._lock:
            was = self.runner.reset_estop()
        response.success = True
        response.message = "e-stop released" if was else "e-stop was not latched"
        self.get_logger().warning(response.message)
        return response

    def _on_tick(self):
        now = self.get_clock().now().nanoseconds
        with self._lock:
            cmd = self.runner.tick(now)
        if cmd is None:
            return
        if not cmd.send:
            self.counts["dry_run_logged"] += 1
            self.get_logger().info(
                f"dry-run: would send {cmd.interface} {'HOLD ' + ','.join(cmd.reasons) if cmd.hold else ''}"
                f"{np.array2string(cmd.values[0], precision=3)} ({len(cmd.values)} point(s))",
                throttle_duration_sec=2.0)
            return
        if cmd.hold:
            self.get_logger().warning(f"holding: {', '.join(cmd.reasons)}", throttle_duration_sec=2.0)
        if cmd.interface == "joint_trajectory":
            msg = convert.joint_trajectory_msg(
                cmd.names, cmd.values, cmd.dt * np.arange(1, len(cmd.values) + 1))
        else:
            msg = convert.float64_array_msg(cmd.values[0])
        self.command_pub.publish(msg)
        if cmd.gripper is not None and self.gripper_pub is not None:
            self.gripper_pub.publish(convert.float64_array_msg(np.array([cmd.gripper])))
        self.counts["published"] += 1
        if cmd.trace_stamp_ns is not None:
            # end-to-end latency: source camera stamp of the traces -> this command's publish
            self.camera_to_command_ms.append((self.get_clock().now().nanoseconds - cmd.trace_stamp_ns) / 1e6)

    def _publish_diagnostics(self):
        with self._lock:
            values = {**{k: str(v) for k, v in self.counts.items()},
                      **{f"runner.{k}": str(v) for k, v in self.runner.counts.items()},
                      **{f"guard.{k}": str(v) for k, v in self.runner.guard.counts.items()}}
            if self.runner.act_ms:
                a = np.asarray(self.runner.act_ms)
                values.update({"act_ms.p50": f"{np.percentile(a, 50):.2f}", "act_ms.max": f"{a.max():.2f}"})
            if self.camera_to_command_ms:
                lat = np.asarray(self.camera_to_command_ms)
                values.update({"camera_to_command_ms.p50": f"{np.percentile(lat, 50):.1f}",
                               "camera_to_command_ms.p99": f"{np.percentile(lat, 99):.1f}"})
            values["dry_run"] = str(self.runner.guard.dry_run)
            values["estop_latched"] = str(self.runner.guard.estop_latched)
            values["incompatible_qos"] = str(self.qos_events.total())
            estop = self.runner.guard.estop_latched
        problems = [k for k in WARN_COUNTERS if self.counts.get(k, 0) or self.runner.counts.get(k, 0)]
        level = ERROR if estop else (WARN if problems else OK)
        text = "e-stop latched" if estop else (("problems: " + ", ".join(problems)) if problems else "ok")
        status = StatusData(f"action_expert: {self.robot.robot}", self.robot.robot, level, text, values)
        self.diag_pub.publish(diagnostic_array_msg([status], self.get_clock().now().to_msg()))


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        node = ActionExpertNode()
    except RobotConfigError as err:
        print(f"action_expert: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
