"""ExpertRunner: the action_expert node's logic without ROS (also usable by offline replay).

It keeps the newest traces and joint state, asks the expert for a chunk every `chunk_execute`
ticks, passes every chunk through the SafetyGuard, and says per control tick what to emit:
- joint_trajectory: the whole guarded chunk at each re-plan (the controller interpolates), nothing
  in between; a hold is a one-point trajectory at the hold position;
- forward_position: one row per tick; every row goes through the guard at its tick (the rest of
  the expert's chunk is re-guarded from the row emitted last), so each emitted row is within the
  step limit of the previous one whatever happens in between;
- ee_delta: one row per tick from the guarded chunk.
Inputs are checked on every tick, so a stale input, a joint-state fault, a clock fault or an e-stop
holds within one tick. `tick(now_ns, wall_ns)`: with a steady wall clock (time.monotonic_ns) the
guard also judges staleness and a frozen / rewound ROS clock on it (live nodes); offline replay
passes no wall clock and stays deterministic.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mu0_policy.experts.base import ActionExpert, ExpertObservation, make_expert
from mu0_policy.experts.robot_config import RobotConfig
from mu0_policy.experts.safety import SafetyGuard
from mu0_core.traces import TraceSet


@dataclass
class TickCommand:
    interface: str                 # joint_trajectory | forward_position | ee_delta
    names: list                    # joint names (joint interfaces) or ["dx", "dy", "dz", "gripper"]
    values: np.ndarray | None      # (P, J) trajectory points, (1, J) / (1, 4) for one tick, or None:
                                   # a gripper-only tick (no arm command)
    dt: float                      # seconds between trajectory points
    hold: bool
    reasons: tuple
    send: bool                     # False in dry-run: log, do not publish
    trace_stamp_ns: int | None = None   # camera stamp of the traces this command was planned from
    gripper: float | None = None   # gripper closure for the robot's own gripper interface (joint robots)


@dataclass
class _Traces:
    stamp_ns: int
    samples: np.ndarray            # (N, H+1, 3) base frame
    validity: np.ndarray
    entities: list
    query_ids: np.ndarray
    step_period: float
    instruction: str = ""
    model_id: str = ""


class ExpertRunner:
    def __init__(self, robot: RobotConfig, expert: ActionExpert | None = None, guard: SafetyGuard | None = None):
        self.robot = robot
        self.expert = expert or make_expert(robot)
        self.guard = guard or SafetyGuard.from_robot(robot)
        self.kinematics = getattr(self.expert, "kinematics", None) or robot.build_kinematics()
        self._cam_to_base = robot.camera_to_base_transform()
        self._gripper_joint = robot.gripper.state_joint
        self._plan_gripper = None  # guarded gripper values of the plan (own gripper interface)
        self._traces: _Traces | None = None
        self._joints: dict = {}    # name -> (stamp_ns, position, velocity)
        self._plan = None          # guarded rows being executed (forward / ee_delta)
        self._plan_raw = None      # the expert's joint rows of the plan (forward_position re-guards them)
        self._plan_stamp_ns = None  # camera stamp of the traces the plan came from
        self._plan_tick = 0
        self._ticks_since_plan = 0
        self._traces_wall_ns = None   # steady-clock arrival of the newest traces / joint state
        self._joints_wall_ns = None
        self._grasp_until_ns = None   # gripper.grasp_hold_s: the arm holds until then while the fingers shut
        self.counts = Counter()
        self.act_ms: list = []     # latency of expert.act, for diagnostics / benchmarks

    # ------------------------------------------------------------------------- inputs
    def update_traces(self, traces: TraceSet, now_ns: int | None = None) -> None:
        """Take a new TraceSet; ValueError (nothing changes) when it cannot be used. With the node
        clock `now_ns`, traces older than the ones in use are refused (out of order), unless those are
        from an abandoned timeline (ahead of the clock by more than the trace timeout: a rewound clock)."""
        samples = np.asarray(traces.samples, dtype=float)
        if not np.all(np.isfinite(samples)):
            raise ValueError("traces.samples: non-finite coordinates")
        validity = np.asarray(traces.validity, dtype=float)
        if not np.all(np.isfinite(validity)):
            raise ValueError("traces.validity: non-finite values")
        if traces.frame_id != self.robot.base_frame:
            if self._cam_to_base is None:
                raise ValueError(f"traces.frame_id: {traces.frame_id!r} is not the robot base frame "
                                 f"{self.robot.base_frame!r} and the robot config has no camera_to_base")
            # points in frame_id -> camera (undo camera_to_frame) -> base (configured extrinsic)
            to_base = self._cam_to_base @ traces.camera_to_frame.inverse()
            samples = to_base.apply(samples)
        if samples.ndim != 3 or samples.shape[-1] != 3 or validity.shape != samples.shape[:2]:
            raise ValueError(f"traces: samples {samples.shape} / validity {validity.shape} do not match")
        step_period = float(traces.step_period)
        if not (np.isfinite(step_period) and step_period > 0):
            raise ValueError(f"traces.step_period: must be positive, got {step_period}")
        stamp = int(traces.stamp_ns)
        if stamp < 0:
            raise ValueError(f"traces.stamp: negative ({stamp} ns)")
        cur = self._traces
        if now_ns is not None and cur is not None and stamp < cur.stamp_ns \
                and cur.stamp_ns - int(now_ns) <= self.guard.settings.trace_timeout_s * 1e9:
            raise ValueError(f"traces.stamp: {(cur.stamp_ns - stamp) * 1e-9:.3f} s older than the traces in use "
                             "(out of order)")
        self._traces = _Traces(stamp, samples, validity, list(traces.entities),
                               np.asarray(traces.query_ids), step_period, str(traces.instruction),
                               str(getattr(traces, "model_id", "") or ""))
        self._traces_wall_ns = time.monotonic_ns()
        self.counts["traces"] += 1

    def update_joint_state(self, stamp_ns: int, names, positions, velocities=None) -> None:
        """Merge a joint-state message (may hold a subset of joints); ValueError on bad input."""
        names = list(names)
        pos = np.asarray(positions, dtype=float).reshape(-1)
        if pos.shape[0] != len(names):
            raise ValueError(f"joint_state.position: {pos.shape[0]} values for {len(names)} names")
        vel = None if velocities is None or len(velocities) == 0 else np.asarray(velocities, float).reshape(-1)
        if vel is not None and vel.shape[0] != len(names):
            raise ValueError(f"joint_state.velocity: {vel.shape[0]} values for {len(names)} names")
        wanted = [i for i, n in enumerate(names) if n in self.robot.joints.names or n == self._gripper_joint]
        if wanted and not np.all(np.isfinite(pos[wanted])):
            raise ValueError("joint_state.position: non-finite values for the robot's joints")
        if int(stamp_ns) < 0:
            raise ValueError(f"joint_state.stamp: negative ({int(stamp_ns)} ns)")
        for i in wanted:
            self._joints[names[i]] = (int(stamp_ns), pos[i], np.nan if vel is None else vel[i])
        if wanted:
            self._joints_wall_ns = time.monotonic_ns()
        self.counts["joint_states"] += 1

    def gripper_measured(self):
        """The gripper state from /joint_states (robot config gripper.state_joint), or None."""
        row = self._joints.get(self._gripper_joint) if self._gripper_joint else None
        return None if row is None else float(row[1])

    def measured(self):
        """(positions (J,), velocities (J,) or None, oldest stamp) in the robot's joint order, or Nones."""
        if not all(n in self._joints for n in self.robot.joints.names):
            return None, None, None
        rows = [self._joints[n] for n in self.robot.joints.names]
        vel = np.array([r[2] for r in rows])
        return (np.array([r[1] for r in rows]), None if np.isnan(vel).any() else vel, min(r[0] for r in rows))

    # ------------------------------------------------------------------------- e-stop
    def estop(self, reason: str = "e-stop") -> None:
        self.guard.latch_estop(reason)
        self._plan = self._plan_raw = None
        self._grasp_until_ns = None

    def reset_estop(self) -> bool:
        was = self.guard.reset_estop()
        self.expert.reset()
        self._plan = self._plan_raw = None
        self._grasp_until_ns = None
        return was

    def replan(self) -> None:
        """Fresh traces arrived (event-driven re-planning, the action_expert node): the next tick()
        asks the expert with them instead of finishing the current chunk. The new chunk goes through
        the guard like any other, from the last commanded row (the guard keeps it)."""
        self._plan = self._plan_raw = None
        self.counts["replans_on_traces"] += 1

    def restart(self) -> None:
        """Start a new command stream (lifecycle activate): the next command starts from the measured
        joints, not from a command sent before an inactive period."""
        self.guard.forget_commands()
        self.expert.reset()
        self._plan = self._plan_raw = None
        self._grasp_until_ns = None

    def hold(self, now_ns: int, reason: str, wall_ns: int | None = None) -> TickCommand | None:
        """An explicit hold now (lifecycle deactivate, shutdown), guarded like any command."""
        q, _, _ = self.measured()
        self._plan = self._plan_raw = None
        out = self.guard.hold(int(now_ns), q, [reason])
        return None if out.values is None else self._emit(out, out.values)

    # ------------------------------------------------------------------------- tick
    def _names(self):
        if self.robot.command_interface == "ee_delta":
            return ["dx", "dy", "dz", "gripper"]
        return list(self.robot.joints.names)

    def _hand_speed(self) -> float | None:
        """End-effector speed (m/s) from the measured joint positions and velocities, or None."""
        q, qd, _ = self.measured()
        if q is None or qd is None or self.kinematics is None or not (np.all(np.isfinite(q)) and np.all(np.isfinite(qd))):
            return None
        dt = 0.01   # a finite difference of the forward kinematics along the measured velocity
        a = self.kinematics.ee_pose(q)[:3, 3]
        b = self.kinematics.ee_pose(np.asarray(q, float) + dt * np.asarray(qd, float))[:3, 3]
        return float(np.linalg.norm(b - a) / dt)

    def _settled_for_closing(self, gripper):
        """`gripper`, or the last emitted value when it would close further while the hand still
        moves faster than gripper.close_below_speed (robot config): fingers that shut on a hand still
        descending close above the object. Opening is never delayed."""
        g = self.robot.gripper
        if gripper is None or g.close_below_speed <= 0.0:
            return gripper
        last = self.guard.gripper_hold(g.lower, g.upper)
        try:
            want = float(gripper)
        except (TypeError, ValueError, OverflowError):
            return gripper
        if not want > last:
            return gripper
        speed = self._hand_speed()
        if speed is not None and speed > g.close_below_speed:
            self.counts["gripper_close_deferred"] += 1
            return last
        return gripper

    def _emit(self, out, values, trace_stamp_ns=None, gripper=None):
        g = self.robot.gripper
        if g.interface == "forward_position":
            gripper = self._settled_for_closing(gripper)
            # None (a hold, or an expert that does not drive the gripper) keeps it where it was; the
            # guard makes every emitted value finite, in [lower, upper] and rate-limited
            gripper = self.guard.gripper_emit(None if out.hold else gripper, g.lower, g.upper, g.max_step_delta)
        else:
            gripper = None
        return TickCommand(self.robot.command_interface, self._names(), values, out.dt, out.hold,
                           out.reasons, out.send, None if out.hold else trace_stamp_ns, gripper)

    def _emit_gripper_only(self, k: int) -> TickCommand | None:
        """A gripper-only command (values None: no arm command this tick) carrying the plan's
        gripper value for its tick `k`, or None when there is none or it would not change."""
        if self._plan_gripper is None or self._plan is None:
            return None
        g = self.robot.gripper
        want = self._settled_for_closing(float(self._plan_gripper[min(k, len(self._plan_gripper) - 1)]))
        if abs(want - self.guard.gripper_hold(g.lower, g.upper)) < 1e-9:
            return None
        value = self.guard.gripper_emit(want, g.lower, g.upper, g.max_step_delta)
        return TickCommand(self.robot.command_interface, self._names(), None, self._plan.dt, False, (),
                           self._plan.send, self._plan_stamp_ns, value)

    def _guard(self, now_ns, rows, q, js_stamp, tr_stamp, wall):
        if self.robot.command_interface == "ee_delta":
            ee = None
            if q is not None and np.all(np.isfinite(q)):
                ee = self.kinematics.ee_pose(q)[:3, 3]
            return self.guard.ee_command(now_ns, rows, ee, js_stamp, tr_stamp, **wall)
        return self.guard.joint_command(now_ns, rows, q, js_stamp, tr_stamp, **wall)

    def _chunk_rows(self, chunk):
        """The expert's rows for this robot's interface, or None when the chunk is unusable."""
        if chunk is None:
            return None
        rows = chunk.ee_deltas if self.robot.command_interface == "ee_delta" else chunk.joint_positions
        if rows is None:
            return None
        width = 4 if self.robot.command_interface == "ee_delta" else len(self.robot.joints.names)
        try:
            rows = np.asarray(rows, dtype=float)
        except (TypeError, ValueError, OverflowError):
            rows = None
        if rows is None or rows.ndim not in (1, 2) or rows.shape[-1] != width or rows.size == 0:
            self.counts["expert_bad_shape"] += 1
            return None
        return rows.reshape(-1, width)

    def tick(self, now_ns: int, wall_ns: int | None = None) -> TickCommand | None:
        """What to emit at this control tick (None: nothing this tick). `wall_ns`: a steady clock
        (time.monotonic_ns()) for the wall-clock watchdogs; None offline."""
        now_ns = int(now_ns)
        g = self.robot.gripper
        if g.grasp_hold_s <= 0 or self._grasp_until_ns is not None:
            return self._tick(now_ns, wall_ns)
        before = self.guard.gripper_hold(g.lower, g.upper)
        cmd = self._tick(now_ns, wall_ns)
        if cmd is not None and not cmd.hold and cmd.gripper is not None \
                and before < 0.5 * (g.lower + g.upper) <= cmd.gripper:
            # the first command that closes the gripper past half-way starts a grasp: the arm stops
            # where it is commanded to be while the fingers shut (a learned expert's arm otherwise
            # runs on at the demonstrations' pace and pushes the object away as the fingers close)
            self._grasp_until_ns = now_ns + int(g.grasp_hold_s * 1e9)
            self.counts["grasps"] += 1
        return cmd

    def _grasp_tick(self, now_ns, q, js_stamp, tr_stamp, wall) -> TickCommand | None:
        """One tick of a grasp (gripper.grasp_hold_s): the arm's commanded position of now, sent again
        through the guard, and the gripper closing at its rate limit."""
        g = self.robot.gripper
        row = self.guard.commanded_row(now_ns)
        if row is None:
            self._grasp_until_ns = None
            return None
        out = self._guard(now_ns, row[None], q, js_stamp, tr_stamp, wall)
        self._plan = self._plan_raw = None
        if out.values is None or out.hold:
            return None if out.values is None else self._emit(out, out.values)
        self.counts["grasp_hold_ticks"] += 1
        grip = self.guard.gripper_emit(g.upper, g.lower, g.upper, g.max_step_delta)
        return TickCommand(self.robot.command_interface, self._names(), out.values[:1], out.dt, False, ("grasp",),
                           out.send, self._plan_stamp_ns, grip)

    def _tick(self, now_ns: int, wall_ns: int | None) -> TickCommand | None:
        q, qd, js_stamp = self.measured()
        tr_stamp = None if self._traces is None else self._traces.stamp_ns
        wall = {} if wall_ns is None else dict(wall_ns=int(wall_ns), joint_wall_ns=self._joints_wall_ns,
                                               trace_wall_ns=self._traces_wall_ns)
        reasons = self.guard.input_reasons(now_ns, js_stamp, tr_stamp, q, **wall)
        if reasons:
            self._plan = self._plan_raw = None
            out = self.guard.hold(now_ns, q, reasons)
            self.counts["hold_ticks"] += 1
            return None if out.values is None else self._emit(out, out.values)
        iface = self.robot.command_interface
        if self._grasp_until_ns is not None:
            if now_ns < self._grasp_until_ns:
                return self._grasp_tick(now_ns, q, js_stamp, tr_stamp, wall)
            self._grasp_until_ns = None      # the fingers had their time: re-plan with them shut
            self._plan = self._plan_raw = None
        if self._plan is not None and self._ticks_since_plan < self.robot.chunk_execute:
            self._ticks_since_plan += 1
            if iface == "joint_trajectory":
                # the controller is executing the chunk; the gripper is not one of its joints, so
                # its own interface follows the plan's gripper column tick by tick (emitting it
                # only with each plan would rate-limit a grasp to one max_step_delta per plan)
                return self._emit_gripper_only(self._ticks_since_plan - 1)
            self._plan_tick += 1
            out = self._plan
            k = min(self._plan_tick, len(out.values) - 1)
            g = None if self._plan_gripper is None else float(self._plan_gripper[min(k, len(self._plan_gripper) - 1)])
            if iface == "forward_position" and self._plan_raw is not None:
                # this tick's row goes through the guard now, from the row emitted last
                raw = self._plan_raw[min(k, len(self._plan_raw) - 1):]
                step = self._guard(now_ns, raw, q, js_stamp, tr_stamp, wall)
                if step.values is None or step.hold:
                    self._plan = self._plan_raw = None
                    return None if step.values is None else self._emit(step, step.values)
                return self._emit(step, step.values[:1], self._plan_stamp_ns, g)
            return self._emit(out, out.values[k][None], self._plan_stamp_ns, g)
        t = self._traces
        obs = ExpertObservation(
            stamp_ns=now_ns, joint_names=list(self.robot.joints.names), joint_positions=q, joint_velocities=qd,
            traces_xyz=t.samples, validity=t.validity, entities=t.entities, query_ids=t.query_ids,
            trace_stamp_ns=t.stamp_ns, step_period=t.step_period, instruction=t.instruction,
            gripper_position=self.gripper_measured(), trace_model_id=t.model_id)
        start = time.perf_counter()
        try:
            chunk = self.expert.act(obs)
        except Exception as err:   # noqa: BLE001 - any expert failure is a hold, never a crash
            self.counts["expert_errors"] += 1
            self.last_expert_error = f"{type(err).__name__}: {err}"
            chunk = None
        self.act_ms.append((time.perf_counter() - start) * 1e3)
        if len(self.act_ms) > 200:
            del self.act_ms[:100]
        if chunk is not None and "hold" in getattr(chunk, "info", {}):
            self.counts["expert_holds"] += 1
        if chunk is not None and getattr(chunk, "info", {}).get("trace_model_mismatch"):
            self.counts["trace_model_mismatch"] += 1
            self.last_trace_model_mismatch = chunk.info["trace_model_mismatch"]
        rows = self._chunk_rows(chunk)
        out = self._guard(now_ns, rows, q, js_stamp, tr_stamp, wall)
        if out.values is None:
            self._plan = self._plan_raw = None
            return None
        if out.hold:
            self._plan = self._plan_raw = None
            return self._emit(out, out.values)
        self._plan, self._plan_tick, self._ticks_since_plan = out, 0, 1
        self._plan_raw = rows if iface == "forward_position" else None
        self._plan_stamp_ns = t.stamp_ns
        g = self.robot.gripper
        self._plan_gripper = None
        if g.interface == "forward_position" and chunk is not None and getattr(chunk, "gripper", None) is not None:
            self._plan_gripper = self.guard.gripper_command(chunk.gripper, g.lower, g.upper, g.max_step_delta)
            if g.follow == "plan" and self._plan_gripper is not None:
                # the expert's newest "now", held until it is asked again: its open-loop future
                # closes early wherever the arm runs behind the demonstrations' timing
                self._plan_gripper = self._plan_gripper[:1]
        g0 = None if self._plan_gripper is None else float(self._plan_gripper[0])
        self.counts["plans"] += 1
        if iface == "joint_trajectory":
            return self._emit(out, out.values, t.stamp_ns, g0)
        return self._emit(out, out.values[:1], t.stamp_ns, g0)
