"""`trace_follower`: a geometric expert that moves the end effector along the predicted trace of the
gripper point, through the robot's kinematics (no learning).

Per call:
1. pick the trace: one labelled as the gripper (robot config `gripper_point.entity`, or "hand"),
   the one whose anchor is nearest the current end effector if several; otherwise the trace whose
   anchor is nearest the end effector, if within `max_anchor_distance`;
2. cut it at the first sample whose validity < `min_validity`, and sample it at the chunk's tick
   times (trace sample i is at trace_stamp + i * step_period, so an old prediction is followed from
   where "now" falls on it, not from its start);
3. targets: `relative` mode applies the trace's displacement since "now" to the current end
   effector (robust to the gripper point not being exactly the tool point); `absolute` mode goes to
   the trace points themselves. Steps are limited to `max_ee_speed`;
4. joint interfaces: damped-least-squares IK per tick (warm-started from the previous tick, holding
   the tool orientation seen at the first call after reset); ee_delta interface: the per-tick
   displacement.
No usable trace -> a hold chunk (current joints / zero deltas) with `info["hold"]` saying why.
"""
from __future__ import annotations

import numpy as np

from mu0_policy.experts.base import ActionChunk, ActionExpert, ExpertObservation, register_expert


@register_expert("trace_follower")
class TraceFollower(ActionExpert):
    def __init__(self, robot, mode: str = "relative", max_ee_speed: float = 0.25, min_validity: float = 0.5,
                 max_anchor_distance: float = 0.15, hold_orientation: bool = True,
                 orientation_weight: float = 0.3, ik_iterations: int = 30, ik_damping: float = 0.05,
                 gripper_entities: list | None = None):
        super().__init__(robot)
        if mode not in ("relative", "absolute"):
            raise ValueError(f"mode must be 'relative' or 'absolute', got {mode!r}")
        for name, v in (("max_ee_speed", max_ee_speed), ("max_anchor_distance", max_anchor_distance),
                        ("orientation_weight", orientation_weight), ("ik_damping", ik_damping)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not 0.0 <= min_validity <= 1.0:
            raise ValueError(f"min_validity must be in [0, 1], got {min_validity!r}")
        if not (isinstance(ik_iterations, int) and ik_iterations > 0):
            raise ValueError(f"ik_iterations must be a positive integer, got {ik_iterations!r}")
        self.mode = mode
        self.max_ee_speed = float(max_ee_speed)
        self.min_validity = float(min_validity)
        self.max_anchor_distance = float(max_anchor_distance)
        self.hold_orientation = bool(hold_orientation)
        self.orientation_weight = float(orientation_weight)
        self.ik_iterations = ik_iterations
        self.ik_damping = float(ik_damping)
        self.gripper_entities = set(gripper_entities or [robot.gripper_entity, "hand"])
        self.kinematics = robot.build_kinematics()
        if self.kinematics is None:
            raise ValueError("trace_follower needs kinematics (robot config 'kinematics.source' is 'none')")
        self._held_rotation = None

    def reset(self) -> None:
        self._held_rotation = None

    # ----------------------------------------------------------------------------------- helpers
    def select_trace(self, obs: ExpertObservation, ee_position: np.ndarray):
        """Index of the trace to follow and why, or (None, reason)."""
        n = len(obs.entities)
        if n == 0:
            return None, "no traces"
        anchors = obs.traces_xyz[:, 0, :]
        usable = np.all(np.isfinite(anchors), axis=1) & (obs.validity[:, 0] >= self.min_validity)
        if not usable.any():
            return None, "no trace with a valid anchor"
        dist = np.where(usable, np.linalg.norm(anchors - ee_position, axis=1), np.inf)
        labelled = np.array([e in self.gripper_entities for e in obs.entities]) & usable
        if labelled.any():
            i = int(np.argmin(np.where(labelled, dist, np.inf)))
            return i, f"entity {obs.entities[i]!r}"
        i = int(np.argmin(dist))
        if dist[i] > self.max_anchor_distance:
            return None, (f"no gripper-labelled trace and the nearest anchor is {dist[i]:.3f} m from the "
                          f"end effector (> max_anchor_distance {self.max_anchor_distance} m)")
        return i, f"nearest anchor ({dist[i]:.3f} m)"

    def _valid_prefix(self, trace: np.ndarray, validity: np.ndarray) -> np.ndarray:
        ok = (validity >= self.min_validity) & np.all(np.isfinite(trace), axis=1)
        bad = np.flatnonzero(~ok)
        end = len(trace) if len(bad) == 0 else int(bad[0])
        return trace[:end]

    @staticmethod
    def _at(path: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Linear interpolation of path (L, 3) at fractional indices, clamped to its ends."""
        idx = np.clip(index, 0.0, len(path) - 1)
        lo = np.floor(idx).astype(int)
        hi = np.minimum(lo + 1, len(path) - 1)
        w = (idx - lo)[:, None]
        return path[lo] * (1 - w) + path[hi] * w

    def _hold(self, obs, reason, T, dt, ee):
        info = {"hold": reason, "ee_position": ee}
        if self.robot.command_interface == "ee_delta":
            d = np.zeros((T, 4))
            d[:, 3] = self.robot.ee_delta.gripper
            return ActionChunk(None, dt, ee_deltas=d, info=info)
        return ActionChunk(np.repeat(obs.joint_positions[None, :].astype(float), T, axis=0), dt, info=info)

    # ----------------------------------------------------------------------------------- act
    def act(self, obs: ExpertObservation) -> ActionChunk:
        T, dt = self.robot.chunk_horizon, self.robot.control_dt
        q_now = np.asarray(obs.joint_positions, dtype=float)
        if list(obs.joint_names) != self.kinematics.joint_names:
            raise ValueError(f"obs.joint_names {list(obs.joint_names)} != robot joints {self.kinematics.joint_names}")
        pose = self.kinematics.ee_pose(q_now)
        ee = pose[:3, 3]
        if self._held_rotation is None:
            self._held_rotation = pose[:3, :3].copy()
        i, why = self.select_trace(obs, ee)
        if i is None:
            return self._hold(obs, why, T, dt, ee)
        path = self._valid_prefix(obs.traces_xyz[i], obs.validity[i])
        if len(path) < 2:
            return self._hold(obs, f"trace {i} ({why}) has fewer than 2 valid samples", T, dt, ee)
        age = (obs.stamp_ns - obs.trace_stamp_ns) * 1e-9
        tick_times = age + dt * np.arange(0, T + 1)                       # now, then T ticks
        points = self._at(path, tick_times / obs.step_period)
        if self.mode == "relative":
            targets = ee + (points[1:] - points[0])
        else:
            targets = points[1:]
        # speed limit along the way: each tick moves at most max_ee_speed * dt from the previous
        step_max = self.max_ee_speed * dt
        prev = ee
        limited = np.empty_like(targets)
        for k, tgt in enumerate(targets):
            d = tgt - prev
            n = np.linalg.norm(d)
            prev = prev + (d * (step_max / n) if n > step_max else d)
            limited[k] = prev
        info = {"trace_index": i, "trace_query_id": int(obs.query_ids[i]), "selected_by": why,
                "ee_position": ee, "ee_targets": limited, "trace_age_s": age}
        if self.robot.command_interface == "ee_delta":
            deltas = np.diff(np.vstack([ee[None], limited]), axis=0)
            g = np.full((T, 1), self.robot.ee_delta.gripper)
            return ActionChunk(None, dt, ee_deltas=np.hstack([deltas, g]), info=info)
        chain = self.kinematics.chain
        qc = self.kinematics.chain_q(q_now)
        rows, worst = [], 0.0
        rot = self._held_rotation if self.hold_orientation else None
        for tgt in limited:
            r = chain.ik(tgt, qc, target_rotation=rot, orientation_weight=self.orientation_weight,
                         damping=self.ik_damping, max_iterations=self.ik_iterations)
            qc = r.joint_positions
            worst = max(worst, r.position_error)
            rows.append(self.kinematics.with_chain_q(q_now, qc))
        info["ik_max_position_error"] = worst
        return ActionChunk(np.array(rows), dt, info=info)
