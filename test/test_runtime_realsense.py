"""realsense_camera over real DDS. No RealSense camera exists on this machine: pyrealsense2's
software_device stands in for it (the real SDK: sensors, stream profiles, syncer, align), the one
mock the project allows. Frames flow camera node -> rgbd_sync -> /mu0/rgbd."""
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
from mu0_ros.qos import reliable_qos  # noqa: E402

W, H = 64, 48


def software_camera():
    dev = rs.software_device()
    depth_sensor, color_sensor = dev.add_sensor("Depth"), dev.add_sensor("Color")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, 60.0, 60.0, 31.5, 23.5
    intr.model, intr.coeffs = rs.distortion.none, [0.0] * 5
    profiles = []
    for sensor, stype, uid, bpp, fmt in ((depth_sensor, rs.stream.depth, 0, 2, rs.format.z16),
                                         (color_sensor, rs.stream.color, 1, 3, rs.format.rgb8)):
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt, vs.intrinsics = \
            stype, 0, uid, W, H, 30, bpp, fmt, intr
        profiles.append(sensor.add_video_stream(vs))
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    profiles[0].register_extrinsics_to(profiles[1], rs.extrinsics())
    syncer = rs.syncer()
    for sensor, prof in zip((depth_sensor, color_sensor), profiles):
        sensor.open(prof)
        sensor.start(syncer)
    return dev, (depth_sensor, color_sensor), profiles, syncer


def inject(sensors, profiles, k, t_ms, depth_mm, color):
    for sensor, prof, pixels, bpp in ((sensors[0], profiles[0], depth_mm, 2), (sensors[1], profiles[1], color, 3)):
        f = rs.software_video_frame()
        f.pixels, f.bpp, f.stride, f.timestamp = pixels, bpp, bpp * W, t_ms
        f.domain, f.frame_number, f.profile = rs.timestamp_domain.system_time, k, prof.as_video_stream_profile()
        sensor.on_video_frame(f)


def test_software_device_frames_reach_mu0_rgbd_in_metres():
    rclpy.init()
    dev, sensors, profiles, syncer = software_camera()
    # align off: the software device's depth already is the colour image's geometry (same intrinsics,
    # identity extrinsics); librealsense's align on injected frames yields an empty depth here
    camera = RealsenseCameraNode(source=syncer, depth_scale=0.001,
                                 parameter_overrides=[Parameter("align", value=False)])
    sync = RGBDSyncNode()
    probe = rclpy.create_node("rs_probe")
    got = []
    probe.create_subscription(RGBD, "/mu0/rgbd", got.append, reliable_qos(20))
    executor = MultiThreadedExecutor(num_threads=3)
    for n in (camera, sync, probe):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        time.sleep(1.5)
        depth_mm = np.full((H, W), 750, np.uint16)
        depth_mm[:, :8] = 0
        color = np.zeros((H, W, 3), np.uint8)
        color[..., 0] = 200
        t0 = time.time() * 1e3
        for k in range(8):
            inject(sensors, profiles, k, t0 + k * 33.0, depth_mm, color)
            time.sleep(0.05)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < 4:
            time.sleep(0.05)
        assert len(got) >= 4
        frame = convert.rgbd_msg_to_frame(got[-1])
        assert frame.frame_id == "camera_color_optical_frame"
        assert np.allclose(frame.depth[:, 8:], 0.75) and np.isnan(frame.depth[:, :8]).all()
        assert (frame.color[..., 0] == 200).all() and frame.intrinsics.fx == 60.0
        assert abs(frame.stamp_ns / 1e6 - (t0 + 7 * 33.0)) < 100.0
    finally:
        executor.shutdown(timeout_sec=2.0)
        camera.close()
        for n in (camera, sync, probe):
            n.destroy_node()
        rclpy.try_shutdown()
