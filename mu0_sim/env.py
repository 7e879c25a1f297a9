"""Simulated Sawyer arm over Meta-World v3 tasks: RGB-D camera, joint state, ground truth, success.

Two embodiments with different action spaces:
- ``sawyer_ee``: Meta-World's own action, [dx, dy, dz, gripper] in [-1, 1] (0.01 m per unit per
  step through the mocap weld).
- ``sawyer_joint``: [q_right_j0..q_right_j6 (rad), gripper in [-1, 1]] joint position targets, as
  a ros2_control position interface takes them. The mocap weld is switched off; targets are
  rate-limited to the joint velocity limits and tracked by a PD + gravity-compensation joint
  controller inside every physics substep, so the arm moves by MuJoCo's dynamics (contacts,
  inertia, lag) rather than being teleported. The controller's damping, -kd * qd, is joint damping
  that MuJoCo integrates implicitly; the stiffness, the velocity feed-forward kd * qd_ref and
  gravity compensation are applied forces. (Applied explicitly, kd * dt / M reached 3 and 17 on
  the two light wrist joints: the integration diverged — MuJoCo's BADQACC resets — in about one
  push or pick-place episode in five.)

Frames: the robot base frame `base_link` is MuJoCo's world frame (the Sawyer `base` body sits at
the origin with identity orientation). All ground-truth points are in it. No ROS imports.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import mujoco
import numpy as np

from mu0_core.camera import CameraIntrinsics, RigidTransform
from mu0_sim.config import EMBODIMENTS, SimRobotConfig, load_sim_robot
from mu0_sim.render import CameraRenderer

STEP_PERIOD_NS = 12_500_000  # Meta-World frame_skip 5 x 2.5 ms
# Sim clock at reset. Not 0: under use_sim_time a ROS time of 0 means "no clock received yet".
SIM_START_NS = 1_000_000_000
DEFAULT_CAMERA = "corner"
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
# Meta-World holds the hand pointing down with this mocap orientation (wxyz, unnormalised)
_HAND_QUAT_WXYZ = np.array([1.0, 0.0, 1.0, 0.0]) / math.sqrt(2.0)

# What an operator would say for each task (the text the model is conditioned on).
INSTRUCTIONS = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "pick the puck out of the left bin and place it into the right bin",
    "box-close-v3": "grab the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "rotate the faucet clockwise to close it",
    "faucet-open-v3": "rotate the faucet counter-clockwise to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, move it over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back into the cabinet",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "reach to the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "stick-push-v3": "grasp the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "push the window closed",
    "window-open-v3": "push the window open",
}


def task_names() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(ALL_V3_ENVIRONMENTS)


def canonical_task(task: str) -> str:
    """'pick-place', 'pick_place' or 'pick-place-v3' -> 'pick-place-v3' (ValueError if unknown)."""
    name = str(task).strip().replace("_", "-")
    if not re.search(r"-v\d+$", name):
        name = f"{name}-v3"
    known = task_names()
    if name not in known:
        raise ValueError(f"task {task!r} is not a Meta-World v3 task; known: {known}")
    return name


def instruction_for(task: str) -> str:
    name = canonical_task(task)
    return INSTRUCTIONS.get(name, name.removesuffix("-v3").replace("-", " "))


@dataclass(frozen=True)
class CameraMotion:
    """A smooth camera path: the camera orbits a vertical axis through `pivot` (base frame) by
    `amplitude_deg * sin(2 pi t / period_s)`, keeping its view of the pivot (camera-motion tests)."""

    amplitude_deg: float = 12.0
    period_s: float = 4.0
    pivot: tuple = (0.0, 0.6, 0.0)
    height_amplitude_m: float = 0.05

    def __post_init__(self):
        if not np.isfinite(self.amplitude_deg) or abs(self.amplitude_deg) > 90:
            raise ValueError(f"amplitude_deg must be within [-90, 90], got {self.amplitude_deg}")
        if not (np.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be positive, got {self.period_s}")
        if len(self.pivot) != 3:
            raise ValueError(f"pivot must have 3 elements, got {self.pivot}")

    def offset(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(R, dz): world rotation about the pivot's vertical axis and a height offset at time t."""
        phase = 2.0 * math.pi * t / self.period_s
        a = math.radians(self.amplitude_deg) * math.sin(phase)
        c, s = math.cos(a), math.sin(a)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return R, self.height_amplitude_m * (1.0 - math.cos(phase)) / 2.0


