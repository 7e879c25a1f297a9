"""sim_arm: the simulated Sawyer as a ROS 2 robot + RealSense camera (thin node over mu0_sim).

Publishes (realsense-ros default names):
  /camera/camera/color/image_raw (rgb8), /camera/camera/aligned_depth_to_color/image_raw (16UC1 mm),
  both camera_info topics (sensor-data QoS), /joint_states, /clock, /mu0/sim/ground_truth
  (mu0_msgs/NamedPoints, base_link), /mu0/sim/camera_pose, /mu0/sim/success,
  /mu0/instruction (transient local).
Subscribes, by embodiment:
  sawyer_joint: /joint_trajectory_controller/joint_trajectory (trajectory_msgs/JointTrajectory),
                /forward_position_controller/commands (std_msgs/Float64MultiArray),
                /gripper_controller/commands (std_msgs/Float64MultiArray [closure -1 open .. 1 closed])
  sawyer_ee:    /mu0/sim/ee_delta (std_msgs/Float64MultiArray [dx, dy, dz, gripper])
Service ~/reset (std_srvs/Trigger) starts a new episode (next seed).
TF (where tf2_msgs is importable, i.e. on a ROS install): the arm's links (every body from the
base to the `hand`, each as base_link -> <body>) on /tf with the joint states, so RViz's TF display
shows the arm; with `publish_camera_tf` (default false: in the sim graph mu0_node publishes the
configured camera_to_base, one source of truth) also base_link -> the colour optical frame, on
/tf_static for a fixed camera.

mode:=realtime  physics advances on a wall-clock timer (step period / real_time_factor), holding
                the latest command, like a real arm.
mode:=lockstep  physics advances exactly one step per received command, then publishes — the
                deterministic mode for closed-loop tests with a slow model.
Camera and joint-state rates are in sim time. Run with use_sim_time clients listening to /clock.
"""
from __future__ import annotations

import sys

import rclpy
from rclpy.clock import Clock as SteadyClockSource, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from mu0_msgs.msg import NamedPoints
from mu0_ros.convert import (camera_info_from_intrinsics, depth_to_image, dict_to_named_points,
                             make_header, numpy_to_image)
from mu0_ros import convert
from mu0_ros.node_main import spin_node
from mu0_sim.control import CommandState
from mu0_sim.env import DEFAULT_CAMERA, STEP_PERIOD_NS, SawyerSimEnv
from mu0_sim.record import BASE_FRAME, COLOR_FRAME, TOPICS

try:   # ROS installs; the pip-wheel environment has no tf2_msgs (then no TF is published)
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the install
    TFMessage = None

WARN_THROTTLE_S = 5.0


