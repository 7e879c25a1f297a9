"""The one module that converts ROS messages <-> numpy / core dataclasses.

Every function reads messages duck-typed (only field names are used), so the same code handles
rclpy messages on a live graph and `rosbags` messages read from or written to a bag. Functions
that BUILD messages take an optional `typestore` (a rosbags typestore): without it they build
rclpy message classes, with it the typestore's classes (for writing bags without DDS).

Bad input raises ValueError naming the offending field; nodes catch it, count and drop.
"""
from __future__ import annotations

import array
import importlib
import math
import struct as _struct

import numpy as np

from mu0_core.camera import CameraIntrinsics, RigidTransform
from mu0_core.frames import RGBDFrame
from mu0_core.traces import TraceSet

# encoding -> (numpy dtype, channels)
IMAGE_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "mono8": (np.uint8, 1),
    "16UC1": (np.uint16, 1),
    "mono16": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
MM_PER_M = 1000.0

# Size limits checked BEFORE anything is allocated from a message's numbers (a 4-byte field must
# never make a subscriber allocate gigabytes). Generous for any real camera / model.
MAX_HORIZON_STEPS = 10_000
MAX_TRACES = 10_000
MAX_CONTROL_POINTS = 10_000
MAX_KNOTS = 20_000
MAX_IMAGE_BYTES = 512 * 1024 * 1024
MAX_JOINTS = 10_000


