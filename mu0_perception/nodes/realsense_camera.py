"""realsense_camera: an Intel RealSense camera through pyrealsense2, for users without realsense-ros.

Publishes the realsense-ros topic names (namespace /camera/camera), so rgbd_sync works unchanged:
  color/image_raw (rgb8), color/camera_info, and
  align true (default): aligned_depth_to_color/image_raw (16UC1 millimetres, 0 = invalid) and
    aligned_depth_to_color/camera_info — librealsense's rs.align reprojects the depth image into the
    colour camera (its intrinsics and the depth->colour extrinsics), so a depth pixel (u, v) is the
    depth of colour pixel (u, v) and both carry the colour intrinsics and frame_id;
  align false: depth/image_rect_raw + depth/camera_info in the DEPTH camera's own geometry (its
    intrinsics, frame `depth_frame_id`), as realsense-ros publishes unaligned depth — not on the
    aligned topic, which would claim a geometry the image does not have.
Parameters: width, height, fps, serial ('' = first device), align, frame_id, depth_frame_id,
topic_prefix, use_device_time (stamp frames with the device's global/system timestamp when it has
one; else the ROS clock at arrival). Frames are read on a worker thread; QoS is keep-last 5
best-effort like realsense-ros' sensor-data default.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from mu0_core.camera import CameraIntrinsics
from mu0_ros import convert
from mu0_ros.diagnostics import RuntimeMonitor
from mu0_ros.qos import sensor_qos


def intrinsics_from_rs(intr) -> CameraIntrinsics:
    """pyrealsense2.intrinsics -> CameraIntrinsics (Brown-Conrady coefficients as plumb_bob)."""
    return CameraIntrinsics(int(intr.width), int(intr.height), float(intr.fx), float(intr.fy), float(intr.ppx),
                            float(intr.ppy), "plumb_bob", tuple(float(c) for c in intr.coeffs))


def frameset_to_arrays(frames, depth_scale: float):
    """A colour+depth frameset -> (device_ms, colour (H, W, 3) uint8 RGB, depth float32 metres NaN-invalid,
    colour intrinsics, depth intrinsics); None when either frame is missing (the syncer can deliver
    singles). After rs.align the depth frame's profile is the colour stream's, so both intrinsics
    are the colour camera's."""
    color = frames.get_color_frame()
    depth = frames.get_depth_frame()
    if not color or not depth:
        return None
    rgb = np.asanyarray(color.get_data()).copy()
    raw = np.asanyarray(depth.get_data())
    depth_m = raw.astype(np.float32) * np.float32(depth_scale)
    depth_m[raw == 0] = np.nan
    intr = intrinsics_from_rs(color.get_profile().as_video_stream_profile().get_intrinsics())
    depth_intr = intrinsics_from_rs(depth.get_profile().as_video_stream_profile().get_intrinsics())
    if depth_m.shape != (depth_intr.height, depth_intr.width):
        raise RuntimeError(f"depth image {depth_m.shape[::-1]} does not match its profile "
                           f"{depth_intr.width}x{depth_intr.height}")
    return float(frames.get_timestamp()), rgb, depth_m, intr, depth_intr


class RealsenseCameraNode(Node):
    def __init__(self, source=None, depth_scale: float | None = None, **kwargs):
        """`source`: anything with wait_for_frames(timeout_ms) (pyrealsense2 pipeline or syncer);
        None opens the first (or `serial`) device with a pipeline."""
        super().__init__("realsense_camera", **kwargs)
        p = self.declare_parameter
        width, height, fps = int(p("width", 640).value), int(p("height", 480).value), int(p("fps", 30).value)
        serial = p("serial", "").value
        align = bool(p("align", True).value)
        self.frame_id = p("frame_id", "camera_color_optical_frame").value
        self.depth_frame_id = p("depth_frame_id", "camera_depth_optical_frame").value
        prefix = p("topic_prefix", "/camera/camera").value.rstrip("/")
        self.use_device_time = bool(p("use_device_time", True).value)
        import pyrealsense2 as rs

        self._rs = rs
        self._pipeline = None
        if source is None:
            config = rs.config()
            if serial:
                config.enable_device(serial)
            config.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
            config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
            self._pipeline = rs.pipeline()
            profile = self._pipeline.start(config)
            depth_scale = profile.get_device().first_depth_sensor().get_depth_scale()
            source = self._pipeline
        self.source = source
        self.depth_scale = float(depth_scale if depth_scale is not None else 0.001)
        self.align = rs.align(rs.stream.color) if align else None
        qos = sensor_qos(5)
        self.pubs = {
            "color": self.create_publisher(Image, f"{prefix}/color/image_raw", qos),
            "color_info": self.create_publisher(CameraInfo, f"{prefix}/color/camera_info", qos),
        }
        depth_ns = "aligned_depth_to_color" if align else "depth"
        self.pubs["depth"] = self.create_publisher(
            Image, f"{prefix}/{depth_ns}/{'image_raw' if align else 'image_rect_raw'}", qos)
        self.pubs["depth_info"] = self.create_publisher(CameraInfo, f"{prefix}/{depth_ns}/camera_info", qos)
        self.monitor = RuntimeMonitor("mu0: realsense_camera")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frames = self.source.wait_for_frames(500)
            except RuntimeError:     # timeout: no frame within 500 ms
                self.monitor.count("timeouts")
                continue
            try:
                if self.align is not None:
                    frames = self.align.process(frames)
                arrays = frameset_to_arrays(frames, self.depth_scale)
            except RuntimeError as exc:
                self.monitor.count("bad_framesets")
                self.get_logger().warning(f"dropped a frameset: {exc}", throttle_duration_sec=5.0)
                continue
            if arrays is None:
                self.monitor.count("incomplete_framesets")
                continue
            self.publish(*arrays)

    def publish(self, device_ms, color, depth_m, intr, depth_intr=None) -> None:
        """Aligned (self.align): the depth is in the colour geometry (colour intrinsics + frame);
        unaligned: the depth camera's own intrinsics and frame."""
        stamp_ns = int(round(device_ms * 1e6)) if self.use_device_time else self.get_clock().now().nanoseconds
        header = lambda frame: convert.make_header(stamp_ns, frame)  # noqa: E731
        aligned = self.align is not None
        d_intr = intr if aligned or depth_intr is None else depth_intr
        d_frame = self.frame_id if aligned else self.depth_frame_id
        if aligned and depth_m.shape != (intr.height, intr.width):
            self.monitor.count("bad_framesets")
            return
        self.pubs["color"].publish(convert.numpy_to_image(color, "rgb8", header(self.frame_id)))
        self.pubs["depth"].publish(convert.depth_to_image(depth_m, "16UC1", header(d_frame)))
        self.pubs["color_info"].publish(convert.camera_info_from_intrinsics(intr, header(self.frame_id)))
        self.pubs["depth_info"].publish(convert.camera_info_from_intrinsics(d_intr, header(d_frame)))
        self.monitor.count("published")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self._pipeline is not None:
            self._pipeline.stop()


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    node = None
    try:
        node = RealsenseCameraNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError as exc:
        print(f"realsense_camera: cannot open the camera: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
