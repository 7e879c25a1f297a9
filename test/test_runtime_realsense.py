"""realsense_camera over real DDS. No RealSense camera exists on this machine: pyrealsense2's
software_device stands in for it (the real SDK: sensors, stream profiles, syncer, align), the one
mock the project allows. Frames flow camera node -> rgbd_sync -> /mu0/rgbd.

The depth camera has its own intrinsics (80x60, fx 70) and sits 5.9 cm / -0.5 cm away from
the colour camera (64x48, fx 55), as on a real D4xx: with align (the default) every aligned depth
pixel must reproject through the colour intrinsics and the extrinsic onto the raw depth image at
that depth."""
import threading
import time

import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2")
rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from mu0_msgs.msg import RGBD  # noqa: E402
from mu0_perception.nodes.realsense_camera import RealsenseCameraNode  # noqa: E402
from mu0_perception.nodes.rgbd_sync import RGBDSyncNode  # noqa: E402
from mu0_ros import convert  # noqa: E402
from mu0_ros.qos import reliable_qos, sensor_qos  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

W, H = 64, 48           # colour
WD, HD = 80, 60         # depth
# P_color = P_depth + t (identity rotation). Parallel optical axes as on a D4xx: librealsense's align
# keeps each depth pixel's z, which equals the colour camera's z only when t_z = 0 and R = I
T_DEPTH_TO_COLOR = np.array([0.059, -0.005, 0.0])       # a D455's colour-depth offset


def rs_intrinsics(w, h, f):
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = w, h, f, f, (w - 1) / 2, (h - 1) / 2
    intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
    return intr


DEPTH_INTR, COLOR_INTR = rs_intrinsics(WD, HD, 70.0), rs_intrinsics(W, H, 55.0)


def software_camera():
    dev = rs.software_device()
    depth_sensor, color_sensor = dev.add_sensor("Depth"), dev.add_sensor("Color")
    profiles = []
    for sensor, stype, uid, bpp, fmt, (w, h), intr in (
            (depth_sensor, rs.stream.depth, 0, 2, rs.format.z16, (WD, HD), DEPTH_INTR),
            (color_sensor, rs.stream.color, 1, 3, rs.format.rgb8, (W, H), COLOR_INTR)):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt, vs.intrinsics = \
            stype, 0, uid, w, h, 30, bpp, fmt, intr
        profiles.append(sensor.add_video_stream(vs))
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    ext = rs.extrinsics()
    ext.rotation, ext.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], T_DEPTH_TO_COLOR.tolist()
    profiles[0].register_extrinsics_to(profiles[1], ext)
    syncer = rs.syncer()
    for sensor, prof in zip((depth_sensor, color_sensor), profiles):
        sensor.open(prof)
        sensor.start(syncer)
    return dev, (depth_sensor, color_sensor), profiles, syncer


def inject(sensors, profiles, k, t_ms, depth_mm, color):
    for sensor, prof, pixels, bpp, w in ((sensors[0], profiles[0], depth_mm, 2, WD),
                                         (sensors[1], profiles[1], color, 3, W)):
        f = rs.software_video_frame()
        f.pixels, f.bpp, f.stride, f.timestamp = pixels, bpp, bpp * w, t_ms
        f.domain, f.frame_number, f.profile = rs.timestamp_domain.system_time, k, prof.as_video_stream_profile()
        sensor.on_video_frame(f)


def scene():
    """Raw depth (mm): a wall at 0.8 m, a box at 0.5 m, a band of invalid pixels; a red colour image."""
    depth_mm = np.full((HD, WD), 800, np.uint16)
    depth_mm[20:34, 30:44] = 500
    depth_mm[:, :6] = 0
    color = np.zeros((H, W, 3), np.uint8)
    color[..., 0] = 200
    return depth_mm, color


