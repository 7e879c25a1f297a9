"""`config/robots/<robot>.yaml`: everything the action expert needs to know about one robot.

`load_robot_config(path)` validates the file and raises `RobotConfigError` naming the file and the
field at fault, so a bad config stops the node at start rather than on the robot. docs/robots.md
documents every field.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import yaml

COMMAND_INTERFACES = ("joint_trajectory", "forward_position", "ee_delta")
KINEMATICS_SOURCES = ("mjcf", "urdf", "none")
DEFAULT_TOPICS = {
    "joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
    "forward_position": "/forward_position_controller/commands",
    "ee_delta": "/mu0/sim/ee_delta",
}


class RobotConfigError(ValueError):
    """A robot config file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class JointSpec:
    names: tuple
    lower: np.ndarray            # (J,) position limits (rad or m)
    upper: np.ndarray
    max_velocity: np.ndarray     # (J,) per second
    max_step_delta: np.ndarray   # (J,) per control tick


@dataclass(frozen=True)
class KinematicsSpec:
    source: str                  # mjcf | urdf | none
    path: str | None = None      # resolved file path (or "metaworld:..." resolved at load)
    base: str | None = None      # base body (mjcf) / base link (urdf)
    tip: str | None = None       # tip site (mjcf) / tip link (urdf)
    tip_offset: tuple | None = None


@dataclass(frozen=True)
class EEDeltaSpec:
    metres_per_unit: float = 0.01      # the sim's action scale (Meta-World: 1 unit = 1 cm per step)
    clip: float = 1.0                  # command units are clipped to [-clip, clip]
    gripper: float = -1.0              # gripper channel while following (-1 open, +1 closed)
    workspace_lower: tuple | None = None   # EE box (base frame, metres): deltas never leave it
    workspace_upper: tuple | None = None


GRIPPER_INTERFACES = ("none", "forward_position", "ee_delta")
GRIPPER_FOLLOW = ("plan", "chunk")


@dataclass(frozen=True)
class GripperSpec:
    """The gripper: commanded through its own controller, never as a trajectory joint."""
    interface: str = "none"            # none | forward_position (Float64MultiArray [closure]) | ee_delta (4th value)
    topic: str | None = None           # forward_position: the gripper controller's command topic
    state_joint: str | None = None     # the /joint_states entry reporting it (closure, -1 open .. 1 closed)
    lower: float = -1.0
    upper: float = 1.0
    max_step_delta: float = 0.5        # per control tick
    close_below_speed: float = 0.0     # m/s; > 0: closing waits until the hand moves slower than this
                                       # (a grasp closes on a settled hand, not one still descending)
    follow: str = "plan"               # plan: each plan's first gripper value, held until the next plan
                                       # (re-predicted closed loop); chunk: the plan's column tick by tick
    grasp_hold_s: float = 0.0          # s; > 0: when a command starts closing the gripper (crosses the
                                       # middle of [lower, upper]), the arm holds its commanded position
                                       # this long while the fingers shut, then the expert re-plans


@dataclass(frozen=True)
class SafetySpec:
    dry_run: bool = True
    trace_timeout_s: float = 1.0
    joint_state_timeout_s: float = 0.5
    max_ee_step_m: float = 0.01        # per control tick, ee_delta interface


