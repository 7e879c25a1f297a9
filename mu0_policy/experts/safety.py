"""The safety guard between an action expert and the robot (pure code, no ROS).

Every command the action_expert node could publish passes through `SafetyGuard`, and the guard is
the ONE place where the invariants are enforced (test/test_robustness_guard.py proves them with
hypothesis for any joint state, expert output and clock):

  every joint command leaving the guard is finite, inside the position limits, and within
  min(max_step_delta, max_velocity * dt) per tick of the previously COMMANDED target (never of
  the measured one) — holds included.

- dry-run by default: the guard computes exactly what it would send, and `send` is False;
- "previously commanded": for a streaming interface (forward_position: one row per tick) the last
  row the guard returned; for a trajectory interface the row of the last guarded chunk scheduled
  for "now". The first row of a new chunk is also kept within `max_tracking_steps` steps of the
  measured joints (a robot that does not follow — dry-run, a stalled arm — is never commanded far
  ahead of itself); when the two windows do not meet, the command walks toward the robot at the
  step limit;
- a measured joint state is checked before it is used: non-finite, outside the limits by more than
  `limit_tolerance`, or moved faster than physically possible (max_velocity * dt * `jump_margin` +
  tolerance since the last accepted sample) is a FAULT: a hold at the last safe command, counted
  under `fault_<reason>` and reported in `reasons`;
- hold on stale or missing traces / joint states (timeouts on the ROS clock AND, when the caller
  passes `wall_ns`, on a steady wall clock), on a ROS clock that went backwards or stopped while
  the wall clock ran (`clock_timeout_s`), on an expert without a command or with a non-finite one,
  and on an e-stop, which latches until `reset_estop()`;
- a hold is an explicit command to stay put, because a trajectory controller would otherwise finish
  executing the previous chunk: the last command, walking toward a trusted fresh measured position
  at the step limit; with no command yet, the (clamped) measured position; ee_delta: a zero
  displacement. Holds are clamped and rate-limited like any other command;
- the gripper of a joint robot (its own interface) obeys the same rules: `gripper_emit` makes every
  emitted value finite, within [lower, upper] and within max_step of the last emitted value;
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
JOINT_STATE_OUT_OF_LIMITS = "joint_state_out_of_limits"
JOINT_STATE_JUMP = "joint_state_jump"
CLOCK_REWOUND = "clock_rewound"
CLOCK_FROZEN = "clock_frozen"
# reasons that mean the measured joint state cannot be trusted (a fault, not just a pause)
MEASURED_FAULTS = (NON_FINITE_JOINT_STATES, JOINT_STATE_OUT_OF_LIMITS, JOINT_STATE_JUMP)


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
    limit_tolerance: float = 0.05       # a measured joint this far beyond a limit is a fault (rad or m)
    jump_margin: float = 1.5            # measured motion above max_velocity * dt * margin is a fault
    clock_timeout_s: float = 0.25       # ROS clock not advancing for this long (wall) -> hold
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
        """The row commanded for `now` (the last row once the chunk has run out); None before it starts."""
        if now_ns < self.start_ns:
            return None
        k = int(np.floor((now_ns - self.start_ns) * 1e-9 / self.dt + 1e-6)) - 1
        return self.rows[min(max(k, 0), len(self.rows) - 1)]


def _command_rows(values, width: int, name: str) -> np.ndarray:
    """An expert's command as (T, width) float rows; a single row may come as (width,)."""
    try:
        rows = np.asarray(values, dtype=float)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{name}: not numeric ({err})") from None
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != width or len(rows) == 0:
        raise ValueError(f"{name}: expected (T, {width}), got {np.shape(values)}")
    return rows