# ----------------------------------------------------------------------------------------------
# message construction (rclpy classes or a rosbags typestore)
# ----------------------------------------------------------------------------------------------
def _msg_class(type_name: str, typestore=None):
    """'sensor_msgs/msg/Image' -> the class (rclpy module import, or typestore lookup)."""
    if typestore is not None:
        try:
            return typestore.types[type_name]
        except KeyError:
            raise ValueError(f"type {type_name!r} is not registered in the typestore") from None
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _array_field(values, typecode: str, typestore):
    """Primitive sequence field: array.array for rclpy (its fast path), ndarray for rosbags."""
    dtype = {"B": np.uint8, "d": np.float64, "f": np.float32, "I": np.uint32}[typecode]
    arr = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
    if typestore is not None:
        return arr
    out = array.array(typecode)
    out.frombytes(arr.tobytes())
    return out


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def check_stamp(stamp_ns: int, now_ns: int | None = None, max_future_s: float | None = None,
                field: str = "header.stamp") -> int:
    """A message stamp a node may use: ValueError (naming the field) when it is negative or more
    than `max_future_s` ahead of the node clock `now_ns` (the future check is skipped when the clock
    has not started, now_ns <= 0, as with use_sim_time before the first /clock)."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"{field}: negative time {stamp_ns} ns")
    if max_future_s is not None and now_ns is not None and now_ns > 0 \
            and stamp_ns - int(now_ns) > max_future_s * 1e9:
        raise ValueError(f"{field}: {(stamp_ns - int(now_ns)) * 1e-9:.3f} s ahead of the node clock "
                         f"(max {max_future_s:g} s)")
    return stamp_ns


def ns_to_stamp(ns: int, typestore=None):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    ns = int(ns)
    if ns < 0:
        raise ValueError(f"stamp: negative time {ns} ns")
    return _msg_class("builtin_interfaces/msg/Time", typestore)(
        sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(stamp_ns: int, frame_id: str, typestore=None):
    return _msg_class("std_msgs/msg/Header", typestore)(
        stamp=ns_to_stamp(stamp_ns, typestore), frame_id=str(frame_id))


# ----------------------------------------------------------------------------------------------
# sensor_msgs/Image
# ----------------------------------------------------------------------------------------------
def image_view(msg) -> np.ndarray:
    """sensor_msgs/Image -> a validated view of its pixels in the message's own encoding and byte
    order (no copy: it shares the message's buffer; do not write to it). Same checks and errors as
    `image_to_numpy`; for code that only inspects pixels or passes the message on."""
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise ValueError(f"encoding: unsupported image encoding {enc!r} "
                         f"(supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[enc]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height < 0 or width < 0 or step < 0:
        raise ValueError(f"height/width/step: negative size ({height}, {width}, {step})")
    if height == 0 or width == 0:
        raise ValueError(f"height/width: empty image ({width}x{height})")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = width * channels * itemsize
    if step < row_bytes:
        raise ValueError(f"step: {step} bytes is less than width*channels*itemsize = {row_bytes}")
    if height * step > MAX_IMAGE_BYTES:
        raise ValueError(f"height*step: {height}*{step} bytes is over the {MAX_IMAGE_BYTES} byte limit")
    data = msg.data
    buf = np.frombuffer(data if isinstance(data, (bytes, bytearray, np.ndarray)) else memoryview(data).cast("B"),
                        dtype=np.uint8)
    if buf.size != height * step:
        raise ValueError(f"data: {buf.size} bytes, expected height*step = {height}*{step} = {height * step}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    if step % itemsize:   # rows not aligned to the pixel size: a strided view is impossible
        rows = np.ascontiguousarray(rows)
    order = ">" if msg.is_bigendian else "<"
    pixels = rows.view(np.dtype(dtype).newbyteorder(order))
    return pixels.reshape((height, width, channels) if channels > 1 else (height, width))


def image_to_numpy(msg) -> np.ndarray:
    """sensor_msgs/Image -> array in the message's own encoding.

    (H, W, 3) for rgb8/bgr8, (H, W) for mono8/16UC1/mono16/32FC1. Honours `step` padding and
    `is_bigendian`; the result is native-endian and owns its memory (one copy of the pixels).
    """
    dtype, _ = IMAGE_ENCODINGS.get(msg.encoding, (None, 0))
    pixels = image_view(msg)
    return pixels.astype(np.dtype(dtype).newbyteorder("="), copy=True)


def numpy_to_image(pixels: np.ndarray, encoding: str, header=None, typestore=None):
    """Array -> sensor_msgs/Image (little-endian, unpadded step)."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"encoding: unsupported image encoding {encoding!r}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    pixels = np.asarray(pixels)
    want_ndim = 3 if channels > 1 else 2
    if pixels.ndim != want_ndim or (channels > 1 and pixels.shape[2] != channels):
        raise ValueError(f"pixels: shape {pixels.shape} does not fit encoding {encoding}")
    if pixels.dtype != dtype:
        raise ValueError(f"pixels: dtype {pixels.dtype} does not fit encoding {encoding} ({np.dtype(dtype)})")
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    return _msg_class("sensor_msgs/msg/Image", typestore)(
        header=header if header is not None else make_header(0, "", typestore),
        height=height, width=width, encoding=encoding, is_bigendian=0,
        step=width * channels * np.dtype(dtype).itemsize,
        data=_array_field(data.view(np.uint8), "B", typestore))


COLOR_ENCODINGS = ("rgb8", "bgr8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def color_from_image(msg) -> np.ndarray:
    """Colour image message (rgb8 / bgr8 / mono8) -> (H, W, 3) uint8 RGB (one copy of the pixels)."""
    if msg.encoding in IMAGE_ENCODINGS and msg.encoding not in COLOR_ENCODINGS:
        raise ValueError(f"encoding: {msg.encoding!r} is not a colour encoding (rgb8, bgr8, mono8)")
    pixels = image_view(msg)
    if msg.encoding == "rgb8":
        return np.array(pixels, copy=True)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return np.repeat(pixels[:, :, None], 3, axis=2)


def depth_from_image(msg) -> np.ndarray:
    """Depth image (16UC1/mono16 millimetres, 0 = invalid; or 32FC1 metres) -> float32 metres, NaN = invalid.

    One pass over the pixels from the message's buffer (no intermediate copy)."""
    if msg.encoding in IMAGE_ENCODINGS and msg.encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"encoding: {msg.encoding!r} is not a depth encoding (16UC1, mono16, 32FC1)")
    pixels = image_view(msg)
    if msg.encoding in ("16UC1", "mono16"):
        depth = np.divide(pixels, np.float32(MM_PER_M), dtype=np.float32)
        depth[pixels == 0] = np.nan
        return depth
    depth = pixels.astype(np.float32, copy=True)
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def depth_valid_fraction(msg) -> float:
    """Fraction of valid pixels of a depth image (as `depth_from_image` would keep them), read from
    the message's buffer without converting it."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"encoding: {msg.encoding!r} is not a depth encoding (16UC1, mono16, 32FC1)")
    pixels = image_view(msg)
    if msg.encoding == "32FC1":
        valid = np.count_nonzero(np.isfinite(pixels) & (pixels > 0))
    else:
        valid = np.count_nonzero(pixels)
    return float(valid) / pixels.size


def depth_to_image(depth_m: np.ndarray, encoding: str = "32FC1", header=None, typestore=None):
    """float32 metres (NaN invalid) -> depth image: 32FC1 metres or 16UC1 millimetres (0 invalid)."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    if encoding == "32FC1":
        return numpy_to_image(depth_m, "32FC1", header, typestore)
    if encoding == "16UC1":
        mm = np.where(np.isfinite(depth_m) & (depth_m > 0), np.round(depth_m * MM_PER_M), 0)
        return numpy_to_image(np.clip(mm, 0, 65535).astype(np.uint16), "16UC1", header, typestore)
    raise ValueError(f"encoding: depth encoding must be 32FC1 or 16UC1, got {encoding!r}")


# ----------------------------------------------------------------------------------------------
# sensor_msgs/CameraInfo
# ----------------------------------------------------------------------------------------------
def intrinsics_from_camera_info(msg) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> CameraIntrinsics (K, distortion, size)."""
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ValueError(f"camera_info.width/height: must be positive, got {width}x{height}")
    K = np.asarray(msg.k, dtype=float)
    if K.size != 9:
        raise ValueError(f"camera_info.k: expected 9 values, got {K.size}")
    if not np.all(np.isfinite(K)) or K[0] <= 0 or K[4] <= 0:
        raise ValueError(f"camera_info.k: invalid intrinsic matrix {K.tolist()}")
    return CameraIntrinsics.from_K(K.reshape(3, 3), width, height,
                                   distortion=tuple(np.asarray(msg.d, dtype=float).tolist()),
                                   distortion_model=msg.distortion_model or "plumb_bob")


def camera_info_from_intrinsics(intr: CameraIntrinsics, header=None, typestore=None):
    """CameraIntrinsics -> sensor_msgs/CameraInfo (R = identity, P = [K | 0])."""
    K = intr.K
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _msg_class("sensor_msgs/msg/RegionOfInterest", typestore)(
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    f64 = (lambda a: np.asarray(a, dtype=np.float64).reshape(-1))
    return _msg_class("sensor_msgs/msg/CameraInfo", typestore)(
        header=header if header is not None else make_header(0, "", typestore),
        height=intr.height, width=intr.width, distortion_model=intr.distortion_model,
        d=_array_field(list(intr.distortion), "d", typestore), k=f64(K), r=f64(np.eye(3)), p=f64(P),
        binning_x=0, binning_y=0, roi=roi)


# ----------------------------------------------------------------------------------------------
# mu0_msgs/RGBD
# ----------------------------------------------------------------------------------------------
def rgbd_msg_to_frame(msg) -> RGBDFrame:
    """mu0_msgs/RGBD -> RGBDFrame (colour as RGB, depth as float32 metres; each image decoded once)."""
    return RGBDFrame(stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=msg.header.frame_id,
                     color=color_from_image(msg.color), depth=depth_from_image(msg.depth),
                     intrinsics=intrinsics_from_camera_info(msg.camera_info))


def frame_to_rgbd_msg(frame: RGBDFrame, typestore=None, depth_encoding: str = "32FC1"):
    """RGBDFrame -> mu0_msgs/RGBD (rgb8 colour, 32FC1 metre depth or 16UC1 millimetres, shared header)."""
    header = make_header(frame.stamp_ns, frame.frame_id, typestore)
    return _msg_class("mu0_msgs/msg/RGBD", typestore)(
        header=header,
        color=numpy_to_image(frame.color, "rgb8", make_header(frame.stamp_ns, frame.frame_id, typestore), typestore),
        depth=depth_to_image(frame.depth, depth_encoding, make_header(frame.stamp_ns, frame.frame_id, typestore),
                             typestore),
        camera_info=camera_info_from_intrinsics(
            frame.intrinsics, make_header(frame.stamp_ns, frame.frame_id, typestore), typestore))


def rgbd_msg_from_images(color_msg, depth_msg, info_msg, typestore=None):
    """A matched colour / depth / camera_info set -> mu0_msgs/RGBD WITHOUT decoding the images.

    The depth image travels as it came (16UC1 / mono16 millimetres, or 32FC1 metres: RGBD.msg
    allows each; `depth_from_image` reads either), and an rgb8 colour image too; bgr8 / mono8
    colour is converted to rgb8 (RGBD.msg). Every part gets the colour image's header (the frame's
    stamp and optical frame). The caller has validated the set (`mu0_perception.sync`)."""
    header = color_msg.header
    if color_msg.encoding != "rgb8":
        color_msg = numpy_to_image(color_from_image(color_msg), "rgb8", header, typestore)
    color_msg.header = header
    depth_msg.header = header
    info_msg.header = header
    return _msg_class("mu0_msgs/msg/RGBD", typestore)(header=header, color=color_msg, depth=depth_msg,
                                                      camera_info=info_msg)


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------
def _point(xyz, typestore):
    return _msg_class("geometry_msgs/msg/Point", typestore)(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _points_to_numpy(points, field: str) -> np.ndarray:
    out = np.array([(p.x, p.y, p.z) for p in points], dtype=np.float64).reshape(-1, 3)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{field}: non-finite coordinates")
    return out


def transform_to_rigid(msg) -> RigidTransform:
    """geometry_msgs/Transform -> RigidTransform."""
    t, q = msg.translation, msg.rotation
    return RigidTransform.from_quat_xyzw([q.x, q.y, q.z, q.w], [t.x, t.y, t.z])


def rigid_to_transform(tf: RigidTransform, typestore=None):
    q = tf.to_quat_xyzw()
    t = tf.translation
    return _msg_class("geometry_msgs/msg/Transform", typestore)(
        translation=_msg_class("geometry_msgs/msg/Vector3", typestore)(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        rotation=_msg_class("geometry_msgs/msg/Quaternion", typestore)(
            x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def pose_to_rigid(pose) -> RigidTransform:
    """geometry_msgs/Pose -> RigidTransform (the pose of a frame in its parent)."""
    p, q = pose.position, pose.orientation
    return RigidTransform.from_quat_xyzw([q.x, q.y, q.z, q.w], [p.x, p.y, p.z])


def rigid_to_pose(tf: RigidTransform, typestore=None):
    q = tf.to_quat_xyzw()
    return _msg_class("geometry_msgs/msg/Pose", typestore)(
        position=_point(tf.translation, typestore),
        orientation=_msg_class("geometry_msgs/msg/Quaternion", typestore)(
            x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def named_points_to_dict(msg) -> dict:
    """mu0_msgs/NamedPoints -> {name: (3,) metres}."""
    if len(msg.names) != len(msg.points):
        raise ValueError(f"names/points: {len(msg.names)} names but {len(msg.points)} points")
    return dict(zip(msg.names, _points_to_numpy(msg.points, "points")))


def dict_to_named_points(points: dict, stamp_ns: int, frame_id: str, typestore=None):
    return _msg_class("mu0_msgs/msg/NamedPoints", typestore)(
        header=make_header(stamp_ns, frame_id, typestore), names=list(points),
        points=[_point(p, typestore) for p in points.values()])


# ----------------------------------------------------------------------------------------------
# mu0_msgs/TraceArray
# ----------------------------------------------------------------------------------------------
def trace_set_to_msg(traces: TraceSet, typestore=None):
    """TraceSet -> mu0_msgs/TraceArray."""
    trace_cls = _msg_class("mu0_msgs/msg/Trace", typestore)
    knots = _array_field(traces.knots, "d", typestore)
    items = []
    for i in range(len(traces)):
        items.append(trace_cls(
            query_id=int(traces.query_ids[i]), entity=str(traces.entities[i]),
            pixel_u=float(traces.pixels[i, 0]), pixel_v=float(traces.pixels[i, 1]),
            position=_point(traces.positions[i], typestore), degree=int(traces.degree),
            knots=knots if typestore is not None else array.array("d", knots),
            control_points=[_point(p, typestore) for p in traces.control_points[i]],
            samples=[_point(p, typestore) for p in traces.samples[i]],
            validity=_array_field(traces.validity[i], "f", typestore),
            confidence=float(traces.confidence[i])))
    return _msg_class("mu0_msgs/msg/TraceArray", typestore)(
        header=make_header(traces.stamp_ns, traces.frame_id, typestore),
        instruction=traces.instruction, model_id=traces.model_id,
        horizon_steps=int(traces.horizon_steps), step_period=float(traces.step_period),
        camera_to_frame=rigid_to_transform(traces.camera_to_frame, typestore), traces=items)


def trace_msg_to_set(msg) -> TraceSet:
    """mu0_msgs/TraceArray -> TraceSet. Raises ValueError naming the field on inconsistent input."""
    horizon = int(msg.horizon_steps)
    if horizon <= 0 or horizon > MAX_HORIZON_STEPS:
        raise ValueError(f"horizon_steps: must be in 1..{MAX_HORIZON_STEPS}, got {horizon}")
    if not (math.isfinite(msg.step_period) and msg.step_period > 0):
        raise ValueError(f"step_period: must be positive, got {msg.step_period}")
    n = len(msg.traces)
    if n > MAX_TRACES:
        raise ValueError(f"traces: {n} traces, more than {MAX_TRACES}")
    if n == 0:
        knots, degree, num_ctrl = np.zeros(0), 3, 0
    else:
        first = msg.traces[0]
        if len(first.control_points) > MAX_CONTROL_POINTS or len(first.knots) > MAX_KNOTS:
            raise ValueError(f"traces[0]: {len(first.control_points)} control points / {len(first.knots)} knots "
                             f"(max {MAX_CONTROL_POINTS} / {MAX_KNOTS})")
        knots, degree, num_ctrl = np.asarray(first.knots, dtype=float), int(first.degree), len(first.control_points)
    # every length is checked before the (n, horizon+1, 3) arrays are allocated
    for i, tr in enumerate(msg.traces):
        if len(tr.samples) != horizon + 1:
            raise ValueError(f"traces[{i}].samples: {len(tr.samples)} samples, expected horizon_steps+1 = {horizon + 1}")
        if len(tr.validity) != horizon + 1:
            raise ValueError(f"traces[{i}].validity: {len(tr.validity)} values, expected {horizon + 1}")
        if len(tr.control_points) != num_ctrl or int(tr.degree) != degree or len(tr.knots) != len(knots):
            raise ValueError(f"traces[{i}]: spline (degree/knots/control_points) differs from traces[0]")
    ctrl = np.zeros((n, num_ctrl, 3))
    samples = np.zeros((n, horizon + 1, 3))
    validity = np.zeros((n, horizon + 1), dtype=np.float32)
    for i, tr in enumerate(msg.traces):
        ctrl[i] = _points_to_numpy(tr.control_points, f"traces[{i}].control_points")
        samples[i] = _points_to_numpy(tr.samples, f"traces[{i}].samples")
        v = np.asarray(tr.validity, dtype=np.float32)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"traces[{i}].validity: non-finite values")
        validity[i] = v
    return TraceSet(
        stamp_ns=stamp_to_ns(msg.header.stamp), frame_id=msg.header.frame_id,
        instruction=msg.instruction, model_id=msg.model_id, horizon_steps=horizon,
        step_period=float(msg.step_period),
        query_ids=np.array([t.query_id for t in msg.traces], dtype=np.uint32),
        entities=[t.entity for t in msg.traces],
        pixels=np.array([(t.pixel_u, t.pixel_v) for t in msg.traces], dtype=np.float32).reshape(n, 2),
        positions=_points_to_numpy([t.position for t in msg.traces], "traces[].position").reshape(n, 3),
        knots=knots, control_points=ctrl, samples=samples, validity=validity,
        confidence=np.array([t.confidence for t in msg.traces], dtype=np.float32),
        degree=degree, camera_to_frame=transform_to_rigid(msg.camera_to_frame))


# ----------------------------------------------------------------------------------------------
# serialized (CDR) fast paths: TraceArray and MarkerArray without per-point Python objects
# ----------------------------------------------------------------------------------------------
# A TraceArray of 24 traces holds ~1000 geometry_msgs/Point; building them as rclpy objects and
# serializing them cost mu0_node more per frame than the model itself. These functions write (and
# read) the same messages' serialized form directly from numpy arrays: plain little-endian CDR
# (XCDR1, what rmw_fastrtps / ros2 bag use), which `Publisher.publish(bytes)` sends as is and a
# `raw=True` subscription receives. Measured for 24 traces: build + serialize 27 ms -> 0.4 ms,
# deserialize + read 17 ms -> 0.8 ms (this 2-core machine, loaded). test_foundation_convert pins them against rclpy's and rosbags'
# own (de)serializers.
CDR_HEADER = b"\x00\x01\x00\x00"   # encapsulation: PLAIN_CDR, little endian


def _pad(buf: bytearray, n: int) -> None:
    """Align the next value to n bytes (CDR alignment counts from after the 4-byte encapsulation)."""
    buf += b"\x00" * (-(len(buf) - 4) % n)


def _put_string(buf: bytearray, text: str) -> None:
    data = str(text).encode("utf-8")
    _pad(buf, 4)
    buf += _struct.pack("<I", len(data) + 1)
    buf += data
    buf += b"\x00"


def _put_header(buf: bytearray, stamp_ns: int, frame_id: str) -> None:
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f"stamp: negative time {stamp_ns} ns")
    _pad(buf, 4)
    buf += _struct.pack("<iI", stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)
    _put_string(buf, frame_id)


def _le(values, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))


def _rows(a: np.ndarray, n: int) -> list:
    """The bytes of each of the n rows of a C-contiguous array, from one conversion of the whole."""
    data = memoryview(a.tobytes())
    step = a.nbytes // n if n else 0
    return [data[i * step:(i + 1) * step] for i in range(n)]


def trace_set_to_cdr(traces: TraceSet) -> bytes:
    """TraceSet -> the serialized mu0_msgs/TraceArray (same message as `trace_set_to_msg` builds)."""
    buf = bytearray(CDR_HEADER)
    _put_header(buf, traces.stamp_ns, traces.frame_id)
    _put_string(buf, traces.instruction)
    _put_string(buf, traces.model_id)
    _pad(buf, 4)
    buf += _struct.pack("<If", int(traces.horizon_steps), float(traces.step_period))
    tf = traces.camera_to_frame
    _pad(buf, 8)
    buf += _le(np.concatenate([tf.translation, tf.to_quat_xyzw()]), "f8").tobytes()
    n = len(traces)
    buf += _struct.pack("<I", n)
    # every array converted (and turned into bytes) once; per trace only byte slices of them are
    # copied into the buffer
    knots = _le(traces.knots, "f8")
    knots_part = _struct.pack("<I", len(knots))
    knots_bytes = knots.tobytes()
    ctrl, samples = _le(traces.control_points, "f8"), _le(traces.samples, "f8")
    positions, pixels = _le(traces.positions, "f8"), _le(traces.pixels, "f4")
    validity, confidence = _le(traces.validity, "f4"), _le(traces.confidence, "f4")
    ids = np.asarray(traces.query_ids).astype(np.int64)
    degree = _struct.pack("<B", int(traces.degree))
    num_ctrl = _struct.pack("<I", ctrl.shape[1] if ctrl.ndim == 3 else 0)
    num_samples = _struct.pack("<I", samples.shape[1] if samples.ndim == 3 else 0)
    num_validity = _struct.pack("<I", validity.shape[1] if validity.ndim == 2 else 0)
    rows = zip(ids.tolist(), traces.entities, _rows(pixels, n), _rows(positions, n), _rows(ctrl, n),
               _rows(samples, n), _rows(validity, n), _rows(confidence, n))
    for qid, entity, pixel, position, ctrl_i, samples_i, validity_i, confidence_i in rows:
        _pad(buf, 4)
        buf += _struct.pack("<I", qid)
        _put_string(buf, entity)
        _pad(buf, 4)
        buf += pixel                              # pixel_u, pixel_v
        _pad(buf, 8)
        buf += position                           # position
        buf += degree
        _pad(buf, 4)
        buf += knots_part
        _pad(buf, 8)                              # rmw_fastrtps aligns even an empty sequence
        buf += knots_bytes
        buf += num_ctrl                           # Point[]: count, then x, y, z per point (8-aligned)
        _pad(buf, 8)
        buf += ctrl_i
        buf += num_samples
        _pad(buf, 8)
        buf += samples_i
        buf += num_validity
        buf += validity_i
        buf += confidence_i
    return bytes(buf)


def trace_cdr_to_set(data) -> TraceSet:
    """Serialized mu0_msgs/TraceArray -> TraceSet, with the checks of `trace_msg_to_set` (ValueError
    naming the field; every claimed length is checked against the bytes present before allocating)."""
    buf = memoryview(data).cast("B")
    if len(buf) < 4 or bytes(buf[:2]) != CDR_HEADER[:2]:
        raise ValueError(f"TraceArray: not little-endian plain CDR (encapsulation {bytes(buf[:4]).hex()})")
    buf = buf[4:]
    size = len(buf)
    pos = 0

    def need(n: int, field: str) -> None:
        if pos + n > size:
            raise ValueError(f"{field}: message truncated ({size} bytes)")

    def u32(field: str) -> int:
        nonlocal pos
        pos += -pos % 4
        need(4, field)
        pos += 4
        return _struct.unpack_from("<I", buf, pos - 4)[0]

    def string(field: str) -> str:
        nonlocal pos
        n = u32(field)
        need(n, field)
        pos += n
        return bytes(buf[pos - n:pos - 1]).decode("utf-8", errors="replace") if n else ""

    def floats(dtype: str, n: int, field: str) -> tuple[int, int]:
        """Offset of n values (aligned), checked; the caller reads them with np.frombuffer."""
        nonlocal pos
        itemsize = 8 if dtype == "f8" else 4
        pos += -pos % itemsize
        need(n * itemsize, field)
        pos += n * itemsize
        return pos - n * itemsize

    need(8, "header.stamp")
    sec, nanosec = _struct.unpack_from("<iI", buf, 0)
    pos = 8
    frame_id = string("header.frame_id")
    instruction = string("instruction")
    model_id = string("model_id")
    horizon = u32("horizon_steps")
    need(4, "step_period")
    step_period = _struct.unpack_from("<f", buf, pos)[0]
    pos += 4
    if horizon <= 0 or horizon > MAX_HORIZON_STEPS:
        raise ValueError(f"horizon_steps: must be in 1..{MAX_HORIZON_STEPS}, got {horizon}")
    if not (math.isfinite(step_period) and step_period > 0):
        raise ValueError(f"step_period: must be positive, got {step_period}")
    tf = np.frombuffer(buf, "<f8", 7, floats("f8", 7, "camera_to_frame"))
    n = u32("traces")
    if n > MAX_TRACES:
        raise ValueError(f"traces: {n} traces, more than {MAX_TRACES}")
    t1 = horizon + 1
    ids, entities, confidence = [], [], []
    offsets = []    # per trace: (pixels, position, knots, ctrl, samples, validity)
    knots_len = num_ctrl = degree = None
    for i in range(n):
        ids.append(u32(f"traces[{i}].query_id"))
        entities.append(string(f"traces[{i}].entity"))
        o_pix = floats("f4", 2, f"traces[{i}].pixel_u")
        o_pos = floats("f8", 3, f"traces[{i}].position")
        need(1, f"traces[{i}].degree")
        deg = buf[pos]
        pos += 1
        k = u32(f"traces[{i}].knots")
        if k > MAX_KNOTS:
            raise ValueError(f"traces[{i}].knots: {k} entries, more than {MAX_KNOTS}")
        o_knots = floats("f8", k, f"traces[{i}].knots")
        c = u32(f"traces[{i}].control_points")
        if c > MAX_CONTROL_POINTS:
            raise ValueError(f"traces[{i}].control_points: {c} entries, more than {MAX_CONTROL_POINTS}")
        o_ctrl = floats("f8", 3 * c, f"traces[{i}].control_points")
        m = u32(f"traces[{i}].samples")
        if m != t1:
            raise ValueError(f"traces[{i}].samples: {m} samples, expected horizon_steps+1 = {t1}")
        o_samples = floats("f8", 3 * m, f"traces[{i}].samples")
        v = u32(f"traces[{i}].validity")
        if v != t1:
            raise ValueError(f"traces[{i}].validity: {v} values, expected {t1}")
        o_validity = floats("f4", v, f"traces[{i}].validity")
        o_conf = floats("f4", 1, f"traces[{i}].confidence")
        if i == 0:
            knots_len, num_ctrl, degree = k, c, deg
        elif (k, c, deg) != (knots_len, num_ctrl, degree):
            raise ValueError(f"traces[{i}]: spline (degree/knots/control_points) differs from traces[0]")
        confidence.append(_struct.unpack_from("<f", buf, o_conf)[0])
        offsets.append((o_pix, o_pos, o_knots, o_ctrl, o_samples, o_validity))
    num_ctrl = num_ctrl or 0

    def gather(column: int, dtype: str, count: int, shape: tuple) -> np.ndarray:
        out = np.empty((n, count), np.dtype(dtype).newbyteorder("<"))
        for i, off in enumerate(offsets):
            out[i] = np.frombuffer(buf, out.dtype, count, off[column])
        return out.astype(np.dtype(dtype).newbyteorder("="), copy=False).reshape(shape)

    positions = gather(1, "f8", 3, (n, 3))
    ctrl = gather(3, "f8", 3 * num_ctrl, (n, num_ctrl, 3))
    samples = gather(4, "f8", 3 * t1, (n, t1, 3))
    validity = gather(5, "f4", t1, (n, t1))
    for name, arr, what in (("control_points", ctrl, "coordinates"), ("samples", samples, "coordinates"),
                            ("validity", validity, "values")):
        bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if bad.any():
            raise ValueError(f"traces[{int(np.argmax(bad))}].{name}: non-finite {what}")
    if not np.isfinite(positions).all():
        raise ValueError("traces[].position: non-finite coordinates")
    knots = (np.frombuffer(buf, "<f8", knots_len, offsets[0][2]).astype(np.float64) if n else np.zeros(0))
    return TraceSet(
        stamp_ns=int(sec) * 1_000_000_000 + int(nanosec),
        frame_id=frame_id, instruction=instruction, model_id=model_id, horizon_steps=int(horizon),
        step_period=float(step_period), query_ids=np.array(ids, dtype=np.uint32),
        entities=entities, pixels=gather(0, "f4", 2, (n, 2)), positions=positions, knots=knots,
        control_points=ctrl, samples=samples, validity=validity,
        confidence=np.array(confidence, np.float32), degree=int(degree if degree is not None else 3),
        camera_to_frame=RigidTransform.from_quat_xyzw(tf[3:].astype(float), tf[:3].astype(float)))


# ----------------------------------------------------------------------------------------------
# bags: our message definitions for a rosbags typestore
# ----------------------------------------------------------------------------------------------
def mu0_typestore():
    """A rosbags typestore (ROS 2 Jazzy) with mu0_msgs registered from our .msg files."""
    from pathlib import Path

    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = Path(__file__).resolve().parent.parent / "mu0_msgs" / "msg"
    if not msg_dir.is_dir():  # installed layout: share/mu0_msgs/msg
        from ament_index_python.packages import get_package_share_directory

        msg_dir = Path(get_package_share_directory("mu0_msgs")) / "msg"
    types = {}
    for path in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"mu0_msgs/msg/{path.stem}"))
    store.register(types)
    return store


# ----------------------------------------------------------------------------------------------
# robot state and commands, small std messages
# ----------------------------------------------------------------------------------------------
def _f64_field(values, typestore):
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr if typestore is not None else arr.tolist()


def _duration(seconds: float, typestore=None):
    ns = int(round(float(seconds) * 1e9))
    if ns < 0:
        raise ValueError(f"time_from_start: negative duration {seconds} s")
    return _msg_class("builtin_interfaces/msg/Duration", typestore)(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def joint_state_to_arrays(msg):
    """sensor_msgs/JointState -> (stamp_ns, names, positions (J,), velocities (J,) or None)."""
    if len(msg.name) > MAX_JOINTS:
        raise ValueError(f"joint_state.name: {len(msg.name)} names, more than {MAX_JOINTS}")
    names = [str(n) for n in msg.name]
    if len(set(names)) != len(names):
        raise ValueError(f"joint_state.name: duplicates in {names}")
    pos = np.asarray(msg.position, dtype=float).reshape(-1)
    if pos.shape[0] != len(names):
        raise ValueError(f"joint_state.position: {pos.shape[0]} values for {len(names)} names")
    vel = np.asarray(msg.velocity, dtype=float).reshape(-1) if len(msg.velocity) else None
    if vel is not None and vel.shape[0] != len(names):
        raise ValueError(f"joint_state.velocity: {vel.shape[0]} values for {len(names)} names")
    return stamp_to_ns(msg.header.stamp), names, pos, vel


def joint_state_msg(stamp_ns: int, names, positions, velocities=None, typestore=None):
    names = [str(n) for n in names]
    pos = np.asarray(positions, float).reshape(-1)
    if pos.shape[0] != len(names):
        raise ValueError(f"positions: {pos.shape[0]} values for {len(names)} joint names")
    vel = np.zeros(0) if velocities is None else np.asarray(velocities, float).reshape(-1)
    if vel.size and vel.shape[0] != len(names):
        raise ValueError(f"velocities: {vel.shape[0]} values for {len(names)} joint names")
    return _msg_class("sensor_msgs/msg/JointState", typestore)(
        header=make_header(stamp_ns, "", typestore), name=names, position=_f64_field(pos, typestore),
        velocity=_f64_field(vel, typestore), effort=_f64_field(np.zeros(0), typestore))


def joint_trajectory_msg(names, positions, times_from_start, stamp_ns: int = 0, typestore=None):
    """(P, J) or (J,) positions with (P,) times from start in seconds -> JointTrajectory.

    A header stamp of 0 tells joint_trajectory_controller to start the trajectory on receipt.
    """
    names = [str(n) for n in names]
    rows = np.atleast_2d(np.asarray(positions, float))
    times = np.atleast_1d(np.asarray(times_from_start, float))
    if rows.shape[1] != len(names):
        raise ValueError(f"positions: {rows.shape[1]} values per point for {len(names)} joint names")
    if times.shape != (rows.shape[0],):
        raise ValueError(f"times_from_start: {times.shape[0]} times for {rows.shape[0]} points")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times_from_start: must be strictly increasing")
    point_cls = _msg_class("trajectory_msgs/msg/JointTrajectoryPoint", typestore)
    empty = _f64_field(np.zeros(0), typestore)
    points = [point_cls(positions=_f64_field(r, typestore), velocities=empty, accelerations=empty,
                        effort=empty, time_from_start=_duration(t, typestore)) for r, t in zip(rows, times)]
    return _msg_class("trajectory_msgs/msg/JointTrajectory", typestore)(
        header=make_header(stamp_ns, "", typestore), joint_names=names, points=points)


def joint_trajectory_to_points(msg) -> tuple[list, np.ndarray, np.ndarray]:
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


def float64_array_msg(values, typestore=None):
    layout = _msg_class("std_msgs/msg/MultiArrayLayout", typestore)(dim=[], data_offset=0)
    return _msg_class("std_msgs/msg/Float64MultiArray", typestore)(layout=layout, data=_f64_field(values, typestore))


def float64_array_to_numpy(msg) -> np.ndarray:
    data = np.asarray(msg.data, dtype=float).reshape(-1)
    if not np.all(np.isfinite(data)):
        raise ValueError("data: non-finite values")
    return data


def string_msg(text: str, typestore=None):
    return _msg_class("std_msgs/msg/String", typestore)(data=str(text))


def bool_msg(value: bool, typestore=None):
    return _msg_class("std_msgs/msg/Bool", typestore)(data=bool(value))


def clock_msg(stamp_ns: int, typestore=None):
    return _msg_class("rosgraph_msgs/msg/Clock", typestore)(clock=ns_to_stamp(stamp_ns, typestore))


def pose_stamped_msg(stamp_ns: int, frame_id: str, tf: RigidTransform, typestore=None):
    return _msg_class("geometry_msgs/msg/PoseStamped", typestore)(
        header=make_header(stamp_ns, frame_id, typestore), pose=rigid_to_pose(tf, typestore))


# ----------------------------------------------------------------------------------------------
# RViz markers and query points
# ----------------------------------------------------------------------------------------------
# Plain line-strip data (mu0_policy.trace_postprocess.LineStrip) -> visualization_msgs/MarkerArray;
# the live node and offline replay both call this, so they publish identical markers.
LINE_STRIP, ADD, DELETEALL = 4, 0, 3  # visualization_msgs/Marker constants


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


# a Marker's fields after `colors`, all empty (texture_resource, texture, uv_coordinates, text,
# mesh_resource, mesh_file, mesh_use_embedded_materials): constant bytes, since `colors` ends
# 4-aligned and nothing in them needs more than 4-byte alignment
_MARKER_TAIL = (_struct.pack("<I", 1) + b"\x00\x00\x00\x00"              # texture_resource "" (+pad)
                + _struct.pack("<iII", 0, 0, 1) + b"\x00\x00\x00\x00"     # texture.header (stamp 0, "")
                + _struct.pack("<I", 1) + b"\x00\x00\x00\x00"             # texture.format ""
                + _struct.pack("<I", 0)                                # texture.data []
                + _struct.pack("<I", 0)                                # uv_coordinates []
                + _struct.pack("<I", 1) + b"\x00\x00\x00\x00"             # text ""
                + _struct.pack("<I", 1) + b"\x00\x00\x00\x00"             # mesh_resource ""
                + _struct.pack("<I", 1) + b"\x00\x00\x00\x00"             # mesh_file.filename ""
                + _struct.pack("<I", 0)                                # mesh_file.data []
                + b"\x00")                                            # mesh_use_embedded_materials


def _marker_cdr(buf: bytearray, stamp_ns, frame_id, ns, marker_id, action, lifetime_s, width=0.0,
                points=None, colors=None) -> None:
    """One visualization_msgs/Marker LINE_STRIP, field for field as `_empty_marker` fills it."""
    _put_header(buf, stamp_ns, frame_id)
    _put_string(buf, ns)
    _pad(buf, 4)
    buf += _struct.pack("<iii", int(marker_id), LINE_STRIP, action)
    _pad(buf, 8)
    buf += _struct.pack("<10d", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, float(width), 0.0, 0.0)  # pose, scale
    buf += _struct.pack("<4f", 1.0, 1.0, 1.0, 1.0)                                          # color
    life = _duration(lifetime_s)
    buf += _struct.pack("<iIB", life.sec, life.nanosec, 0)                                  # lifetime, frame_locked
    pts = np.zeros((0, 3)) if points is None else points
    cols = np.zeros((0, 4)) if colors is None else colors
    _pad(buf, 4)
    buf += _struct.pack("<I", len(pts))
    _pad(buf, 8)
    buf += _le(pts, "f8").tobytes()
    buf += _struct.pack("<I", len(cols))
    buf += _le(cols, "f4").tobytes()
    _pad(buf, 4)
    buf += _MARKER_TAIL


def marker_array_cdr(strips, lifetime_s: float, deleted_namespaces=(), stamp_ns: int = 0, frame_id: str = "") -> bytes:
    """`marker_array_msg`, serialized directly (no per-point Python objects)."""
    buf = bytearray(CDR_HEADER)
    deleted = sorted(deleted_namespaces)
    buf += _struct.pack("<I", len(deleted) + len(strips))
    for ns in deleted:
        _marker_cdr(buf, stamp_ns, frame_id, ns, 0, DELETEALL, 0.0)
    for s in strips:
        _marker_cdr(buf, s.stamp_ns, s.frame_id, s.namespace, s.marker_id, ADD, lifetime_s, s.width, s.points, s.colors)
    return bytes(buf)


def query_points_to_arrays(msg):
    """mu0_msgs/QueryPoints -> (pixels (N, 2) float32, query ids (list, may be empty), entities (list))."""
    n = len(msg.pixel_u)
    if len(msg.pixel_v) != n:
        raise ValueError(f"pixel_v: {len(msg.pixel_v)} entries, pixel_u has {n}")
    if len(msg.query_ids) not in (0, n):
        raise ValueError(f"query_ids: {len(msg.query_ids)} entries, expected 0 or {n}")
    if len(msg.entities) not in (0, n):
        raise ValueError(f"entities: {len(msg.entities)} entries, expected 0 or {n}")
    pixels = np.stack([np.asarray(msg.pixel_u, np.float32), np.asarray(msg.pixel_v, np.float32)], axis=1).reshape(n, 2)
    if not np.all(np.isfinite(pixels)):
        raise ValueError("pixel_u/pixel_v: non-finite values")
    return pixels, [int(i) for i in msg.query_ids], [str(e) for e in msg.entities]