@dataclass(frozen=True)
class RobotConfig:
    path: str
    robot: str
    base_frame: str
    joints: JointSpec
    command_interface: str
    command_topic: str
    joint_state_topic: str
    control_rate_hz: float
    chunk_horizon: int
    chunk_execute: int
    expert_name: str
    expert_params: dict
    kinematics: KinematicsSpec
    safety: SafetySpec
    gripper_entity: str = "gripper"
    gripper_depth: str = "image"            # gripper_point.depth: the gripper query's anchor depth from
                                            # the image at its pixel, or from the kinematics ("kinematic")
    camera_to_base: dict | None = None      # {"translation": [3], "quat_xyzw": [4]} or None
    ee_delta: EEDeltaSpec = field(default_factory=EEDeltaSpec)
    description: str = ""
    gripper: GripperSpec = field(default_factory=GripperSpec)
    # robot self filter for query selection: capsule radius (m) around the arm's link skeleton, and
    # fixed capsules [x0, y0, z0, x1, y1, z1, r] (base frame) for parts off the chain (torso, head)
    self_filter_radius: float = 0.07
    self_filter_capsules: list = field(default_factory=list)
    self_filter_mode: str = "projection"     # "projection": every pixel the capsules' silhouette covers;
                                             # "depth": only the pixels whose measured point lies inside
                                             # a capsule (+ self_filter_depth_margin), see tabletop.capsules_mask
    self_filter_depth_margin: float = 0.02
    self_filter_hold_frames: int = 0         # self_filter.hold_occluded_frames: a query the robot's pixels
                                             # cover is held (last pixel, last depth) this many frames
                                             # instead of dropped (QueryTracker.update); 0 = off

    @property
    def control_dt(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def joint_names(self) -> list:
        return list(self.joints.names)

    def camera_to_base_transform(self):
        """RigidTransform T_base_cam from `camera_to_base`, or None."""
        if self.camera_to_base is None:
            return None
        from mu0_core.camera import RigidTransform

        return RigidTransform.from_quat_xyzw(self.camera_to_base["quat_xyzw"], self.camera_to_base["translation"])

    def build_kinematics(self):
        """RobotKinematics for the configured source, or None for source `none`."""
        from mu0_policy.experts.kinematics import (KinematicsError, RobotKinematics, chain_from_mjcf,
                                           chain_from_urdf)

        k = self.kinematics
        try:
            if k.source == "none":
                return None
            if k.source == "mjcf":
                chain = chain_from_mjcf(k.path, k.tip, base_body=k.base or "world",
                                        joint_names=self.joint_names, tip_offset=k.tip_offset)
            else:
                chain = chain_from_urdf(k.path, k.base, k.tip, tip_offset=k.tip_offset)
            return RobotKinematics(chain, self.joint_names)
        except KinematicsError as err:
            raise RobotConfigError(f"{self.path}: kinematics: {err}") from err


# ------------------------------------------------------------------------------------------ parsing
class _Reader:
    def __init__(self, path: str, data: dict, prefix: str = ""):
        self.path, self.data, self.prefix = path, data, prefix

    def fail(self, key: str, msg: str):
        raise RobotConfigError(f"{self.path}: field '{self.prefix}{key}': {msg}")

    def section(self, key: str, required: bool = True) -> "_Reader":
        v = self.data.get(key)
        if v is None:
            if required:
                self.fail(key, "is required")
            v = {}
        if not isinstance(v, dict):
            self.fail(key, f"must be a mapping, got {type(v).__name__}")
        return _Reader(self.path, v, f"{self.prefix}{key}.")

    def get(self, key, kind, default=..., choices=None, positive=False, nonneg=False):
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail(key, "is required")
            return default
        v = self.data[key]
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                self.fail(key, f"must be a finite number, got {v!r}")
            v = float(v)
        elif kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(key, f"must be an integer, got {v!r}")
        elif kind is bool:
            if not isinstance(v, bool):
                self.fail(key, f"must be true or false, got {v!r}")
        elif kind is str:
            if not isinstance(v, str) or not v:
                self.fail(key, f"must be a non-empty string, got {v!r}")
        elif kind is dict:
            if not isinstance(v, dict):
                self.fail(key, f"must be a mapping, got {v!r}")
        elif kind is list:
            if not isinstance(v, list):
                self.fail(key, f"must be a list, got {v!r}")
        if choices is not None and v not in choices:
            self.fail(key, f"must be one of {list(choices)}, got {v!r}")
        if positive and not v > 0:
            self.fail(key, f"must be > 0, got {v!r}")
        if nonneg and not v >= 0:
            self.fail(key, f"must be >= 0, got {v!r}")
        return v

    def vector(self, key, n, default=..., positive=False):
        """A list of n finite numbers (a single number is broadcast to all n)."""
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail(key, "is required")
            return default
        v = self.data[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v] * n
        if not isinstance(v, (list, tuple)) or len(v) != n:
            self.fail(key, f"must be a number or a list of {n} numbers, got {v!r}")
        try:
            arr = np.array([float(x) for x in v], dtype=float)
        except (TypeError, ValueError):
            self.fail(key, f"must contain only numbers, got {v!r}")
        if not np.all(np.isfinite(arr)):
            self.fail(key, f"must be finite, got {v!r}")
        if positive and not np.all(arr > 0):
            self.fail(key, f"must be > 0, got {v!r}")
        return arr


def load_robot_config(path: str) -> RobotConfig:
    """Load and validate a robot config; `RobotConfigError` names the file and the field.

    A config may start with ``extends: OTHER.yaml`` (relative to its own folder): it is then that
    file with this one's sections merged over it, mapping by mapping (a variant that differs in
    one field, e.g. the expert checkpoint, repeats nothing else)."""
    return robot_config_from_dict(_read_with_base(str(path), ()), path)


def _read_mapping(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise RobotConfigError(f"{path}: cannot read robot config: {err}") from err
    except yaml.YAMLError as err:
        raise RobotConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RobotConfigError(f"{path}: the file must hold a mapping at the top level")
    return data


def _read_with_base(path: str, chain: tuple) -> dict:
    data = _read_mapping(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise RobotConfigError(f"{path}: field 'extends': must be the file name of another robot config, got {base!r}")
    base_path = os.path.join(os.path.dirname(path), base)
    if os.path.realpath(base_path) in chain + (os.path.realpath(path),):
        raise RobotConfigError(f"{path}: field 'extends': {base} extends itself (a cycle)")
    return _merged(_read_with_base(base_path, chain + (os.path.realpath(path),)), data)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def robot_config_from_dict(data: dict, path: str = "<dict>") -> RobotConfig:
    r = _Reader(path, data)
    robot = r.get("robot", str)

    jr = r.section("joints")
    names = jr.data.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        jr.fail("names", f"must be a non-empty list of joint names, got {names!r}")
    if len(set(names)) != len(names):
        jr.fail("names", f"has duplicates: {names}")
    n = len(names)
    lower, upper = jr.vector("position_lower", n), jr.vector("position_upper", n)
    if not np.all(lower < upper):
        jr.fail("position_upper", "must be greater than position_lower for every joint")
    joints = JointSpec(tuple(names), lower, upper, jr.vector("max_velocity", n, positive=True),
                       jr.vector("max_step_delta", n, positive=True))

    cr = r.section("command")
    interface = cr.get("interface", str, choices=COMMAND_INTERFACES)
    topic = cr.get("topic", str, DEFAULT_TOPICS[interface])
    if not topic.startswith("/") and not topic.startswith("~"):
        cr.fail("topic", f"must be an absolute topic name (start with '/'), got {topic!r}")
    js_topic = cr.get("joint_state_topic", str, "/joint_states")

    ctl = r.section("control")
    rate = ctl.get("rate_hz", float, positive=True)
    horizon = ctl.get("chunk_horizon", int, positive=True)
    execute = ctl.get("chunk_execute", int, positive=True)
    if execute > horizon:
        ctl.fail("chunk_execute", f"must be <= chunk_horizon ({horizon}), got {execute}")

    er = r.section("expert")
    expert_name = er.get("name", str)
    params = er.get("params", dict, {})

    kr = r.section("kinematics")
    source = kr.get("source", str, choices=KINEMATICS_SOURCES)
    kin = KinematicsSpec(source="none")
    if source != "none":
        raw_path = kr.get("path", str)
        from mu0_policy.experts.kinematics import resolve_model_path

        resolved = resolve_model_path(raw_path, relative_to=path)
        if not os.path.isfile(resolved):
            kr.fail("path", f"file not found: {resolved}")
        base = kr.get("base", str, "world" if source == "mjcf" else ...)
        tip = kr.get("tip", str)
        off = kr.vector("tip_offset", 3, None)
        kin = KinematicsSpec(source, resolved, base, tip, None if off is None else tuple(off))
    elif interface == "ee_delta" or expert_name == "trace_follower":
        kr.fail("source", f"'none' is not possible here: the {expert_name} expert with the {interface} "
                          "interface needs the arm's forward kinematics")

    sr = r.section("safety", required=False)
    safety = SafetySpec(
        dry_run=sr.get("dry_run", bool, True),
        trace_timeout_s=sr.get("trace_timeout_s", float, 1.0, positive=True),
        joint_state_timeout_s=sr.get("joint_state_timeout_s", float, 0.5, positive=True),
        max_ee_step_m=sr.get("max_ee_step_m", float, 0.01, positive=True),
    )

    ee = EEDeltaSpec()
    if interface == "ee_delta":
        dr = r.section("ee_delta", required=False)
        wl, wu = dr.vector("workspace_lower", 3, None), dr.vector("workspace_upper", 3, None)
        if (wl is None) != (wu is None):
            dr.fail("workspace_upper", "workspace_lower and workspace_upper must be given together")
        if wl is not None and not np.all(wl < wu):
            dr.fail("workspace_upper", "must be greater than workspace_lower on every axis")
        ee = EEDeltaSpec(
            metres_per_unit=dr.get("metres_per_unit", float, 0.01, positive=True),
            clip=dr.get("clip", float, 1.0, positive=True),
            gripper=dr.get("gripper", float, -1.0),
            workspace_lower=None if wl is None else tuple(wl),
            workspace_upper=None if wu is None else tuple(wu),
        )

    cam = None
    if data.get("camera_to_base") is not None:
        cb = r.section("camera_to_base")
        t = cb.vector("translation", 3)
        q = cb.vector("quat_xyzw", 4)
        if not np.linalg.norm(q) > 1e-6:
            cb.fail("quat_xyzw", "must have a non-zero norm")
        cam = {"translation": t.tolist(), "quat_xyzw": (q / np.linalg.norm(q)).tolist()}

    grip = GripperSpec()
    if data.get("gripper") is not None:
        g = r.section("gripper")
        giface = g.get("interface", str, choices=GRIPPER_INTERFACES)
        if giface == "ee_delta" and interface != "ee_delta":
            g.fail("interface", f"'ee_delta' (the 4th command value) needs command.interface ee_delta, got {interface!r}")
        if giface == "forward_position" and interface == "ee_delta":
            g.fail("interface", "an ee_delta robot commands its gripper as the 4th value: use 'ee_delta'")
        gtopic = g.get("topic", str, None if giface != "forward_position" else ...)
        if gtopic is not None and not gtopic.startswith("/"):
            g.fail("topic", f"must be an absolute topic name (start with '/'), got {gtopic!r}")
        state_joint = g.get("state_joint", str, None)
        if state_joint is not None and state_joint in names:
            g.fail("state_joint", f"{state_joint!r} is also in joints.names: the gripper is not an arm joint")
        glo, ghi = g.get("lower", float, -1.0), g.get("upper", float, 1.0)
        if not glo < ghi:
            g.fail("upper", f"must be greater than lower ({glo}), got {ghi}")
        grip = GripperSpec(giface, gtopic, state_joint, glo, ghi, g.get("max_step_delta", float, 0.5, positive=True),
                           g.get("close_below_speed", float, 0.0, nonneg=True),
                           g.get("follow", str, "plan", choices=GRIPPER_FOLLOW),
                           g.get("grasp_hold_s", float, 0.0, nonneg=True))
        if grip.grasp_hold_s > 0 and giface != "forward_position":
            g.fail("grasp_hold_s", f"needs gripper.interface forward_position (the arm holds while its own "
                                   f"gripper closes), got {giface!r}")

    gp = r.section("gripper_point", required=False)
    sf = r.section("self_filter", required=False)
    capsules = sf.get("capsules", list, [])
    for i, c in enumerate(capsules):
        if not (isinstance(c, (list, tuple)) and len(c) == 7
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in c)
                and c[6] > 0):
            sf.fail(f"capsules[{i}]", f"must be [x0, y0, z0, x1, y1, z1, radius > 0] (base frame, m), got {c!r}")
    sf_mode = sf.get("mode", str, "projection", choices=("projection", "depth"))
    return RobotConfig(
        path=path, robot=robot, base_frame=r.get("base_frame", str, "base_link"), joints=joints,
        command_interface=interface, command_topic=topic, joint_state_topic=js_topic,
        control_rate_hz=rate, chunk_horizon=horizon, chunk_execute=execute,
        expert_name=expert_name, expert_params=dict(params), kinematics=kin, safety=safety,
        gripper_entity=gp.get("entity", str, "gripper"),
        gripper_depth=gp.get("depth", str, "image", choices=("image", "kinematic")), camera_to_base=cam, ee_delta=ee,
        description=r.get("description", str, ""), gripper=grip,
        self_filter_radius=sf.get("link_radius", float, 0.07, positive=True),
        self_filter_capsules=[[float(x) for x in c] for c in capsules],
        self_filter_mode=sf_mode,
        self_filter_depth_margin=sf.get("depth_margin", float, 0.02, positive=True),
        self_filter_hold_frames=sf.get("hold_occluded_frames", int, 0, nonneg=True),
    )
