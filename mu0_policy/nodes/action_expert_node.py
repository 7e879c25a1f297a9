"""action_expert: traces + joint states -> guarded robot commands at the control rate.

A lifecycle node (rclpy.lifecycle), as ros2_control controllers are:
* configure  — loads the robot config (`robot_config`), builds the expert + safety guard, creates
  subscriptions, publishers, the ~/reset_estop service and the timers. FAILURE (logged, naming the
  file and the field) on a bad config: the node stays unconfigured.
* activate   — commands go out (a new command stream: it starts from the measured joints).
* deactivate — one explicit hold is sent, then nothing until activated again.
* cleanup / shutdown — everything is destroyed.
With `autostart` true (the default) the node configures and activates itself when it is built
(console script or in-process), so `mu0 sim` / `mu0 run` work without a lifecycle manager, and
`trigger_configure()` / `trigger_activate()` on an already configured / active node return SUCCESS; with `autostart:=false` a manager drives it
(`ros2 lifecycle set /action_expert configure` ...). A bad config with autostart exits 2.

Parameters
  robot_config  (string, required) path of config/robots/<robot>.yaml.
  dry_run       (bool, default: the config's safety.dry_run, itself true by default) log what would
                be sent instead of sending; can be changed at run time (`ros2 param set`).
  autostart     (bool, true)
  traces_topic  (/mu0/traces)   mu0_msgs/TraceArray (reliable, keep last 1); fresh traces trigger a
                                re-plan (event-driven): a joint_trajectory robot gets the new
                                trajectory at once, a streaming one at its next control tick
  estop_topic   (/mu0/estop)    std_msgs/Bool; true latches a hold until ~/reset_estop (std_srvs/Trigger)
  max_stamp_future_s (5.0)      input stamps further ahead of the node clock are dropped
  diagnostics_period_s (1.0)    /diagnostics (latency: `camera_to_command_ms` = source camera stamp
                                -> the first command planned from that frame's traces;
                                `command_trace_age_ms` = the same for every command, chunk re-plans
                                from older traces included)
The joint-state topic, command interface + topic and the control rate come from the robot config.
Commands: trajectory_msgs/JointTrajectory (joint_trajectory), std_msgs/Float64MultiArray
(forward_position: joint targets; ee_delta: [dx, dy, dz, gripper] units); a joint robot's gripper
gets Float64MultiArray [closure] on its own topic.

Robustness: any exception from one message (malformed, huge, non-finite, negative / far-future
stamp, MemoryError, ...) is counted on /diagnostics by topic and reason (`dropped.<topic>.<reason>`)
and the message dropped with a throttled warning; the node keeps serving. The control tick runs on
the node clock; a steady-clock watchdog ticks when that clock stops (frozen /clock), and the guard
judges staleness on both clocks, so a frozen or rewound /clock holds. SIGINT exits 0.
The logic lives in mu0_policy.experts.runner.ExpertRunner (no ROS there).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from mu0_msgs.msg import TraceArray
from mu0_policy.experts import load_robot_config
from mu0_policy.experts.runner import ExpertRunner
from mu0_ros import convert
from mu0_ros.diagnostics import ERROR, OK, WARN, DropCounter, StatusData, diagnostic_array_msg
from mu0_ros.node_main import spin_node
from mu0_ros.qos import QosEventMonitor

WARN_COUNTERS = ("malformed_traces", "malformed_joint_states", "malformed_estop", "expert_errors",
                 "trace_model_mismatch")
DEACTIVATED = "deactivated"


class ActionExpertNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("action_expert", **kwargs)
        p = self.declare_parameter
        p("robot_config", "")
        p("dry_run", Parameter.Type.BOOL)          # default: the robot config's safety.dry_run
        p("autostart", True)
        p("traces_topic", "/mu0/traces")
        p("estop_topic", "/mu0/estop")
        p("max_stamp_future_s", 5.0)
        p("diagnostics_period_s", 1.0)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.RLock()
        self.robot = None
        self.runner: ExpertRunner | None = None
        self.config_error = ""
        self._active = False
        self._endpoints = []     # (kind, handle) created by configure
        self.drops = DropCounter()
        self.camera_to_command_ms = deque(maxlen=1000)
        self.command_trace_age_ms = deque(maxlen=1000)
        self._last_command_trace_stamp = None
        self._last_was_hold = True   # no event-driven command before the control tick has planned once
        self.counts = {"malformed_traces": 0, "malformed_joint_states": 0, "malformed_estop": 0, "published": 0,
                       "dry_run_logged": 0, "estop_messages": 0, "watchdog_ticks": 0, "callback_errors": 0,
                       "in_traces": 0, "in_joint_states": 0}
        self._last_tick_wall = time.monotonic()
        self.command_pub = self.gripper_pub = self.diag_pub = None
        self.configured = None   # with autostart: whether configure succeeded
        if self.get_parameter("autostart").value:
            # configure + activate right here, so a node built in-process behaves like the console script
            self.configured = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            if self.configured:
                self.trigger_activate()

    # --------------------------------------------------------------------------------- lifecycle
    def trigger_configure(self):
        """As LifecycleNode's, but SUCCESS when already configured (e.g. by autostart), so in-process
        callers that configure explicitly work with either autostart setting."""
        if self.runner is not None:
            return TransitionCallbackReturn.SUCCESS
        return super().trigger_configure()

    def trigger_activate(self):
        """As LifecycleNode's, but SUCCESS when already active."""
        if self._active:
            return TransitionCallbackReturn.SUCCESS
        return super().trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        path = g("robot_config")
        try:
            if not path:
                raise ValueError("parameter 'robot_config': required (path of config/robots/<robot>.yaml)")
            robot = load_robot_config(path)
            runner = ExpertRunner(robot)
            self.max_future_s = float(g("max_stamp_future_s"))
            diag_period = float(g("diagnostics_period_s"))
            if not (diag_period > 0 and self.max_future_s > 0):
                raise ValueError("parameters diagnostics_period_s and max_stamp_future_s must be > 0")
        except Exception as err:  # RobotConfigError names the file and the field
            self.config_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            try:
                dry = self.get_parameter("dry_run").value
            except ParameterUninitializedException:
                dry = None
            if dry is None:   # not given: the robot config's safety.dry_run
                dry = bool(robot.safety.dry_run)
                self.set_parameters([Parameter("dry_run", Parameter.Type.BOOL, dry)])
            runner.guard.dry_run = bool(dry)
            self.robot, self.runner = robot, runner
        traces_topic, estop_topic = g("traces_topic"), g("estop_topic")
        self.qos_events = QosEventMonitor(self)
        newest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        # best effort subscription: matches joint_state publishers of either reliability
        js_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        add = lambda kind, h: self._endpoints.append((kind, h)) or h  # noqa: E731
        # raw: the serialized TraceArray is read straight into arrays (convert.trace_cdr_to_set)
        # instead of as ~1000 rclpy Point objects
        add("sub", self.create_subscription(TraceArray, traces_topic, self._on_traces, newest, raw=True,
                                            event_callbacks=self.qos_events.subscription(traces_topic)))
        add("sub", self.create_subscription(JointState, robot.joint_state_topic, self._on_joint_state, js_qos,
                                            event_callbacks=self.qos_events.subscription(robot.joint_state_topic)))
        add("sub", self.create_subscription(Bool, estop_topic, self._on_estop, reliable,
                                            event_callbacks=self.qos_events.subscription(estop_topic)))
        msg_type = JointTrajectory if robot.command_interface == "joint_trajectory" else Float64MultiArray
        self.command_pub = add("lpub", self.create_lifecycle_publisher(
            msg_type, robot.command_topic, reliable, event_callbacks=self.qos_events.publisher(robot.command_topic)))
        self.gripper_pub = None
        if robot.gripper.interface == "forward_position":
            self.gripper_pub = add("lpub", self.create_lifecycle_publisher(Float64MultiArray, robot.gripper.topic,
                                                                           reliable))
        self.diag_pub = add("pub", self.create_publisher(DiagnosticArray, "/diagnostics", reliable))
        add("srv", self.create_service(Trigger, "~/reset_estop", self._on_reset_estop))
        add("timer", self.create_timer(robot.control_dt, self._on_ros_tick))
        # a steady-clock watchdog: ticks (-> a hold) when the node clock stops, e.g. a frozen /clock
        add("timer", self.create_timer(robot.control_dt, self._on_watchdog,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME)))
        # diagnostics on the steady clock too: they must keep coming when /clock stops
        add("timer", self.create_timer(diag_period, self._publish_diagnostics,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME)))
        self.get_logger().info(
            f"robot {robot.robot} ({path}): expert {robot.expert_name}, "
            f"{robot.command_interface} -> {robot.command_topic} at {robot.control_rate_hz:g} Hz, "
            f"dry_run={self.runner.guard.dry_run}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            self.runner.restart()
            self._active = True
        self._last_tick_wall = time.monotonic()
        self.get_logger().info("active: commands go out")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._lock:
            cmd = self.runner.hold(self.get_clock().now().nanoseconds, DEACTIVATED, time.monotonic_ns())
            self._publish(cmd)          # the lifecycle publishers are still live here
            self._active = False
        self.get_logger().info("inactive: hold sent, no commands until activated")
        return super().on_deactivate(state)

    def _free(self) -> None:
        with self._lock:
            self._active = False
            for kind, h in reversed(self._endpoints):
                try:
                    {"sub": self.destroy_subscription, "pub": self.destroy_publisher,
                     "lpub": self.destroy_lifecycle_publisher, "srv": self.destroy_service,
                     "timer": self.destroy_timer}[kind](h)
                except Exception:  # noqa: BLE001 - best effort while tearing down
                    pass
            self._endpoints = []
            self.command_pub = self.gripper_pub = self.diag_pub = None
            self.runner = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            try:
                self.on_deactivate(state)
            except Exception:  # noqa: BLE001
                pass
        self._free()
        return TransitionCallbackReturn.SUCCESS

    # --------------------------------------------------------------------------------- callbacks
    def _on_set_parameters(self, params):
        for p in params:
            if p.name == "dry_run":
                if not isinstance(p.value, bool):
                    return SetParametersResult(successful=False, reason="dry_run must be a bool")
                with self._lock:
                    if self.runner is not None:
                        self.runner.guard.dry_run = p.value
                if self.runner is not None:
                    self.get_logger().warning(f"dry_run set to {p.value}")
            elif p.name == "robot_config" and self.runner is not None:
                return SetParametersResult(successful=False, reason="robot_config is read at configure only")
        return SetParametersResult(successful=True)

    def _dropped(self, key: str, err: BaseException):
        reason, n = self.drops.drop(key, err)
        counter = f"malformed_{key}"
        if counter in self.counts:
            self.counts[counter] += 1
        self.get_logger().warning(f"{key.replace('_', ' ')} message dropped ({reason}, {n} so far): "
                                  f"{type(err).__name__}: {str(err)[:200]}", throttle_duration_sec=5.0)

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_traces(self, data: bytes):
        self.counts["in_traces"] += 1
        try:
            if self.runner is None:
                return
            traces = convert.trace_cdr_to_set(data)
            now = self._now()
            convert.check_stamp(traces.stamp_ns, now, self.max_future_s)
            with self._lock:
                self.runner.update_traces(traces, now)
                if not self._active:
                    return
                # event-driven re-planning: fresh traces are acted on now, not after the rest of
                # the chunk, so command latency follows trace latency
                self.runner.replan()
        except Exception as err:  # noqa: BLE001 - one message never stops the node
            self._dropped("traces", err)
            return
        if self.robot.command_interface == "joint_trajectory" and not self._last_was_hold:
            # a trajectory is timed from its receipt: send the new one now (guarded as every
            # command). Streaming interfaces (forward_position, ee_delta) emit one row per control
            # tick, since the guard's step limits are per tick: their next tick uses the new plan.
            # While holding (start-up, a fault) the control tick alone decides: no extra holds.
            self._on_tick()

    def _on_joint_state(self, msg):
        self.counts["in_joint_states"] += 1
        try:
            if self.runner is None:
                return
            stamp, names, pos, vel = convert.joint_state_to_arrays(msg)
            now = self._now()
            if stamp == 0:   # some drivers leave the stamp empty: take the arrival time
                stamp = now
            convert.check_stamp(stamp, now, self.max_future_s)
            with self._lock:
                self.runner.update_joint_state(stamp, names, pos, vel)
        except Exception as err:  # noqa: BLE001
            self._dropped("joint_states", err)

    def _on_estop(self, msg):
        try:
            self.counts["estop_messages"] += 1
            if self.runner is None or not msg.data:
                return
            with self._lock:
                was = self.runner.guard.estop_latched
                self.runner.estop("e-stop topic")
            if not was:
                self.get_logger().error("E-STOP latched: holding until ~/reset_estop")
            self._on_tick()   # hold now, not at the next tick
        except Exception as err:  # noqa: BLE001
            self._dropped("estop", err)

    def _on_reset_estop(self, request, response):
        with self._lock:
            was = self.runner.reset_estop() if self.runner is not None else False
        response.success = True
        response.message = "e-stop released" if was else "e-stop was not latched"
        self.get_logger().warning(response.message)
        return response

    def _on_ros_tick(self):
        self._last_tick_wall = time.monotonic()
        self._on_tick()

    def _on_watchdog(self):
        """Steady clock: tick at the control rate while the node clock has not ticked for two
        periods (a frozen /clock), so the guard sees it and holds."""
        if self.robot is not None and time.monotonic() - self._last_tick_wall > 2 * self.robot.control_dt:
            self.counts["watchdog_ticks"] += 1
            self._on_tick()

    def _on_tick(self):
        try:
            with self._lock:
                if self.runner is None or not self._active:
                    return
                cmd = self.runner.tick(self._now(), time.monotonic_ns())
                self._publish(cmd)
                mismatch = getattr(self.runner, "last_trace_model_mismatch", None)
            if mismatch:
                self.get_logger().warning(mismatch, throttle_duration_sec=10.0)
        except Exception as err:  # noqa: BLE001 - never let one tick end the node
            self.counts["callback_errors"] += 1
            self.get_logger().error(f"tick failed: {type(err).__name__}: {err}", throttle_duration_sec=5.0)

    def _publish(self, cmd):
        if cmd is None:
            return
        self._last_was_hold = bool(cmd.hold)
        if cmd.values is None:                  # a gripper-only tick: the arm's chunk is running
            if cmd.send and cmd.gripper is not None and self.gripper_pub is not None:
                self.gripper_pub.publish(convert.float64_array_msg(np.array([cmd.gripper])))
                self.counts["gripper_only_published"] += 1
            return
        if not cmd.send:
            self.counts["dry_run_logged"] += 1
            self.get_logger().info(
                f"dry-run: would send {cmd.interface} {'HOLD ' + ','.join(cmd.reasons) + ' ' if cmd.hold else ''}"
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
            age_ms = (self._now() - cmd.trace_stamp_ns) / 1e6
            # every command: how old the traces it was planned from are (re-plans of a chunk from
            # the same traces included)
            self.command_trace_age_ms.append(age_ms)
            if cmd.trace_stamp_ns != self._last_command_trace_stamp:
                # end-to-end latency of a camera frame: its stamp -> the first command planned from it
                self.camera_to_command_ms.append(age_ms)
                self._last_command_trace_stamp = cmd.trace_stamp_ns

    def _publish_diagnostics(self):
        try:
            with self._lock:
                if self.runner is None or self.diag_pub is None:
                    return
                values = {**{k: str(v) for k, v in self.counts.items()},
                          **{f"runner.{k}": str(v) for k, v in self.runner.counts.items()},
                          **{f"guard.{k}": str(v) for k, v in self.runner.guard.counts.items()},
                          **self.drops.values()}
                if self.runner.act_ms:
                    a = np.asarray(self.runner.act_ms)
                    values.update({"act_ms.p50": f"{np.percentile(a, 50):.2f}", "act_ms.max": f"{a.max():.2f}"})
                for key, samples in (("camera_to_command_ms", self.camera_to_command_ms),
                                     ("command_trace_age_ms", self.command_trace_age_ms)):
                    if samples:
                        lat = np.asarray(samples)
                        values.update({f"{key}.p50": f"{np.percentile(lat, 50):.1f}",
                                       f"{key}.p99": f"{np.percentile(lat, 99):.1f}"})
                values["active"] = str(self._active)
                values["dry_run"] = str(self.runner.guard.dry_run)
                values["estop_latched"] = str(self.runner.guard.estop_latched)
                values["incompatible_qos"] = str(self.qos_events.total())
                estop = self.runner.guard.estop_latched
                faults = sorted(k for k in self.runner.guard.counts if k.startswith("fault_"))
                problems = [k for k in WARN_COUNTERS if self.counts.get(k, 0) or self.runner.counts.get(k, 0)]
                problems += faults
            level = ERROR if estop else (WARN if problems else OK)
            text = "e-stop latched" if estop else (("problems: " + ", ".join(problems)) if problems else "ok")
            status = StatusData(f"action_expert: {self.robot.robot}", self.robot.robot, level, text, values)
            self.diag_pub.publish(diagnostic_array_msg([status], self.get_clock().now().to_msg()))
        except Exception as err:  # noqa: BLE001
            self.counts["callback_errors"] += 1
            self.get_logger().error(f"diagnostics failed: {err}", throttle_duration_sec=5.0)


def _check_config(node: ActionExpertNode) -> int | None:
    if node.configured is False:
        print(f"action_expert: {node.config_error}", file=sys.stderr)
        return 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on SIGINT / SIGTERM (also while starting), 2 on a bad robot config
    (mu0_ros.node_main has the rest)."""
    return spin_node(ActionExpertNode, argv, name="action_expert", start=_check_config,
                     free=ActionExpertNode._free)


if __name__ == "__main__":
    sys.exit(main())
