"""The safety guard between an action expert and the robot (pure code, no ROS).

Every command the action_expert node could publish passes through `SafetyGuard`:
- dry-run by default: the guard computes exactly what it would send, and `send` is False;
- joint targets are clamped to the position limits, then rate-limited row by row so consecutive
  targets never differ by more than min(max_step_delta, max_velocity * dt);
- the rate limit starts from the command scheduled for "now" (from the last emitted chunk) while
  that stays within `max_tracking_steps` steps of the measured joints, else from the measured joints
  (so a robot that does not follow — dry-run, a stalled arm — is never commanded far ahead of itself);
- hold on stale or missing traces / joint states (timeouts), on non-finite input or output, and on
  an e-stop, which latches until `reset_estop()`;
- a hold is an explicit command to stay put (joint interfaces: the measured position, else the last
  command; ee_delta: a zero displacement), because a trajectory controller would otherwise finish
  executing the previous chunk;
- nothing that leaves the guard is ever NaN or infinite.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

ESTOP = "estop"
NO_TRACES = "no_traces"
STALE_TRACES = "stale_traces"
NO_JOINT_STATES = "no_joint_states"
STALE_JOINT_STATES = "stale_joint_states"
NON_FINITE_JOINT_STATES = "non_finite_joint_states"
NON_FINITE_COMMAND = "non_finite_command"
NO_COMMAND = "no_command"


@dataclass(frozen=True)
class JointLimits:
    names: tuple
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_step_delta: np.ndarray

    def __post_init__(self):
        J = len(self.names)
        for k in ("lower", "upper", "max_velocity", "max_step_delta"):
            v = np.asarray(getattr(self, k), dtype=float)
            if v.shape != (J,) or not np.all(np.isfinite(v)):
                raise ValueError(f"JointLimits.{k}: expected {J} finite values, got {v}")
            object.__setattr__(self, k, v)
        if not np.all(self.lower < self.upper):
            raise ValueError("JointLimits: lower must be < upper for every joint")
        if not (np.all(self.max_velocity > 0) and np.all(self.max_step_delta > 0)):
            raise ValueError("JointLimits: max_velocity and max_step_delta must be > 0")

    @classmethod
    def from_robot(cls, robot) -> "JointLimits":
        j = robot.joints
        return cls(tuple(j.names), j.lower, j.upper, j.max_velocity, j.max_step_delta)


@dataclass(frozen=True)
class GuardSettings:
    dry_run: bool = True
    trace_timeout_s: float = 1.0
    joint_state_timeout_s: float = 0.5
    max_tracking_steps: float = 3.0     # how far (in per-step deltas) a command may lead the robot
    # ee_delta interface
    max_ee_step_m: float = 0.01
    metres_per_unit: float = 0.01
    clip: float = 1.0
    gripper_default: float = -1.0
    workspace_lower: tuple | None = None
    workspace_upper: tuple | None = None

    @classmethod
    def from_robot(cls, robot, **overrides) -> "GuardSettings":
        s, e = robot.safety, robot.ee_delta
        kw = dict(dry_run=s.dry_run, trace_timeout_s=s.trace_timeout_s,
                  joint_state_timeout_s=s.joint_state_timeout_s, max_ee_step_m=s.max_ee_step_m,
                  metres_per_unit=e.metres_per_unit, clip=e.clip, gripper_default=e.gripper,
                  workspace_lower=e.workspace_lower, workspace_upper=e.workspace_upper)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class GuardOutput:
    kind: str                          # "joint_positions" | "ee_deltas"
    values: np.ndarray | None          # (T, J) joint targets or (T, 4) ee command units; None = nothing sendable
    dt: float
    hold: bool
    reasons: tuple = ()
    clamped: int = 0                   # values moved by the position clamp / workspace / unit clip
    rate_limited: int = 0              # values moved by the step / velocity / ee-step limits
    dry_run: bool = True

    @property
    def send(self) -> bool:
        """True when this output should actually go to the robot."""
        return self.values is not None and not self.dry_run


@dataclass
class _Schedule:
    start_ns: int
    rows: np.ndarray
    dt: float

    def at(self, now_ns: int):
        """The row commanded for `now` (the last row once the chunk has run out)."""
        k = int(np.floor((now_ns - self.start_ns) * 1e-9 / self.dt + 1e-6)) - 1
        if k < 0:
            return None
        return self.rows[min(k, len(self.rows) - 1)]


def _command_rows(values, width: int, name: str) -> np.ndarray:
    """An expert's command as (T, width) float rows; a single row may come as (width,)."""
    rows = np.asarray(values, dtype=float)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != width or len(rows) == 0:
        raise ValueError(f"{name}: expected (T, {width}), got {np.shape(values)}")
    return rows