class SimArmNode(Node):
    def __init__(self, **overrides):
        super().__init__("sim_arm", parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        p = {
            "task": self.declare_parameter("task", "pick-place").value,
            "seed": self.declare_parameter("seed", 0).value,
            "embodiment": self.declare_parameter("embodiment", "sawyer_joint").value,
            "camera": self.declare_parameter("camera", DEFAULT_CAMERA).value,
            "width": self.declare_parameter("width", 320).value,
            "height": self.declare_parameter("height", 240).value,
            "max_steps": self.declare_parameter("max_steps", 100000).value,
            "shadows": self.declare_parameter("shadows", False).value,
        }
        self.mode = self.declare_parameter("mode", "realtime").value
        if self.mode not in ("realtime", "lockstep"):
            raise ValueError(f"parameter 'mode' must be realtime or lockstep, got {self.mode!r}")
        rtf = float(self.declare_parameter("real_time_factor", 1.0).value)
        if not rtf > 0:
            raise ValueError(f"parameter 'real_time_factor' must be > 0, got {rtf}")
        self.env = SawyerSimEnv(p["task"], seed=int(p["seed"]), embodiment=p["embodiment"],
                                camera=p["camera"], width=int(p["width"]), height=int(p["height"]),
                                shadows=bool(p["shadows"]), max_steps=int(p["max_steps"]))
        cam_hz = float(self.declare_parameter("camera_rate_hz", self.env.robot.camera_hz).value)
        js_hz = float(self.declare_parameter("joint_state_rate_hz", self.env.robot.joint_state_hz).value)
        if not (cam_hz > 0 and js_hz > 0):
            raise ValueError("parameters 'camera_rate_hz' and 'joint_state_rate_hz' must be > 0")
        step_s = STEP_PERIOD_NS * 1e-9
        # rates are realised on the sim step grid (12.5 ms): every k-th step
        self.camera_every = max(1, round(1.0 / (cam_hz * step_s)))
        self.joint_state_every = max(1, round(1.0 / (js_hz * step_s)))
        self.dropped = 0

        robot = self.env.robot
        initial = (list(self.env.arm_positions()) + [-1.0]) if p["embodiment"] == "sawyer_joint" else [0.0] * 4
        self.commands = CommandState(p["embodiment"], robot.command_joints, initial, robot.lower, robot.upper)

        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_color = self.create_publisher(Image, TOPICS["color"], qos_profile_sensor_data)
        self.pub_depth = self.create_publisher(Image, TOPICS["depth"], qos_profile_sensor_data)
        self.pub_color_info = self.create_publisher(CameraInfo, TOPICS["color_info"], qos_profile_sensor_data)
        self.pub_depth_info = self.create_publisher(CameraInfo, TOPICS["depth_info"], qos_profile_sensor_data)
        self.pub_joints = self.create_publisher(JointState, TOPICS["joint_states"], 10)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10)
        self.pub_truth = self.create_publisher(NamedPoints, TOPICS["ground_truth"], 10)
        self.pub_pose = self.create_publisher(PoseStamped, TOPICS["camera_pose"], 10)
        self.pub_success = self.create_publisher(Bool, TOPICS["success"], 10)
        self.pub_instruction = self.create_publisher(String, TOPICS["instruction"], latched)
        if p["embodiment"] == "sawyer_joint":
            self.create_subscription(JointTrajectory, robot.command_topics.get(
                "joint_trajectory", TOPICS["joint_trajectory"]), self._on_trajectory, 10)
            self.create_subscription(Float64MultiArray, robot.command_topics.get(
                "forward_position", "/forward_position_controller/commands"), self._on_forward, 10)
            # the gripper's own controller (a real arm's gripper is not a trajectory joint)
            self.create_subscription(Float64MultiArray, robot.command_topics.get(
                "gripper", "/gripper_controller/commands"), self._on_gripper, 10)
        else:
            self.create_subscription(Float64MultiArray, robot.command_topics.get(
                "ee_delta", TOPICS["ee_delta"]), self._on_ee_delta, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._setup_tf(bool(self.declare_parameter("publish_tf", True).value),
                       bool(self.declare_parameter("publish_camera_tf", False).value))
        self._obs = self.env.observe(render=False)
        self._publish(self._obs, camera=True, joints=True)
        self.pub_instruction.publish(convert.string_msg(self.env.instruction))
        if self.mode == "realtime":
            # the sim IS the clock source: its stepping timer runs on the steady wall clock, never
            # on the /clock it publishes itself (with use_sim_time that would either race ahead or stall)
            self.create_timer(step_s / rtf, self._tick, clock=SteadyClockSource(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"sim_arm: {self.env.task} ({p['embodiment']}, {p['camera']} {p['width']}x{p['height']}), "
            f"mode {self.mode}, camera every {self.camera_every} steps, joint_states every "
            f"{self.joint_state_every} steps")

    # -------------------------------------------------------------- commands
    def _drop(self, what: str, exc: Exception) -> None:
        self.dropped += 1
        self.get_logger().warning(f"dropped malformed {what} ({self.dropped} so far): {exc}",
                                  throttle_duration_sec=WARN_THROTTLE_S)

    def _on_trajectory(self, msg) -> None:
        try:
            names, pos, times = convert.joint_trajectory_to_points(msg)
            self.commands.set_joint_trajectory(names, pos, times, self._obs.stamp_ns)
        except Exception as e:  # noqa: BLE001 - one bad message must never stop the robot
            return self._drop("JointTrajectory", e)
        self._after_command()

    def _on_forward(self, msg) -> None:
        try:
            self.commands.set_forward_positions(convert.float64_array_to_numpy(msg))
        except Exception as e:  # noqa: BLE001 - one bad message must never stop the robot
            return self._drop("forward position command", e)
        self._after_command()

    def _on_gripper(self, msg) -> None:
        try:
            self.commands.set_gripper(convert.float64_array_to_numpy(msg))
        except Exception as e:  # noqa: BLE001 - one bad message must never stop the robot
            return self._drop("gripper command", e)

    def _on_ee_delta(self, msg) -> None:
        try:
            self.commands.set_ee_delta(convert.float64_array_to_numpy(msg))
        except Exception as e:  # noqa: BLE001 - one bad message must never stop the robot
            return self._drop("EE delta", e)
        self._after_command()

    def _after_command(self) -> None:
        if self.mode == "lockstep":
            self._tick()

    def _on_reset(self, request, response):
        self.env.seed += 1
        self._obs = self.env.reset(self.env.seed, render=False)
        initial = (list(self.env.arm_positions()) + [-1.0]) if self.env.embodiment == "sawyer_joint" else [0.0] * 4
        self.commands.reset(initial)
        self._publish(self._obs, camera=True, joints=True)
        response.success = True
        response.message = f"reset {self.env.task} with seed {self.env.seed}"
        return response

    # -------------------------------------------------------------- stepping and publishing
    def _tick(self) -> None:
        if self.env.step_count >= self.env.max_steps:
            return
        action = self.commands.action(self._obs.stamp_ns)
        step = self.env.step_count + 1
        self._obs = self.env.step(action, render=False)
        self._publish(self._obs, camera=step % self.camera_every == 0,
                      joints=step % self.joint_state_every == 0)

    def _publish(self, obs, camera: bool, joints: bool) -> None:
        t = obs.stamp_ns
        self.pub_clock.publish(convert.clock_msg(t))
        if joints:
            self.pub_joints.publish(convert.joint_state_msg(t, obs.joint_names, obs.joint_positions,
                                                         obs.joint_velocities))
            self.pub_success.publish(convert.bool_msg(obs.success))
        if (joints or camera) and (self.tf_pub is not None or self.tf_static_pub is not None):
            self._publish_tf(t, camera)
        if camera:
            color, depth = self.env.renderer.render(self.env.data)
            header = make_header(t, COLOR_FRAME)
            info = camera_info_from_intrinsics(self.env.intrinsics, header)
            self.pub_color.publish(numpy_to_image(color, "rgb8", header))
            self.pub_depth.publish(depth_to_image(depth, "16UC1", header))
            self.pub_color_info.publish(info)
            self.pub_depth_info.publish(camera_info_from_intrinsics(self.env.intrinsics, header))
            self.pub_pose.publish(convert.pose_stamped_msg(t, BASE_FRAME, self.env.camera_pose()))
            self.pub_truth.publish(dict_to_named_points(dict(zip(obs.point_names, obs.points)), t, BASE_FRAME))

    # -------------------------------------------------------------- TF
    def _setup_tf(self, links: bool, camera: bool) -> None:
        self.tf_pub = self.tf_static_pub = None
        self._camera_tf_static_sent = False
        self.publish_camera_tf = camera and TFMessage is not None
        if TFMessage is None or not (links or camera):
            return
        model = self.env.model
        self._link_ids = []
        if links:
            body = model.body("hand").id
            while body > 0:                       # hand -> ... -> base, up to (not incl.) the world
                self._link_ids.insert(0, body)
                body = int(model.body_parentid[body])
            self.tf_pub = self.create_publisher(TFMessage, "/tf", 10)
        if self.publish_camera_tf:
            latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", latched)
            if self.tf_pub is None:
                self.tf_pub = self.create_publisher(TFMessage, "/tf", 10)

    def _transform(self, stamp_ns: int, child: str, T):
        from geometry_msgs.msg import TransformStamped

        t = TransformStamped()
        t.header = make_header(stamp_ns, BASE_FRAME)
        t.child_frame_id = child
        t.transform = convert.rigid_to_transform(T)
        return t

    def _publish_tf(self, stamp_ns: int, camera: bool) -> None:
        from mu0_core.camera import RigidTransform

        model, data = self.env.model, self.env.data
        T_base_world = self.env.T_world_base.inverse()
        out = []
        for body in self._link_ids if self.tf_pub is not None else ():
            w, x, y, z = data.xquat[body]
            T = T_base_world @ RigidTransform.from_quat_xyzw([x, y, z, w], data.xpos[body])
            out.append(self._transform(stamp_ns, model.body(body).name, T))
        if camera and self.publish_camera_tf:
            T_cam = self._transform(stamp_ns, COLOR_FRAME, self.env.camera_pose())
            if self.env.camera_motion is not None:
                out.append(T_cam)
            elif not self._camera_tf_static_sent:
                self.tf_static_pub.publish(TFMessage(transforms=[T_cam]))
                self._camera_tf_static_sent = True
        if out:
            self.tf_pub.publish(TFMessage(transforms=out))

    def destroy_node(self):
        self.env.close()
        return super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on SIGINT / SIGTERM (also while starting), 2 on a bad parameter
    (mu0_ros.node_main has the rest; destroy_node closes the sim)."""
    return spin_node(SimArmNode, argv, name="sim_arm")


if __name__ == "__main__":
    sys.exit(main())