def reprojection_errors_mm(depth_m, raw_mm):
    """For every valid pixel of a colour-geometry depth image: deproject with the colour
    intrinsics, move into the depth camera, project with the depth intrinsics and compare with the
    raw depth there. Only pixels whose raw 3x3 neighbourhood is one surface count (no edge)."""
    v, u = np.nonzero(np.isfinite(depth_m))
    z = depth_m[v, u].astype(np.float64)
    p_color = np.stack([(u - COLOR_INTR.ppx) / COLOR_INTR.fx * z, (v - COLOR_INTR.ppy) / COLOR_INTR.fy * z, z], -1)
    p_depth = p_color - T_DEPTH_TO_COLOR
    ud = np.round(DEPTH_INTR.fx * p_depth[:, 0] / p_depth[:, 2] + DEPTH_INTR.ppx).astype(int)
    vd = np.round(DEPTH_INTR.fy * p_depth[:, 1] / p_depth[:, 2] + DEPTH_INTR.ppy).astype(int)
    inside = (ud >= 1) & (ud < WD - 1) & (vd >= 1) & (vd < HD - 1)
    ud, vd, p_depth = ud[inside], vd[inside], p_depth[inside]
    patch = np.stack([raw_mm[vd + dy, ud + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1).astype(float)
    flat = (patch.max(-1) == patch.min(-1)) & (patch[:, 4] > 0)
    return np.abs(raw_mm[vd, ud][flat] - 1000 * p_depth[flat, 2]), int(inside.sum())


class Rig:
    def __init__(self, align: bool):
        rclpy.init()
        self.dev, self.sensors, self.profiles, self.syncer = software_camera()
        self.camera = RealsenseCameraNode(source=self.syncer, depth_scale=0.001,
                                          parameter_overrides=[] if align else [Parameter("align", value=False)])
        self.sync = RGBDSyncNode()
        self.probe = rclpy.create_node("rs_probe")
        self.got = {"rgbd": [], "raw": [], "raw_info": []}
        self.probe.create_subscription(RGBD, "/mu0/rgbd", self.got["rgbd"].append, reliable_qos(20))
        self.probe.create_subscription(Image, "/camera/camera/depth/image_rect_raw", self.got["raw"].append,
                                       sensor_qos(20))
        self.probe.create_subscription(CameraInfo, "/camera/camera/depth/camera_info", self.got["raw_info"].append,
                                       sensor_qos(20))
        self.executor = MultiThreadedExecutor(num_threads=3)
        for n in (self.camera, self.sync, self.probe):
            self.executor.add_node(n)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def run(self, depth_mm, color, n=8):
        time.sleep(1.5)
        t0 = time.time() * 1e3
        for k in range(n):
            inject(self.sensors, self.profiles, k, t0 + k * 33.0, depth_mm, color)
            time.sleep(0.05)
        return t0

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.camera.close()
        for n in (self.camera, self.sync, self.probe):
            n.destroy_node()
        rclpy.try_shutdown()


def wait_for(items, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(items) < n:
        time.sleep(0.05)
    return len(items) >= n


def test_aligned_depth_reaches_mu0_rgbd_in_the_colour_geometry_and_reprojects_onto_the_raw_depth():
    rig = Rig(align=True)                     # the node's default
    try:
        depth_mm, color = scene()
        t0 = rig.run(depth_mm, color)
        assert wait_for(rig.got["rgbd"], 4)
        frame = convert.rgbd_msg_to_frame(rig.got["rgbd"][-1])
        assert frame.frame_id == "camera_color_optical_frame"
        # the colour camera's geometry: its size and intrinsics, not the depth camera's
        assert frame.depth.shape == (H, W) and frame.intrinsics.fx == 55.0 and frame.intrinsics.width == W
        assert (frame.color[..., 0] == 200).all()
        assert abs(frame.stamp_ns / 1e6 - (t0 + 7 * 33.0)) < 100.0
        valid = np.isfinite(frame.depth)
        assert valid.mean() > 0.7
        # wall and box at their depths (16UC1 millimetres -> metres)
        vals = np.unique(np.round(frame.depth[valid] * 1000).astype(int))
        assert set(vals) == {500, 800}, vals
        err, n_inside = reprojection_errors_mm(frame.depth, depth_mm)
        assert len(err) > 0.6 * valid.sum() and n_inside > 0.6 * valid.sum()
        assert np.mean(err <= 1.5) > 0.98, np.percentile(err, [50, 90, 99])
        # the box seen by the colour camera: where the geometry puts it, shifted by the baseline
        box = np.round(frame.depth * 1000) == 500
        vs, us = np.nonzero(box)
        u_expected = COLOR_INTR.fx * ((np.array([30, 43]) - DEPTH_INTR.ppx) / DEPTH_INTR.fx * 0.5 + T_DEPTH_TO_COLOR[0]) / 0.5 \
            + COLOR_INTR.ppx
        assert abs(us.min() - u_expected[0]) <= 1.5 and abs(us.max() - u_expected[1]) <= 1.5
        # discriminates: the raw depth merely resized to the colour size does not reproject
        import cv2

        naive = cv2.resize(depth_mm, (W, H), interpolation=cv2.INTER_NEAREST).astype(np.float32) / 1000
        naive[naive != 0.5] = np.nan            # its box pixels: most land on the wall
        naive_err, _ = reprojection_errors_mm(naive, depth_mm)
        aligned_box = np.where(box, frame.depth, np.nan)
        box_err, _ = reprojection_errors_mm(aligned_box, depth_mm)
        assert np.mean(box_err <= 1.5) > 0.98 and np.mean(naive_err <= 1.5) < 0.6, \
            (np.mean(box_err <= 1.5), np.mean(naive_err <= 1.5))
        assert not rig.got["raw"]                # aligned mode publishes no unaligned depth
    finally:
        rig.close()


def test_without_align_depth_keeps_its_own_geometry_and_is_not_published_as_aligned():
    rig = Rig(align=False)
    try:
        depth_mm, color = scene()
        rig.run(depth_mm, color)
        assert wait_for(rig.got["raw"], 4) and wait_for(rig.got["raw_info"], 4)
        img, info = rig.got["raw"][-1], rig.got["raw_info"][-1]
        assert (img.width, img.height, img.encoding) == (WD, HD, "16UC1")
        assert img.header.frame_id == info.header.frame_id == "camera_depth_optical_frame"
        intr = convert.intrinsics_from_camera_info(info)
        assert (intr.width, intr.height, intr.fx) == (WD, HD, 70.0)
        np.testing.assert_array_equal(np.frombuffer(bytes(img.data), np.uint16).reshape(HD, WD), depth_mm)
        time.sleep(0.5)
        assert rig.got["rgbd"] == []            # no aligned depth: rgbd_sync has nothing to pair
    finally:
        rig.close()