class SafetyGuard:
    def __init__(self, dt: float, settings: GuardSettings | None = None, limits: JointLimits | None = None):
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = float(dt)
        self.settings = settings or GuardSettings()
        self.limits = limits
        self.dry_run = bool(self.settings.dry_run)
        self._estop_reason = None
        self._schedule: _Schedule | None = None
        self._last_joint_command = None
        self._last_gripper = float(self.settings.gripper_default)
        self.counts = Counter()
        if limits is not None:
            self._step = np.minimum(limits.max_step_delta, limits.max_velocity * self.dt)

    @classmethod
    def from_robot(cls, robot, **overrides) -> "SafetyGuard":
        limits = JointLimits.from_robot(robot) if robot.command_interface != "ee_delta" else None
        return cls(robot.control_dt, GuardSettings.from_robot(robot, **overrides), limits)

    # ------------------------------------------------------------------------- e-stop
    @property
    def estop_latched(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self):
        return self._estop_reason

    def latch_estop(self, reason: str = "e-stop") -> None:
        if self._estop_reason is None:
            self.counts["estop_latched"] += 1
        self._estop_reason = reason or "e-stop"

    def reset_estop(self) -> bool:
        """Release the latch; returns whether it was latched. Motion restarts from the measured state."""
        was = self._estop_reason is not None
        self._estop_reason = None
        self._schedule = None
        return was

    # ------------------------------------------------------------------------- input checks
    def _age_reason(self, now_ns, stamp_ns, timeout_s, missing, stale):
        if stamp_ns is None:
            return missing
        age = (now_ns - stamp_ns) * 1e-9
        if age > timeout_s or age < -timeout_s:   # far-future stamps mean a clock problem: stale too
            return stale
        return None

    def input_reasons(self, now_ns: int, joint_stamp_ns, trace_stamp_ns, measured=None,
                      need_joint_states: bool = True) -> list:
        s = self.settings
        reasons = []
        if self.estop_latched:
            reasons.append(ESTOP)
        if need_joint_states:
            r = self._age_reason(now_ns, joint_stamp_ns, s.joint_state_timeout_s, NO_JOINT_STATES, STALE_JOINT_STATES)
            if r:
                reasons.append(r)
            elif measured is None or not np.all(np.isfinite(measured)):
                reasons.append(NON_FINITE_JOINT_STATES if measured is not None else NO_JOINT_STATES)
        r = self._age_reason(now_ns, trace_stamp_ns, s.trace_timeout_s, NO_TRACES, STALE_TRACES)
        if r:
            reasons.append(r)
        return reasons

    # ------------------------------------------------------------------------- joint interfaces
    def _measured_ok(self, measured):
        return measured is not None and np.shape(measured) == (len(self.limits.names),) \
            and np.all(np.isfinite(measured))

    def _joint_hold(self, now_ns, measured, reasons) -> GuardOutput:
        for r in reasons:
            self.counts[f"hold_{r}"] += 1
        if self._measured_ok(measured):
            pos = np.asarray(measured, dtype=float)
        else:
            pos = self._schedule.at(now_ns) if self._schedule is not None else None
            if pos is None:
                pos = self._last_joint_command
        if pos is None:
            return GuardOutput("joint_positions", None, self.dt, True, tuple(reasons), dry_run=self.dry_run)
        # a hold never moves the arm: no clamp to the limits here (the clamp itself would be motion)
        rows = np.asarray(pos, dtype=float)[None, :].copy()
        self._schedule = _Schedule(now_ns - int(self.dt * 1e9), rows, self.dt)
        self._last_joint_command = rows[-1]
        return GuardOutput("joint_positions", rows, self.dt, True, tuple(reasons), dry_run=self.dry_run)

    def joint_command(self, now_ns: int, targets, measured, joint_stamp_ns, trace_stamp_ns) -> GuardOutput:
        """Make joint targets (T, J) safe to send now; `targets=None` means the expert has nothing."""
        if self.limits is None:
            raise ValueError("joint_command: this guard has no joint limits (ee_delta robot)")
        lim = self.limits
        reasons = self.input_reasons(now_ns, joint_stamp_ns, trace_stamp_ns, measured)
        if not reasons and not self._measured_ok(measured):
            reasons.append(NON_FINITE_JOINT_STATES)
        if not reasons:
            if targets is None:
                reasons.append(NO_COMMAND)
            else:
                t = _command_rows(targets, len(lim.names), "targets")
                if not np.all(np.isfinite(t)):
                    reasons.append(NON_FINITE_COMMAND)
        if reasons:
            return self._joint_hold(now_ns, measured, reasons)
        measured = np.asarray(measured, dtype=float)
        ref = self._schedule.at(now_ns) if self._schedule is not None else None
        if ref is None or np.any(np.abs(ref - measured) > self.settings.max_tracking_steps * self._step):
            ref = measured
        clipped = np.clip(t, lim.lower, lim.upper)
        n_clamped = int(np.count_nonzero(clipped != t))
        out = np.empty_like(clipped)
        prev = ref
        n_limited = 0
        for k, row in enumerate(clipped):
            d = row - prev
            dl = np.clip(d, -self._step, self._step)
            n_limited += int(np.count_nonzero(dl != d))
            prev = prev + dl
            out[k] = prev
        self.counts["clamped"] += n_clamped
        self.counts["rate_limited"] += n_limited
        self.counts["dry_run_commands" if self.dry_run else "sent_commands"] += 1
        self._schedule = _Schedule(now_ns, out, self.dt)
        self._last_joint_command = out[-1]
        return GuardOutput("joint_positions", out, self.dt, False, (), n_clamped, n_limited, self.dry_run)

    # ------------------------------------------------------------------------- gripper
    def gripper_command(self, values, lower: float, upper: float, max_step: float) -> np.ndarray | None:
        """A gripper chunk (T,) made safe: non-finite -> the last command; clamped to [lower, upper];
        each value within `max_step` of the previous one. None when there is nothing to send."""
        if values is None:
            return None
        v = np.asarray(values, dtype=float).reshape(-1)
        if len(v) == 0:
            return None
        prev = float(np.clip(self._last_gripper, lower, upper))
        out = np.empty(len(v))
        for k, x in enumerate(v):
            x = prev if not np.isfinite(x) else float(np.clip(x, lower, upper))
            prev = prev + float(np.clip(x - prev, -max_step, max_step))
            out[k] = prev
        return out

    def gripper_sent(self, value: float) -> None:
        """Record the gripper value actually emitted (the next chunk is rate-limited from it)."""
        self._last_gripper = float(value)

    def gripper_hold(self, lower: float, upper: float) -> float:
        """A hold keeps the gripper where it was last commanded (clamped like any command)."""
        return float(np.clip(self._last_gripper, lower, upper))

    # ------------------------------------------------------------------------- ee_delta interface
    def _ee_hold(self, reasons) -> GuardOutput:
        for r in reasons:
            self.counts[f"hold_{r}"] += 1
        rows = np.array([[0.0, 0.0, 0.0, self._last_gripper]])
        return GuardOutput("ee_deltas", rows, self.dt, True, tuple(reasons), dry_run=self.dry_run)

    def ee_command(self, now_ns: int, deltas, ee_position, joint_stamp_ns, trace_stamp_ns) -> GuardOutput:
        """Make end-effector deltas (T, 4: metres xyz + gripper) safe; the output is in command units
        (metres / metres_per_unit, clipped to +-clip; gripper clipped to [-1, 1])."""
        s = self.settings
        reasons = self.input_reasons(now_ns, joint_stamp_ns, trace_stamp_ns, ee_position)
        if not reasons:
            if deltas is None:
                reasons.append(NO_COMMAND)
            else:
                d = _command_rows(deltas, 4, "deltas")
                if not np.all(np.isfinite(d)):
                    reasons.append(NON_FINITE_COMMAND)
        if reasons:
            return self._ee_hold(reasons)
        xyz = d[:, :3].copy()
        n_limited = 0
        norms = np.linalg.norm(xyz, axis=1)
        over = norms > s.max_ee_step_m
        xyz[over] *= (s.max_ee_step_m / norms[over])[:, None]
        n_limited += int(over.sum())
        n_clamped = 0
        if s.workspace_lower is not None:
            lo, hi = np.asarray(s.workspace_lower), np.asarray(s.workspace_upper)
            pos = np.asarray(ee_position, dtype=float)
            for k in range(len(xyz)):
                # the box only stops motion that leaves it; a hand already outside may move back in
                nxt = pos + xyz[k]
                box = np.clip(nxt, np.minimum(lo, pos), np.maximum(hi, pos))
                n_clamped += int(np.count_nonzero(box != nxt))
                xyz[k] = box - pos
                pos = box
        units = xyz / s.metres_per_unit
        cu = np.clip(units, -s.clip, s.clip)
        n_clamped += int(np.count_nonzero(cu != units))
        grip = np.clip(d[:, 3], -1.0, 1.0)
        n_clamped += int(np.count_nonzero(grip != d[:, 3]))
        out = np.hstack([cu, grip[:, None]])
        self._last_gripper = float(out[-1, 3])
        self.counts["clamped"] += n_clamped
        self.counts["rate_limited"] += n_limited
        self.counts["dry_run_commands" if self.dry_run else "sent_commands"] += 1
        return GuardOutput("ee_deltas", out, self.dt, False, (), n_clamped, n_limited, self.dry_run)
