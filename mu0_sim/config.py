"""Sim robot descriptions (config/sim/<embodiment>.yaml): joint names, limits, gains, rates.

Errors name the file and the field, so a bad YAML fails at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mu0_core.resources import share_path

CONFIG_DIR = share_path("config/sim")   # source tree, or share/mu0 when installed
EMBODIMENTS = ("sawyer_ee", "sawyer_joint")


class SimConfigError(ValueError):
    """A sim robot YAML is missing a field or has a bad value (message names file and field)."""


@dataclass(frozen=True)
class JointSpec:
    name: str
    lower: float
    upper: float
    velocity: float
    kp: float = 0.0
    kd: float = 0.0


@dataclass(frozen=True)
class SimRobotConfig:
    path: Path
    robot: str
    embodiment: str
    base_frame: str
    step_period: float
    camera_hz: float
    joint_state_hz: float
    arm_joints: tuple[JointSpec, ...]
    gripper_command_name: str
    gripper_lower: float
    gripper_upper: float
    gripper_joints: tuple[str, ...]
    command_joints: tuple[str, ...]
    command_topics: dict = field(default_factory=dict)
    ik: dict = field(default_factory=dict)

    @property
    def arm_joint_names(self) -> list[str]:
        return [j.name for j in self.arm_joints]

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.lower for j in self.arm_joints])

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.upper for j in self.arm_joints])

    @property
    def velocity_limits(self) -> np.ndarray:
        return np.array([j.velocity for j in self.arm_joints])


def _get(d: dict, key: str, path: Path, where: str = ""):
    if not isinstance(d, dict) or key not in d:
        raise SimConfigError(f"{path}: missing field '{where}{key}'")
    return d[key]


def _num(d: dict, key: str, path: Path, where: str = "", positive: bool = False) -> float:
    v = _get(d, key, path, where)
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise SimConfigError(f"{path}: field '{where}{key}' must be a number, got {v!r}") from None
    if not np.isfinite(v) or (positive and v <= 0):
        raise SimConfigError(f"{path}: field '{where}{key}' must be a finite"
                             f"{' positive' if positive else ''} number, got {v}")
    return v


def load_sim_robot(name_or_path: str | Path) -> SimRobotConfig:
    """Load config/sim/<name>.yaml (or a path to such a file)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SimConfigError(f"{path}: sim robot config not found (known: {list(EMBODIMENTS)})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SimConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SimConfigError(f"{path}: top level must be a mapping")
    embodiment = str(_get(raw, "embodiment", path))
    if embodiment not in EMBODIMENTS:
        raise SimConfigError(f"{path}: field 'embodiment' must be one of {EMBODIMENTS}, got {embodiment!r}")
    rates = _get(raw, "rates", path)
    joints = []
    raw_joints = _get(raw, "arm_joints", path)
    if not isinstance(raw_joints, list) or not raw_joints:
        raise SimConfigError(f"{path}: field 'arm_joints' must be a non-empty list")
    for i, j in enumerate(raw_joints):
        w = f"arm_joints[{i}]."
        spec = JointSpec(str(_get(j, "name", path, w)), _num(j, "lower", path, w),
                         _num(j, "upper", path, w), _num(j, "velocity", path, w, positive=True),
                         float(j.get("kp", 0.0)), float(j.get("kd", 0.0)))
        if spec.lower >= spec.upper:
            raise SimConfigError(f"{path}: field '{w}lower' must be < '{w}upper'")
        if embodiment == "sawyer_joint" and (spec.kp <= 0 or spec.kd < 0):
            raise SimConfigError(f"{path}: field '{w}kp' must be > 0 and '{w}kd' >= 0")
        joints.append(spec)
    grip = _get(raw, "gripper", path)
    command_joints = tuple(str(n) for n in _get(raw, "command_joints", path))
    cfg = SimRobotConfig(
        path=path, robot=str(_get(raw, "robot", path)), embodiment=embodiment,
        base_frame=str(_get(raw, "base_frame", path)),
        step_period=_num(raw, "step_period", path, positive=True),
        camera_hz=_num(rates, "camera_hz", path, "rates.", positive=True),
        joint_state_hz=_num(rates, "joint_state_hz", path, "rates.", positive=True),
        arm_joints=tuple(joints),
        gripper_command_name=str(_get(grip, "command_name", path, "gripper.")),
        gripper_lower=_num(grip, "lower", path, "gripper."),
        gripper_upper=_num(grip, "upper", path, "gripper."),
        gripper_joints=tuple(str(n) for n in _get(grip, "joints", path, "gripper.")),
        command_joints=command_joints,
        command_topics=dict(raw.get("command_topics") or {}),
        ik=dict(raw.get("ik") or {}),
    )
    if embodiment == "sawyer_joint":
        expected = (*cfg.arm_joint_names, cfg.gripper_command_name)
        if command_joints != expected:
            raise SimConfigError(f"{path}: field 'command_joints' must be {list(expected)}, "
                                 f"got {list(command_joints)}")
    elif len(command_joints) != 4:
        raise SimConfigError(f"{path}: field 'command_joints' must have 4 entries (dx, dy, dz, gripper)")
    return cfg