class SafetyGuard:
    def __init__(self, dt: float, settings: GuardSettings | None = None, limits: JointLimits | None = None,
                 streaming: bool = False):
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = float(dt)
        self.settings = settings or GuardSettings()
        self.limits = limits
        self.streaming = bool(streaming)   # one row per tick (forward_position) vs whole trajectories
        self.dry_run = bool(self.settings.dry_run)
        self._estop_reason = None
        self._schedule: _Schedule | None = None   # trajectory interfaces: the last guarded chunk
        self._last_joint_command = None           # the last joint row commanded (streaming: emitted)
        self._last_gripper = float(self.settings.gripper_default)
        self._gripper_emitted = False
        self._accepted = None                     # (stamp_ns, q) last measured sample that passed the checks
        self._clock_ns = None                     # last ROS time seen
        self._clock_wall_ns = None                # wall time when the ROS time last advanced
        self.counts = Counter()
        if limits is not None:
            self._step = np.minimum(limits.max_step_delta, limits.max_velocity * self.dt)

    @classmethod
    def from_robot(cls, robot, **overrides) -> "SafetyGuard":
        limits = JointLimits.from_robot(robot) if robot.command_interface != "ee_delta" else None
        return cls(robot.control_dt, GuardSettings.from_robot(robot, **overrides), limits,
                   streaming=robot.command_interface == "forward_position")

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
        """Release the latch; returns whether it was latched. Motion restarts from the last command
        (the hold), which is within the step limit of the robot by construction."""
        was = self._estop_reason is not None
        self._estop_reason = None
        return was

    def forget_commands(self) -> None:
        """Forget the command history (a new command stream starts from the measured joints)."""
        self._schedule = None
        self._last_joint_command = None

    # ------------------------------------------------------------------------- input checks
    def _age_reason(self, now_ns, stamp_ns, timeout_s, missing, stale, wall_ns=None, arrival_wall_ns=None):
        if stamp_ns is None:
            return missing
        age = (now_ns - stamp_ns) * 1e-9
        if age > timeout_s or age < -timeout_s:   # far-future stamps mean a clock problem: stale too
            return stale
        if wall_ns is not None and arrival_wall_ns is not None and (wall_ns - arrival_wall_ns) * 1e-9 > timeout_s:
            return stale                          # nothing new for that long on the steady clock
        return None

    def _clock_reason(self, now_ns, wall_ns):
        """CLOCK_REWOUND when ROS time went backwards, CLOCK_FROZEN when it stood still while the wall
        clock ran for `clock_timeout_s`. A rewound clock is accepted as the new timeline after this hold."""
        last = self._clock_ns
        if last is None or now_ns > last:
            self._clock_ns, self._clock_wall_ns = now_ns, wall_ns
            return None
        if now_ns < last:
            self._clock_ns, self._clock_wall_ns = now_ns, wall_ns
            self.counts["clock_rewinds"] += 1
            if self._schedule is not None:   # re-base the plan on the new timeline (at the current row)
                row = self._prev_row(last)
                self._schedule = None if row is None else _Schedule(now_ns - int(self.dt * 1e9), row[None], self.dt)
            return CLOCK_REWOUND
        if wall_ns is not None and self._clock_wall_ns is not None \
                and (wall_ns - self._clock_wall_ns) * 1e-9 > self.settings.clock_timeout_s:
            return CLOCK_FROZEN
        if self._clock_wall_ns is None:
            self._clock_wall_ns = wall_ns
        return None

    def measured_fault(self, measured, stamp_ns=None):
        """Why a measured joint state cannot be trusted (one of MEASURED_FAULTS), or None.

        Accepted samples become the reference of the jump check; a rejected one does not, so a glitch
        that goes away is accepted again and a real (slow enough) motion is accepted once enough time
        has passed. Idempotent for the same sample."""
        if measured is None:
            return None
        lim = self.limits
        try:
            q = np.asarray(measured, dtype=float).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            return NON_FINITE_JOINT_STATES
        if lim is None:
            return None if np.all(np.isfinite(q)) else NON_FINITE_JOINT_STATES
        if q.shape != (len(lim.names),) or not np.all(np.isfinite(q)):
            return NON_FINITE_JOINT_STATES
        tol = self.settings.limit_tolerance
        if np.any(q < lim.lower - tol) or np.any(q > lim.upper + tol):
            return JOINT_STATE_OUT_OF_LIMITS
        if self._accepted is not None:
            stamp0, q0 = self._accepted
            span = self.dt
            if stamp_ns is not None and stamp0 is not None:
                span = max(span, (int(stamp_ns) - int(stamp0)) * 1e-9)
            allowed = lim.max_velocity * span * self.settings.jump_margin + tol
            if np.any(np.abs(q - q0) > allowed):
                return JOINT_STATE_JUMP
        self._accepted = (None if stamp_ns is None else int(stamp_ns), q.copy())
        return None

    def input_reasons(self, now_ns: int, joint_stamp_ns, trace_stamp_ns, measured=None,
                      need_joint_states: bool = True, wall_ns=None, joint_wall_ns=None, trace_wall_ns=None) -> list:
        """Everything that forces a hold now (empty: inputs are usable). `wall_ns` (a steady clock,
        time.monotonic_ns) with the wall arrival times of the inputs adds the steady-clock checks."""
        s = self.settings
        reasons = []
        if self.estop_latched:
            reasons.append(ESTOP)
        r = self._clock_reason(int(now_ns), wall_ns)
        if r:
            reasons.append(r)
        if need_joint_states:
            r = self._age_reason(now_ns, joint_stamp_ns, s.joint_state_timeout_s, NO_JOINT_STATES,
                                 STALE_JOINT_STATES, wall_ns, joint_wall_ns)
            if r:
                reasons.append(r)
            elif measured is None:
                reasons.append(NO_JOINT_STATES)
            else:
                r = self.measured_fault(measured, joint_stamp_ns)
                if r:
                    reasons.append(r)
        r = self._age_reason(now_ns, trace_stamp_ns, s.trace_timeout_s, NO_TRACES, STALE_TRACES,
                             wall_ns, trace_wall_ns)
        if r:
            reasons.append(r)
        return reasons

    # ------------------------------------------------------------------------- joint interfaces
    def _prev_row(self, now_ns):
        """The previously commanded target for `now` (None before any command)."""
        if not self.streaming and self._schedule is not None:
            row = self._schedule.at(now_ns)
            if row is not None:
                return row
        return self._last_joint_command

    def commanded_row(self, now_ns: int):
        """The joint targets commanded for `now` (a copy; None before any command)."""
        row = self._prev_row(int(now_ns))
        return None if row is None else np.array(row, dtype=float)

    def _limit_row(self, prev, goal):
        """One step from `prev` toward `goal`: within the step limit, inside the position limits."""
        lim = self.limits
        goal = np.clip(goal, lim.lower, lim.upper)
        return np.clip(prev + np.clip(goal - prev, -self._step, self._step), lim.lower, lim.upper)

    def _record(self, now_ns, rows):
        if self.streaming:
            self._last_joint_command = rows[0].copy()
            self._schedule = None
        else:
            self._schedule = _Schedule(now_ns, rows, self.dt)
            self._last_joint_command = rows[0].copy()

    def _joint_hold(self, now_ns, measured, reasons) -> GuardOutput:
        for r in reasons:
            self.counts[f"hold_{r}"] += 1
            if r in MEASURED_FAULTS or r in (CLOCK_REWOUND, CLOCK_FROZEN):
                self.counts[f"fault_{r}"] += 1
        lim = self.limits
        trusted = None   # a measured position we may walk toward
        if measured is not None and not any(r in MEASURED_FAULTS for r in reasons):
            try:
                q = np.asarray(measured, dtype=float).reshape(-1)
            except (TypeError, ValueError, OverflowError):
                q = None
            tol = self.settings.limit_tolerance
            if q is not None and q.shape == (len(lim.names),) and np.all(np.isfinite(q)) \
                    and np.all(q >= lim.lower - tol) and np.all(q <= lim.upper + tol):
                trusted = q
        prev = self._prev_row(now_ns)
        if prev is None:
            if trusted is None:
                return GuardOutput("joint_positions", None, self.dt, True, tuple(reasons), dry_run=self.dry_run)
            row = np.clip(trusted, lim.lower, lim.upper)
        else:
            fresh = not any(r in (STALE_JOINT_STATES, NO_JOINT_STATES) for r in reasons)
            row = self._limit_row(prev, trusted if (trusted is not None and fresh) else prev)
        rows = np.asarray(row, dtype=float)[None, :].copy()
        if self.streaming:
            self._last_joint_command = rows[0].copy()
        else:   # the hold is the command for now; it stays the reference until the next command
            self._schedule = _Schedule(now_ns - int(self.dt * 1e9), rows, self.dt)
            self._last_joint_command = rows[0].copy()
        return GuardOutput("joint_positions", rows, self.dt, True, tuple(reasons), dry_run=self.dry_run)

    def hold(self, now_ns: int, measured, reasons) -> GuardOutput:
        """An explicit hold for `reasons` (found by `input_reasons`), for either interface."""
        if self.limits is None:
            return self._ee_hold(list(reasons))
        return self._joint_hold(int(now_ns), measured, list(reasons))

    def joint_command(self, now_ns: int, targets, measured, joint_stamp_ns, trace_stamp_ns, wall_ns=None,
                      joint_wall_ns=None, trace_wall_ns=None) -> GuardOutput:
        """Make joint targets (T, J) safe to send now; `targets=None` means the expert has nothing."""
        if self.limits is None:
            raise ValueError("joint_command: this guard has no joint limits (ee_delta robot)")
        lim = self.limits
        now_ns = int(now_ns)
        reasons = self.input_reasons(now_ns, joint_stamp_ns, trace_stamp_ns, measured, wall_ns=wall_ns,
                                     joint_wall_ns=joint_wall_ns, trace_wall_ns=trace_wall_ns)
        if not reasons:
            if targets is None:
                reasons.append(NO_COMMAND)
            else:
                t = _command_rows(targets, len(lim.names), "targets")
                if not np.all(np.isfinite(t)):
                    reasons.append(NON_FINITE_COMMAND)
        if reasons:
            return self._joint_hold(now_ns, measured, reasons)
        m = np.asarray(measured, dtype=float).reshape(-1)
        prev = self._prev_row(now_ns)
        clipped = np.clip(t, lim.lower, lim.upper)
        n_clamped = int(np.count_nonzero(clipped != t))
        track = self.settings.max_tracking_steps * self._step
        out = np.empty_like(clipped)
        n_limited = 0
        for k, row in enumerate(clipped):
            goal = row
            if k == 0:
                # never lead the robot by more than max_tracking_steps
                goal = np.clip(row, m - track, m + track)
                if prev is None:   # the very first command starts from the (clamped) measured joints
                    prev = np.clip(m, lim.lower, lim.upper)
            new = self._limit_row(prev, goal)
            n_limited += int(np.count_nonzero(~np.isclose(new, row)))
            out[k] = prev = new
        self.counts["clamped"] += n_clamped
        self.counts["rate_limited"] += n_limited
        self.counts["dry_run_commands" if self.dry_run else "sent_commands"] += 1
        self._record(now_ns, out)
        return GuardOutput("joint_positions", out, self.dt, False, (), n_clamped, n_limited, self.dry_run)

    # ------------------------------------------------------------------------- gripper
    def gripper_command(self, values, lower: float, upper: float, max_step: float) -> np.ndarray | None:
        """A gripper chunk (T,) made safe: non-finite -> the last command; clamped to [lower, upper];
        each value within `max_step` of the previous one. None when there is nothing to send."""
        if values is None:
            return None
        try:
            v = np.asarray(values, dtype=float).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            return None
        if len(v) == 0:
            return None
        prev = float(np.clip(self._last_gripper, lower, upper))
        out = np.empty(len(v))
        for k, x in enumerate(v):
            x = prev if not np.isfinite(x) else float(np.clip(x, lower, upper))
            prev = float(np.clip(prev + float(np.clip(x - prev, -max_step, max_step)), lower, upper))
            out[k] = prev
        return out

    def gripper_emit(self, value, lower: float, upper: float, max_step: float) -> float:
        """The gripper value to emit now (None: hold): finite, within [lower, upper], within `max_step`
        of the last emitted value; recorded as the last emitted value."""
        prev = float(np.clip(self._last_gripper, lower, upper))
        try:
            x = float(value) if value is not None else prev
        except (TypeError, ValueError, OverflowError):
            x = prev
        if not np.isfinite(x):
            x = prev
        x = float(np.clip(x, lower, upper))
        if self._gripper_emitted:
            x = float(np.clip(prev + float(np.clip(x - prev, -max_step, max_step)), lower, upper))
        self._last_gripper = x
        self._gripper_emitted = True
        return x

    def gripper_sent(self, value: float) -> None:
        """Record the gripper value actually emitted (the next chunk is rate-limited from it)."""
        v = float(value)
        if np.isfinite(v):
            self._last_gripper = v
            self._gripper_emitted = True

    def gripper_hold(self, lower: float, upper: float) -> float:
        """A hold keeps the gripper where it was last commanded (clamped like any command)."""
        return float(np.clip(self._last_gripper, lower, upper))

    # ------------------------------------------------------------------------- ee_delta interface
    def _ee_hold(self, reasons) -> GuardOutput:
        for r in reasons:
            self.counts[f"hold_{r}"] += 1
            if r in MEASURED_FAULTS or r in (CLOCK_REWOUND, CLOCK_FROZEN):
                self.counts[f"fault_{r}"] += 1
        rows = np.array([[0.0, 0.0, 0.0, self._last_gripper]])
        return GuardOutput("ee_deltas", rows, self.dt, True, tuple(reasons), dry_run=self.dry_run)

    def ee_command(self, now_ns: int, deltas, ee_position, joint_stamp_ns, trace_stamp_ns, wall_ns=None,
                   joint_wall_ns=None, trace_wall_ns=None) -> GuardOutput:
        """Make end-effector deltas (T, 4: metres xyz + gripper) safe; the output is in command units
        (metres / metres_per_unit, clipped to +-clip; gripper clipped to [-1, 1])."""
        s = self.settings
        reasons = self.input_reasons(int(now_ns), joint_stamp_ns, trace_stamp_ns, ee_position, wall_ns=wall_ns,
                                     joint_wall_ns=joint_wall_ns, trace_wall_ns=trace_wall_ns)
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
