"""Action-expert contract (docs/interfaces.md, "Action experts") and the registry.

An expert turns the latest traces + joint state into a chunk of future commands (one row per
control tick), in the spirit of openpi's `infer` / `reset`. It never talks to ROS and never sees
safety: the node passes every chunk through `mu0_policy.experts.safety.SafetyGuard`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from mu0_policy.experts.robot_config import RobotConfig


@dataclass
class ExpertObservation:
    stamp_ns: int                          # now (the control tick)
    joint_names: list
    joint_positions: np.ndarray            # (J,) in joint_names order
    joint_velocities: np.ndarray | None
    traces_xyz: np.ndarray                 # (N, H+1, 3) in the robot base frame, metres
    validity: np.ndarray                   # (N, H+1) in [0, 1]
    entities: list                         # N strings
    query_ids: np.ndarray                  # (N,)
    trace_stamp_ns: int                    # stamp of the camera frame the traces came from
    step_period: float                     # seconds between trace samples
    instruction: str = ""                  # what the traces were predicted for (TraceArray.instruction)
    gripper_position: float | None = None  # gripper state (robot config `gripper.state_joint`), -1 open .. 1 closed
    trace_model_id: str = ""               # the μ_0 that predicted the traces (TraceArray.model_id)

    def __post_init__(self):
        J = len(self.joint_names)
        if np.shape(self.joint_positions) != (J,):
            raise ValueError(f"ExpertObservation.joint_positions: expected ({J},), got {np.shape(self.joint_positions)}")
        if self.joint_velocities is not None and np.shape(self.joint_velocities) != (J,):
            raise ValueError(f"ExpertObservation.joint_velocities: expected ({J},), got {np.shape(self.joint_velocities)}")
        tr = np.shape(self.traces_xyz)
        if len(tr) != 3 or tr[2] != 3:
            raise ValueError(f"ExpertObservation.traces_xyz: expected (N, H+1, 3), got {tr}")
        if np.shape(self.validity) != tr[:2]:
            raise ValueError(f"ExpertObservation.validity: expected {tr[:2]}, got {np.shape(self.validity)}")
        if len(self.entities) != tr[0]:
            raise ValueError(f"ExpertObservation.entities: expected {tr[0]} labels, got {len(self.entities)}")
        if not self.step_period > 0:
            raise ValueError(f"ExpertObservation.step_period: must be > 0, got {self.step_period}")


@dataclass
class ActionChunk:
    """Commands for the next T control ticks, `dt` seconds apart. Exactly one of:
    - `joint_positions` (T, J): joint targets in the robot config's joint order
      (joint_trajectory / forward_position interfaces);
    - `ee_deltas` (T, 4): end-effector displacement per tick in metres (base frame xyz) + a gripper
      channel in [-1 (open), +1 (closed)] (ee_delta interface).
    """
    joint_positions: np.ndarray | None
    dt: float
    ee_deltas: np.ndarray | None = None
    info: dict = field(default_factory=dict)   # what the expert did (chosen trace, IK error, ...)
    gripper: np.ndarray | None = None          # (T,) gripper closure per tick in [-1, 1] for joint robots
                                               # whose gripper has its own interface (None: leave it)

    def __post_init__(self):
        if (self.joint_positions is None) == (self.ee_deltas is None):
            raise ValueError("ActionChunk: exactly one of joint_positions and ee_deltas must be given")
        if self.joint_positions is not None:
            self.joint_positions = np.asarray(self.joint_positions, dtype=float)
            if self.joint_positions.ndim != 2 or len(self.joint_positions) == 0:
                raise ValueError(f"ActionChunk.joint_positions: expected (T>0, J), got {self.joint_positions.shape}")
        if self.ee_deltas is not None:
            self.ee_deltas = np.asarray(self.ee_deltas, dtype=float)
            if self.ee_deltas.ndim != 2 or self.ee_deltas.shape[1] != 4 or len(self.ee_deltas) == 0:
                raise ValueError(f"ActionChunk.ee_deltas: expected (T>0, 4), got {self.ee_deltas.shape}")
        if not self.dt > 0:
            raise ValueError(f"ActionChunk.dt: must be > 0, got {self.dt}")
        if self.gripper is not None:
            self.gripper = np.asarray(self.gripper, dtype=float).reshape(-1)
            if self.joint_positions is None or len(self.gripper) != len(self.joint_positions):
                raise ValueError("ActionChunk.gripper: one value per joint-position row (joint robots only)")

    @property
    def kind(self) -> str:
        return "joint_positions" if self.joint_positions is not None else "ee_deltas"

    def __len__(self) -> int:
        return len(self.joint_positions if self.joint_positions is not None else self.ee_deltas)


class ActionExpert(ABC):
    """Base class. Subclasses are registered with `@register_expert("name")`."""

    name: str = ""

    def __init__(self, robot: RobotConfig, **params):
        self.robot = robot
        self.params = params

    @abstractmethod
    def act(self, obs: ExpertObservation) -> ActionChunk:
        """The next chunk of commands for this observation."""

    def reset(self) -> None:
        """Forget any episode state (called on e-stop reset and when a new instruction starts)."""


_REGISTRY: dict = {}


def register_expert(name: str):
    """Class decorator: make an ActionExpert subclass constructible by name from a robot config."""
    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, ActionExpert)):
            raise TypeError(f"register_expert({name!r}): {cls!r} is not an ActionExpert subclass")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"register_expert: the name {name!r} is already taken by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def available_experts() -> list:
    return sorted(_REGISTRY)


def make_expert(robot: RobotConfig) -> ActionExpert:
    """Instantiate the expert named in the robot config with its params."""
    from mu0_policy.experts.robot_config import RobotConfigError

    cls = _REGISTRY.get(robot.expert_name)
    if cls is None:
        raise RobotConfigError(f"{robot.path}: field 'expert.name': unknown expert {robot.expert_name!r}; "
                               f"registered: {available_experts()}")
    try:
        return cls(robot, **robot.expert_params)
    except (TypeError, ValueError) as err:
        raise RobotConfigError(f"{robot.path}: field 'expert.params': {err}") from err
