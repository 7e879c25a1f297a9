"""Message builders the sim needs that mu0_ros/convert.py does not provide (yet).

These belong in mu0_ros/convert.py (the one ROS <-> numpy module); they live here only until the
foundation owner moves them there (requested). Same style as convert.py: `typestore=None` builds
rclpy classes, a rosbags typestore builds its classes for bag writing. All sim-specific message
building goes through this module so the move is one import change.
"""
from __future__ import annotations

import importlib

import numpy as np

from mu0_ros.convert import make_header, ns_to_stamp, rigid_to_pose, stamp_to_ns  # noqa: F401


def _cls(type_name: str, typestore=None):
    if typestore is not None:
        return typestore.types[type_name]
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _f64(values, typestore):
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr if typestore is not None else arr.tolist()


def joint_state_msg(stamp_ns: int, names, positions, velocities=None, typestore=None):
    names = [str(n) for n in names]
    pos = np.asarray(positions, float).reshape(-1)
    if pos.shape[0] != len(names):
        raise ValueError(f"positions: {pos.shape[0]} values for {len(names)} joint names")
    vel = np.zeros(0) if velocities is None else np.asarray(velocities, float).reshape(-1)
    if vel.size and vel.shape[0] != len(names):
        raise ValueError(f"velocities: {vel.shape[0]} values for {len(names)} joint names")
    return _cls("sensor_msgs/msg/JointState", typestore)(
        header=make_header(stamp_ns, "", typestore), name=names, position=_f64(pos, typestore),
        velocity=_f64(vel, typestore), effort=_f64(np.zeros(0), typestore))


def float64_array_msg(values, typestore=None):
    layout = _cls("std_msgs/msg/MultiArrayLayout", typestore)(dim=[], data_offset=0)
    return _cls("std_msgs/msg/Float64MultiArray", typestore)(layout=layout, data=_f64(values, typestore))


def float64_array_to_numpy(msg) -> np.ndarray:
    data = np.asarray(msg.data, dtype=float).reshape(-1)
    if not np.all(np.isfinite(data)):
        raise ValueError("data: non-finite values")
    return data


def joint_trajectory_msg(stamp_ns: int, names, positions, time_from_start_ns: int, typestore=None):
    """A one-point JointTrajectory (what a position-controlled arm is streamed each tick)."""
    pos = np.asarray(positions, float).reshape(-1)
    if pos.shape[0] != len(names):
        raise ValueError(f"positions: {pos.shape[0]} values for {len(names)} joint names")
    dur = _cls("builtin_interfaces/msg/Duration", typestore)(
        sec=int(time_from_start_ns) // 1_000_000_000, nanosec=int(time_from_start_ns) % 1_000_000_000)
    point = _cls("trajectory_msgs/msg/JointTrajectoryPoint", typestore)(
        positions=_f64(pos, typestore), velocities=_f64(np.zeros(0), typestore),
        accelerations=_f64(np.zeros(0), typestore), effort=_f64(np.zeros(0), typestore),
        time_from_start=dur)
    return _cls("trajectory_msgs/msg/JointTrajectory", typestore)(
        header=make_header(stamp_ns, "", typestore), joint_names=[str(n) for n in names], points=[point])


def joint_trajectory_to_points(msg) -> tuple[list[str], np.ndarray, np.ndarray]:
    """JointTrajectory -> (joint names, (P, J) positions, (P,) time_from_start seconds)."""
    names = [str(n) for n in msg.joint_names]
    if not names:
        raise ValueError("joint_names: empty")
    if len(set(names)) != len(names):
        raise ValueError(f"joint_names: duplicates in {names}")
    if not msg.points:
        raise ValueError("points: empty trajectory")
    pos = np.zeros((len(msg.points), len(names)))
    times = np.zeros(len(msg.points))
    for i, p in enumerate(msg.points):
        q = np.asarray(p.positions, float).reshape(-1)
        if q.shape[0] != len(names):
            raise ValueError(f"points[{i}].positions: {q.shape[0]} values for {len(names)} joints")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"points[{i}].positions: non-finite values")
        pos[i] = q
        times[i] = p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
    return names, pos, times


def string_msg(text: str, typestore=None):
    return _cls("std_msgs/msg/String", typestore)(data=str(text))


def bool_msg(value: bool, typestore=None):
    return _cls("std_msgs/msg/Bool", typestore)(data=bool(value))


def clock_msg(stamp_ns: int, typestore=None):
    return _cls("rosgraph_msgs/msg/Clock", typestore)(clock=ns_to_stamp(stamp_ns, typestore))


def pose_stamped_msg(stamp_ns: int, frame_id: str, tf, typestore=None):
    return _cls("geometry_msgs/msg/PoseStamped", typestore)(
        header=make_header(stamp_ns, frame_id, typestore), pose=rigid_to_pose(tf, typestore))