@dataclass
class SimObservation:
    step: int                        # env steps since reset
    stamp_ns: int                    # sim clock: SIM_START_NS + step * 12.5 ms
    color: np.ndarray | None         # (H, W, 3) uint8 RGB (None when rendering is off)
    depth: np.ndarray | None         # (H, W) float32 metres, NaN invalid
    intrinsics: CameraIntrinsics
    T_base_cam: RigidTransform       # colour optical frame in base_link
    joint_names: list[str]           # right_j0..right_j6, r_close, l_close, gripper
    joint_positions: np.ndarray      # (J,) rad / m; `gripper` is closure in [-1 open, 1 closed]
    joint_velocities: np.ndarray     # (J,)
    point_names: list[str]           # "gripper", "obj_0", ...
    points: np.ndarray               # (P, 3) ground truth in base_link, metres
    instruction: str
    success: bool
    ee_position: np.ndarray = field(default_factory=lambda: np.zeros(3))  # `hand` body, base_link

    @property
    def gripper_point(self) -> np.ndarray:
        return self.points[0]


class SawyerSimEnv:
    """One Meta-World task on the Sawyer with a camera; `reset(seed)` then `step(action)`."""

    def __init__(self, task: str, seed: int = 0, embodiment: str = "sawyer_ee",
                 camera: str = DEFAULT_CAMERA, width: int = 320, height: int = 240,
                 render: bool = True, shadows: bool = False,
                 camera_motion: CameraMotion | None = None, max_steps: int = 500,
                 robot_config: SimRobotConfig | None = None):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP

        if embodiment not in EMBODIMENTS:
            raise ValueError(f"embodiment must be one of {EMBODIMENTS}, got {embodiment!r}")
        if camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
        if int(max_steps) <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.task = canonical_task(task)
        self.embodiment = embodiment
        self.camera_name = camera
        self.instruction = instruction_for(self.task)
        self.robot = robot_config or load_sim_robot(embodiment)
        self.max_steps = int(max_steps)
        self.seed = int(seed)
        self.mw = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.task}-goal-observable"](seed=self.seed)
        self.mw.max_path_length = max(self.mw.max_path_length, self.max_steps)
        self.model, self.data = self.mw.model, self.mw.data
        self._policy = ENV_POLICY_MAP[self.task]()
        m = self.model

        self.arm_joint_names = self.robot.arm_joint_names
        self.gripper_joint_names = list(self.robot.gripper_joints)
        self.joint_names = [*self.arm_joint_names, *self.gripper_joint_names, "gripper"]
        self._arm_qadr = np.array([m.joint(n).qposadr[0] for n in self.arm_joint_names])
        self._arm_dadr = np.array([m.joint(n).dofadr[0] for n in self.arm_joint_names])
        self._grip_qadr = np.array([m.joint(n).qposadr[0] for n in self.gripper_joint_names])
        self._grip_dadr = np.array([m.joint(n).dofadr[0] for n in self.gripper_joint_names])
        self._grip_range = np.array([m.jnt_range[m.joint(n).id] for n in self.gripper_joint_names])
        self._weld_ids = [i for i in range(m.neq) if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
        self._hand_id = m.body("hand").id
        self._kp = np.array([j.kp for j in self.robot.arm_joints])
        self._kd = np.array([j.kd for j in self.robot.arm_joints])
        if embodiment == "sawyer_joint":
            # the PD's velocity term as joint damping: implicit in MuJoCo's integrator, so stable
            # whatever kd * dt / M on the light wrist joints (see the module docstring)
            m.dof_damping[self._arm_dadr] += self._kd
        self._vmax = self.robot.velocity_limits
        self._q_lower, self._q_upper = self.robot.lower, self.robot.upper
        self._ik_data = mujoco.MjData(m)

        self.renderer = CameraRenderer(m, self.data, camera, width, height, shadows=shadows) if render else None
        self._cam_id = m.camera(camera).id
        self.camera_motion = camera_motion
        if camera_motion is not None and m.cam_bodyid[self._cam_id] != 0:
            raise ValueError(f"camera_motion needs a world-fixed camera; {camera!r} rides on the arm")
        self._cam_pos0 = m.cam_pos[self._cam_id].copy()
        self._cam_quat0 = m.cam_quat[self._cam_id].copy()
        self.T_world_base = RigidTransform.identity()
        self.step_count = 0
        self.success = False
        self.ever_succeeded = False
        self._mw_obs = None
        self._last_action = None
        self.reset(self.seed)

    # ------------------------------------------------------------------ geometry
    @property
    def width(self) -> int:
        return self.renderer.width if self.renderer else 0

    @property
    def height(self) -> int:
        return self.renderer.height if self.renderer else 0

    @property
    def intrinsics(self) -> CameraIntrinsics:
        if self.renderer is None:
            raise RuntimeError("rendering is off for this env (render=False)")
        return self.renderer.intrinsics

    def camera_pose(self) -> RigidTransform:
        """T_base_cam of the colour optical frame now."""
        if self.renderer is None:
            raise RuntimeError("rendering is off for this env (render=False)")
        return self.T_world_base.inverse() @ self.renderer.camera_pose(self.data)

    def _apply_camera_motion(self) -> None:
        if self.camera_motion is None:
            return
        R, dz = self.camera_motion.offset(self.step_count * STEP_PERIOD_NS * 1e-9)
        pivot = np.asarray(self.camera_motion.pivot, float)
        self.model.cam_pos[self._cam_id] = pivot + R @ (self._cam_pos0 - pivot) + [0.0, 0.0, dz]
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, R.reshape(-1))
        out = np.empty(4)
        mujoco.mju_mulQuat(out, q, self._cam_quat0)
        self.model.cam_quat[self._cam_id] = out
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)

    # ------------------------------------------------------------------ state
    def ground_truth(self) -> tuple[list[str], np.ndarray]:
        objs = np.asarray(self.mw._get_pos_objects(), float).reshape(-1, 3)
        pts = np.vstack([np.asarray(self.mw.tcp_center, float)[None], objs])
        names = ["gripper", *[f"obj_{i}" for i in range(len(objs))]]
        return names, self.T_world_base.inverse().apply(pts)

    def visible_goal(self) -> np.ndarray | None:
        """The task's goal (base frame) when the scene shows it (a `goal` site drawn in the image:
        reach / push / pick-place / drawer / door / window), else None (button-press has none)."""
        try:
            site = self.model.site("goal")
        except KeyError:
            return None
        if site.rgba[3] <= 0:
            return None
        return self.T_world_base.inverse().apply(np.asarray(self.mw._target_pos, float).reshape(1, 3))[0]

    def gripper_closure(self) -> float:
        """Finger closure mapped to the gripper command range: -1 open, +1 closed."""
        q = self.data.qpos[self._grip_qadr]
        span = self._grip_range[0, 1] - self._grip_range[1, 0]  # r_close max - l_close min
        c = (q[0] - q[1]) / span
        return float(np.clip(2.0 * c - 1.0, -1.0, 1.0))

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        pos = np.concatenate([d.qpos[self._arm_qadr], d.qpos[self._grip_qadr], [self.gripper_closure()]])
        vel = np.concatenate([d.qvel[self._arm_dadr], d.qvel[self._grip_dadr], [0.0]])
        return pos.astype(float), vel.astype(float)

    def arm_positions(self) -> np.ndarray:
        return self.data.qpos[self._arm_qadr].copy()

    def observe(self, render: bool = True) -> SimObservation:
        color = depth = None
        if render and self.renderer is not None:
            color, depth = self.renderer.render(self.data)
        names, pts = self.ground_truth()
        pos, vel = self.joint_state()
        return SimObservation(
            step=self.step_count, stamp_ns=SIM_START_NS + self.step_count * STEP_PERIOD_NS,
            color=color, depth=depth,
            intrinsics=self.renderer.intrinsics if self.renderer else None,
            T_base_cam=self.camera_pose() if self.renderer else None,
            joint_names=list(self.joint_names), joint_positions=pos, joint_velocities=vel,
            point_names=names, points=pts, instruction=self.instruction, success=self.success,
            ee_position=self.data.body("hand").xpos.copy())

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, render: bool = True) -> SimObservation:
        mw = self.mw
        for i in self._weld_ids:   # Meta-World's reset homes the hand through the mocap weld
            self.data.eq_active[i] = 1
        if seed is not None:
            self.seed = int(seed)
            state = np.random.get_state()
            np.random.seed(self.seed)
            mw.seed(self.seed)
            mw._freeze_rand_vec = False
            self._mw_obs, _ = mw.reset()
            mw._freeze_rand_vec = True
            np.random.set_state(state)
        else:
            self._mw_obs, _ = mw.reset()
        self.step_count = 0
        self.success = self.ever_succeeded = False
        self._last_action = None
        self.data.qfrc_applied[:] = 0.0
        q = self.arm_positions()
        self._q_target = q.copy()
        self._q_setpoint = q.copy()
        self._q_home = q.copy()
        self._ik_seed = q.copy()
        self._ee_target = self.data.body("hand").xpos.copy()
        self._gripper_cmd = None   # the scripted expert's last gripper command (None: none yet)
        self._last_expert_action = None
        if self.embodiment == "sawyer_joint":
            for i in self._weld_ids:
                self.data.eq_active[i] = 0
            mujoco.mj_forward(self.model, self.data)
        if self.camera_motion is not None:
            self._apply_camera_motion()
        return self.observe(render)

    @property
    def action_size(self) -> int:
        return 4 if self.embodiment == "sawyer_ee" else len(self.arm_joint_names) + 1

    def step(self, action, render: bool = True) -> SimObservation:
        a = np.asarray(action, dtype=float).reshape(-1)
        if a.shape != (self.action_size,):
            raise ValueError(f"action must have {self.action_size} values for {self.embodiment}, "
                             f"got shape {np.asarray(action).shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a}")
        if self.step_count >= self.max_steps:
            raise ValueError(f"episode is over ({self.max_steps} steps); call reset()")
        if self.embodiment == "sawyer_ee":
            a = np.clip(a, -1.0, 1.0)
            self._mw_obs, _, _, _, info = self.mw.step(a.astype(np.float32))
        else:
            info = self._step_joint(a)
        self._last_action = a
        self.step_count += 1
        self.success = bool(info.get("success", 0.0))
        self.ever_succeeded |= self.success
        self._apply_camera_motion()
        return self.observe(render)

    def _step_joint(self, a: np.ndarray) -> dict:
        m, d, mw = self.model, self.data, self.mw
        self._q_target = np.clip(a[:-1], self._q_lower, self._q_upper)
        grip = float(np.clip(a[-1], -1.0, 1.0))
        dt = m.opt.timestep
        for _ in range(mw.frame_skip):
            # a position controller moves its setpoint no faster than the velocity limits
            step = np.clip(self._q_target - self._q_setpoint, -self._vmax * dt, self._vmax * dt)
            self._q_setpoint = self._q_setpoint + step
            qd_ref = step / dt
            q = d.qpos[self._arm_qadr]
            # -kd * qd is in dof_damping (implicit); the rest of kp * e + kd * (qd_ref - qd) here
            tau = self._kp * (self._q_setpoint - q) + self._kd * qd_ref + d.qfrc_bias[self._arm_dadr]
            d.qfrc_applied[self._arm_dadr] = tau
            d.ctrl[:] = [grip, -grip]
            mujoco.mj_step(m, d)
        mw.curr_path_length += 1
        for site in mw._target_site_config:
            mw._set_pos_site(*site)
        mujoco.mj_forward(m, d)
        obs = np.clip(mw._get_obs(), mw.sawyer_observation_space.low, mw.sawyer_observation_space.high)
        self._mw_obs = obs
        _, info = mw.evaluate_state(obs, np.array([0.0, 0.0, 0.0, grip], np.float32))
        return info

    # ------------------------------------------------------------------ scripted expert
    def expert_action(self) -> np.ndarray:
        """The Meta-World scripted expert's next action in this embodiment's action space.

        For `sawyer_joint`, the expert's end-effector target (integrated exactly as Meta-World
        integrates the mocap) is turned into joint targets by damped-least-squares IK."""
        a = np.clip(np.asarray(self._policy.get_action(self._mw_obs), float), -1.0, 1.0)
        if self.embodiment == "sawyer_ee":
            return a
        target = np.clip(self._ee_target + a[:3] * self.mw.action_scale,
                         self.mw.mocap_low, self.mw.mocap_high)
        # anti-windup: the target may lead the hand by a few cm (as the soft mocap weld lets it),
        # but must not run away when the arm cannot follow (joint limits, contact)
        hand = self.data.body("hand").xpos
        lead = target - hand
        dist = np.linalg.norm(lead)
        max_lead = float(self.robot.ik.get("max_lead_m", 0.05))
        self._ee_target = hand + lead * (max_lead / dist) if dist > max_lead else target
        q = self.solve_ik(self._ee_target, seed_q=self._ik_seed)
        self._ik_seed = q
        grip = float(a[3])
        # Meta-World's policies start closing the fingers while the hand is still descending: the
        # mocap hand gets there first, but the joint arm lags its target, so the fingers shut above
        # the object and rest on it. The gripper closes only once the hand has caught up with its
        # target (then stays closed while the policy asks); opening, and a policy that closes from
        # the first step (a closed fist pushing a door or a window), pass at once.
        settle = float(self.robot.ik.get("close_when_within_m", 0.0))
        lag = float(np.linalg.norm(self._ee_target - hand))
        if settle > 0.0 and grip > 0.0 and self._gripper_cmd is not None and self._gripper_cmd <= 0.0 \
                and lag > settle:
            grip = self._gripper_cmd
        self._gripper_cmd = grip
        out = np.concatenate([q, [grip]])
        self._last_expert_action = out
        return out

    def perturbed_action(self, action: np.ndarray, offset_m) -> np.ndarray:
        """`action` (the scripted expert's, just returned by expert_action) with the hand's target
        moved by `offset_m` (base frame, m): what a noise-injected demonstration executes while
        recording the clean action as its label. sawyer_ee: the offset as mocap units per step;
        sawyer_joint: IK of the shifted target from the expert's own joints."""
        a = np.asarray(action, float).copy()
        off = np.asarray(offset_m, float).reshape(3)
        if self.embodiment == "sawyer_ee":
            a[:3] = np.clip(a[:3] + off / self.mw.action_scale, -1.0, 1.0)
            return a
        a[:-1] = self.solve_ik(self._ee_target + off, seed_q=a[:-1])
        return a

    def solve_ik(self, target_pos, target_quat_wxyz=_HAND_QUAT_WXYZ, seed_q=None,
                 iterations: int | None = None) -> np.ndarray:
        """Arm joint positions placing the `hand` body at target_pos with target orientation."""
        m, d = self.model, self._ik_data
        ik = self.robot.ik
        lam = float(ik.get("damping", 0.05))
        iters = int(iterations or ik.get("iterations", 4))
        k_null = float(ik.get("nullspace_gain", 0.0))
        lock_limits = bool(ik.get("lock_joints_at_limits", False))
        q = np.array(self.arm_positions() if seed_q is None else seed_q, float)
        d.qpos[:] = self.data.qpos
        target_R = np.empty(9)
        mujoco.mju_quat2Mat(target_R, np.asarray(target_quat_wxyz, float))
        target_R = target_R.reshape(3, 3)
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        cols = self._arm_dadr
        free = np.ones(len(q), bool)   # joints pinned at a limit leave the Jacobian
        for _ in range(iters):
            d.qpos[self._arm_qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_p = np.asarray(target_pos, float) - d.xpos[self._hand_id]
            R = d.xmat[self._hand_id].reshape(3, 3)
            R_err = target_R @ R.T
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, R_err.reshape(-1))
            err_r = np.empty(3)
            mujoco.mju_quat2Vel(err_r, quat, 1.0)
            mujoco.mj_jacBody(m, d, jacp, jacr, self._hand_id)
            J = np.vstack([jacp[:, cols], 0.5 * jacr[:, cols]]) * free
            e = np.concatenate([err_p, 0.5 * err_r])
            JJt = J @ J.T + (lam ** 2) * np.eye(6)
            dq = J.T @ np.linalg.solve(JJt, e)
            # redundancy: drift back toward the home posture inside the task null space
            N = np.eye(len(q)) - J.T @ np.linalg.solve(JJt, J)
            dq += N @ (k_null * (self._q_home - q)) * free
            q_new = q + dq
            # a joint that would cross its limit is pinned there; the others take over its share
            if lock_limits:
                free &= (q_new > self._q_lower) & (q_new < self._q_upper)
            q = np.clip(q_new, self._q_lower, self._q_upper)
        return q

    # ------------------------------------------------------------------ oracle futures
    _SNAPSHOT_ATTRS = ("step_count", "success", "ever_succeeded", "_q_target", "_q_setpoint", "_ik_seed",
                       "_ee_target", "_gripper_cmd", "_last_action", "_last_expert_action", "_mw_obs")

    def snapshot(self) -> dict:
        """Everything `step` changes (physics state + controller and episode bookkeeping)."""
        d = self.data
        snap = {k: np.array(getattr(d, k), copy=True) for k in
                ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat", "qacc_warmstart", "qfrc_applied")}
        snap["time"] = float(d.time)
        snap["curr_path_length"] = self.mw.curr_path_length
        for k in self._SNAPSHOT_ATTRS:
            v = getattr(self, k, None)
            snap["attr:" + k] = v.copy() if isinstance(v, np.ndarray) else v
        return snap

    def restore(self, snap: dict) -> None:
        d = self.data
        for k in ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat", "qacc_warmstart", "qfrc_applied"):
            getattr(d, k)[...] = snap[k]
        d.time = snap["time"]
        self.mw.curr_path_length = snap["curr_path_length"]
        for k in self._SNAPSHOT_ATTRS:
            setattr(self, k, snap["attr:" + k])
        mujoco.mj_forward(self.model, d)

    def _anchor_scripted_state(self) -> None:
        """Re-anchor the scripted joint controller on the arm as it is, when something other than
        the scripted expert drove the last step (a learned expert under evaluation). Its IK target,
        IK seed and gripper command are otherwise those of the last scripted step (the reset pose):
        the oracle's rollout then first pulled the hand back toward that stale target, and the
        ground-truth traces an evaluated joint expert got described the wrong motion."""
        if self.embodiment != "sawyer_joint" or self._last_action is None:
            return
        if np.array_equal(self._last_action, self._last_expert_action):   # False while it is None
            return
        self._ee_target = self.data.body("hand").xpos.copy()
        self._ik_seed = self.arm_positions().copy()
        self._gripper_cmd = float(self._last_action[-1])

    def oracle_future(self, horizon: int) -> tuple[list[str], np.ndarray]:
        """Ground-truth points over the next `horizon` steps if the scripted expert acted from
        here: (names, (K, horizon + 1, 3) base frame), the goal last (entity `goal`, still) where
        the scene shows it: μ_0's queries find the drawn goal marker, so the oracle, the upper bound
        of what traces can tell an expert, must not hide it. The env is left exactly as it was."""
        snap = self.snapshot()
        names, now = self.ground_truth()
        goal = self.visible_goal()
        out = [now]
        try:
            self._anchor_scripted_state()
            for _ in range(int(horizon)):
                if self.step_count >= self.max_steps:
                    out.append(out[-1])
                    continue
                self.step(self.expert_action(), render=False)
                out.append(self.ground_truth()[1])
        finally:
            self.restore(snap)
        future = np.transpose(np.stack(out), (1, 0, 2))
        if goal is not None:
            names = [*names, "goal"]
            future = np.concatenate([future, np.broadcast_to(goal, (1, future.shape[1], 3))], axis=0)
        return names, future

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.mw.close()
