"""Command handling of the simulated arm (pure; the sim node converts messages and calls this).

Turns the latest commands into one env action per step, the way the matching ros2_control
controllers do:
- joint trajectory (JointTrajectoryController): points are timed from the moment they arrive;
  the target is interpolated linearly between points and held after the last one. Joints a
  trajectory does not name keep their previous target.
- forward position commands (ForwardCommandController): the target jumps to the values given.
- EE deltas (Meta-World): each delta is applied once; later steps hold position (zero delta)
  and keep the last gripper command.
"""
from __future__ import annotations

import numpy as np


class CommandState:
    def __init__(self, embodiment: str, command_joints, initial_positions, lower, upper):
        self.embodiment = embodiment
        self.command_joints = [str(n) for n in command_joints]
        self._index = {n: i for i, n in enumerate(self.command_joints)}
        self.lower = np.asarray(lower, float)
        self.upper = np.asarray(upper, float)
        self.reset(initial_positions)

    def reset(self, initial_positions) -> None:
        q = np.asarray(initial_positions, float).reshape(-1)
        if self.embodiment == "sawyer_joint" and q.shape != (len(self.command_joints),):
            raise ValueError(f"initial_positions: need {len(self.command_joints)} values, got {q.shape}")
        self.target = q.copy()
        self._traj = None            # (start_target, joint idx, (P, J) positions, (P,) abs times ns)
        self._pending_delta = None
        self._gripper = -1.0
        self.commands_received = 0

    # -------------------------------------------------------------- joint embodiment
    def set_joint_trajectory(self, names, positions, times_s, now_ns: int) -> None:
        if self.embodiment != "sawyer_joint":
            raise ValueError("joint trajectory commands need embodiment sawyer_joint")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ValueError(f"joint_names: unknown joints {unknown} (known: {self.command_joints})")
        pos = np.asarray(positions, float)
        times = np.asarray(times_s, float)
        if pos.ndim != 2 or pos.shape != (len(times), len(names)):
            raise ValueError(f"points: positions {pos.shape} do not match {len(times)} points x {len(names)} joints")
        if np.any(np.diff(times) < 0) or np.any(times < 0):
            raise ValueError("points: time_from_start must be non-negative and non-decreasing")
        idx = np.array([self._index[n] for n in names])
        self._traj = (self.target[idx].copy(), idx, pos, now_ns + np.round(times * 1e9).astype(np.int64), now_ns)
        self.commands_received += 1

    def set_forward_positions(self, values) -> None:
        if self.embodiment != "sawyer_joint":
            raise ValueError("forward position commands need embodiment sawyer_joint")
        v = np.asarray(values, float).reshape(-1)
        n = len(self.command_joints)
        if v.shape[0] not in (n, n - 1):
            raise ValueError(f"data: expected {n} values (arm joints + gripper) or {n - 1} (arm only), got {v.shape[0]}")
        if not np.all(np.isfinite(v)):
            raise ValueError("data: non-finite values")
        self._traj = None
        self.target[: v.shape[0]] = v
        self.commands_received += 1

    def set_gripper(self, value) -> None:
        """The gripper's own command interface (joint embodiment): closure in [-1 open, 1 closed]."""
        if self.embodiment != "sawyer_joint":
            raise ValueError("gripper commands on their own interface need embodiment sawyer_joint")
        v = float(np.asarray(value, float).reshape(-1)[0]) if np.size(value) else float("nan")
        if not np.isfinite(v):
            raise ValueError("data: non-finite gripper command")
        self.target[-1] = float(np.clip(v, -1.0, 1.0))
        self.commands_received += 1

    # -------------------------------------------------------------- EE embodiment
    def set_ee_delta(self, values) -> None:
        if self.embodiment != "sawyer_ee":
            raise ValueError("EE-delta commands need embodiment sawyer_ee")
        v = np.asarray(values, float).reshape(-1)
        if v.shape != (4,):
            raise ValueError(f"data: expected 4 values (dx, dy, dz, gripper), got {v.shape[0]}")
        if not np.all(np.isfinite(v)):
            raise ValueError("data: non-finite values")
        self._pending_delta = np.clip(v, -1.0, 1.0)
        self._gripper = float(self._pending_delta[3])
        self.commands_received += 1

    # -------------------------------------------------------------- per step
    def action(self, now_ns: int) -> np.ndarray:
        if self.embodiment == "sawyer_ee":
            if self._pending_delta is not None:
                a, self._pending_delta = self._pending_delta, None
                return a
            return np.array([0.0, 0.0, 0.0, self._gripper])
        if self._traj is not None:
            start, idx, pos, t_abs, t0 = self._traj
            knots_t = np.concatenate([[t0], t_abs])
            knots_q = np.vstack([start[None], pos])
            for j in range(len(idx)):
                self.target[idx[j]] = np.interp(now_ns, knots_t, knots_q[:, j])
            if now_ns >= t_abs[-1]:
                self._traj = None
        n_arm = len(self.lower)
        self.target[:n_arm] = np.clip(self.target[:n_arm], self.lower, self.upper)
        self.target[n_arm:] = np.clip(self.target[n_arm:], -1.0, 1.0)
        return self.target.copy()
