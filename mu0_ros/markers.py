"""Plain line-strip data (mu0_policy.trace_postprocess.LineStrip) -> visualization_msgs/MarkerArray.

Builds rclpy messages, or a rosbags typestore's classes when `typestore` is given (offline
replay writes markers into a bag without DDS). Kept apart from the nodes so the live node and
offline replay publish identical markers.
"""
from __future__ import annotations

from mu0_ros.convert import _msg_class, make_header

LINE_STRIP, ADD, DELETEALL = 4, 0, 3  # visualization_msgs/Marker constants


def _duration(seconds: float, typestore):
    ns = int(round(seconds * 1e9))
    return _msg_class("builtin_interfaces/msg/Duration", typestore)(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _empty_marker(typestore, stamp_ns, frame_id, ns, marker_id, marker_type, action, lifetime_s):
    c = lambda name: _msg_class(name, typestore)  # noqa: E731
    return c("visualization_msgs/msg/Marker")(
        header=make_header(stamp_ns, frame_id, typestore), ns=ns, id=int(marker_id), type=marker_type,
        action=action,
        pose=c("geometry_msgs/msg/Pose")(position=c("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
                                         orientation=c("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)),
        scale=c("geometry_msgs/msg/Vector3")(x=0.0, y=0.0, z=0.0),
        color=c("std_msgs/msg/ColorRGBA")(r=1.0, g=1.0, b=1.0, a=1.0),
        lifetime=_duration(lifetime_s, typestore), frame_locked=False, points=[], colors=[],
        texture_resource="", texture=c("sensor_msgs/msg/CompressedImage")(
            header=make_header(0, "", typestore), format="", data=_np_bytes(typestore)),
        uv_coordinates=[], text="", mesh_resource="",
        mesh_file=c("visualization_msgs/msg/MeshFile")(filename="", data=_np_bytes(typestore)),
        mesh_use_embedded_materials=False)


def _np_bytes(typestore):
    import numpy as np

    return np.zeros(0, np.uint8) if typestore is not None else []


def marker_array_msg(strips, lifetime_s: float, deleted_namespaces=(), stamp_ns: int = 0, frame_id: str = "",
                     typestore=None):
    """One LINE_STRIP per strip (per-point colours), after a DELETEALL per vanished namespace."""
    c = lambda name: _msg_class(name, typestore)  # noqa: E731
    markers = [_empty_marker(typestore, stamp_ns, frame_id, ns, 0, LINE_STRIP, DELETEALL, 0.0)
               for ns in sorted(deleted_namespaces)]
    for s in strips:
        m = _empty_marker(typestore, s.stamp_ns, s.frame_id, s.namespace, s.marker_id, LINE_STRIP, ADD, lifetime_s)
        m.scale = c("geometry_msgs/msg/Vector3")(x=float(s.width), y=0.0, z=0.0)
        m.points = [c("geometry_msgs/msg/Point")(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in s.points]
        m.colors = [c("std_msgs/msg/ColorRGBA")(r=float(q[0]), g=float(q[1]), b=float(q[2]), a=float(q[3]))
                    for q in s.colors]
        markers.append(m)
    return c("visualization_msgs/msg/MarkerArray")(markers=markers)
