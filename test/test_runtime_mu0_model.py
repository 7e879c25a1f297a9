"""The bundled μ_0 (checkpoints/mu0_small) inside the node graph: rgbd_sync -> mu0_node over real
rclpy / Fast DDS. Its traces carry the source camera stamps, start at their query points in the
camera frame, and equal what the offline core (mu0_app.replay.pipeline_from_params, the code
`mu0 replay --offline` runs) computes from the same RGBD frame."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from mu0_msgs.msg import RGBD, TraceArray  # noqa: E402
from mu0_app.replay import pipeline_from_params  # noqa: E402
from mu0_core.camera import CameraIntrinsics, deproject  # noqa: E402
from mu0_perception.nodes.rgbd_sync import RGBDSyncNode  # noqa: E402
from mu0_policy.nodes.mu0_node import Mu0Node  # noqa: E402
from mu0_ros import convert  # noqa: E402
from mu0_ros.qos import latched_qos, make_qos, reliable_qos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W, H = 160, 120
INTR = CameraIntrinsics(W, H, 140.0, 140.0, 79.5, 59.5)
COLOR, DEPTH, INFO = ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
                      "/camera/camera/color/camera_info")
PARAMS = {"model": str(ROOT / "checkpoints" / "mu0_small"), "max_queries": 16, "num_samples": 1, "seed": 0,
          "expected_period": 0.1}


def scene(k):
    import cv2

    rng = np.random.default_rng(7)
    img = cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (5, 5), 0)
    img[50:70, 60 + 2 * k:80 + 2 * k] = (220, 30, 30)          # a red block moving right
    depth = np.full((H, W), 900, np.uint16)
    depth[50:70, 60 + 2 * k:80 + 2 * k] = 850
    return img, depth


def test_bundled_mu0_in_the_node_graph_matches_the_offline_core():
    rclpy.init()
    sync = RGBDSyncNode()
    node = Mu0Node(parameter_overrides=[Parameter(k, value=v) for k, v in
                                        {**PARAMS, "autostart": False, "diagnostics_period": 0.3}.items()])
    probe = rclpy.create_node("mu0_model_probe")
    got = {"traces": [], "rgbd": []}
    probe.create_subscription(TraceArray, "/mu0/traces", got["traces"].append, reliable_qos(50))
    probe.create_subscription(RGBD, "/mu0/rgbd", got["rgbd"].append, reliable_qos(50))
    cam_qos = make_qos("reliable", "volatile", 10)
    pubs = {"color": probe.create_publisher(Image, COLOR, cam_qos), "depth": probe.create_publisher(Image, DEPTH, cam_qos),
            "info": probe.create_publisher(CameraInfo, INFO, cam_qos)}
    instruction = probe.create_publisher(String, "/mu0/instruction", latched_qos())
    executor = MultiThreadedExecutor(num_threads=3)
    for n in (sync, node, probe):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        instruction.publish(String(data="push the red block to the right"))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs.values()):
            time.sleep(0.05)
        sent = []
        t0 = time.time_ns()
        for k in range(40):
            stamp = t0 + k * 100_000_000
            header = convert.make_header(stamp, "camera_color_optical_frame")
            img, depth = scene(k)
            pubs["color"].publish(convert.numpy_to_image(img, "rgb8", header))
            pubs["depth"].publish(convert.numpy_to_image(depth, "16UC1", header))
            pubs["info"].publish(convert.camera_info_from_intrinsics(INTR, header))
            sent.append(stamp)
            time.sleep(0.1)
            if len(got["traces"]) >= 4:
                break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(got["traces"]) < 4:
            time.sleep(0.05)
        assert len(got["traces"]) >= 4
        stamps = [convert.stamp_to_ns(m.header.stamp) for m in got["traces"]]
        assert set(stamps) <= set(sent) and stamps == sorted(stamps)
        for msg in got["traces"]:
            ts = convert.trace_msg_to_set(msg)
            assert msg.model_id == "mu0_small" and msg.instruction == "push the red block to the right"
            assert ts.frame_id == "camera_color_optical_frame" and 0 < len(ts) <= 16
            assert np.isfinite(ts.samples).all() and ts.samples.shape[1] == 33
            # camera frame: every trace starts at its query pixel at the depth there
            # (queries within the depth window's reach of the box edge, 3 px, may sample either depth)
            z = np.where((ts.pixels[:, 1] >= 47) & (ts.pixels[:, 1] < 73), np.nan, 0.9)
            far = np.isfinite(z)
            np.testing.assert_allclose(ts.positions[far], deproject(ts.pixels[far], z[far], INTR), atol=2e-3)
            np.testing.assert_allclose(ts.samples[:, 0], ts.positions, atol=1e-6)
        # live == offline for the first processed frame (a fresh pipeline: no history either side)
        first = got["traces"][0]
        frame_msg = next(m for m in got["rgbd"] if m.header.stamp == first.header.stamp)
        offline = pipeline_from_params(PARAMS)
        offline.set_instruction("push the red block to the right")
        out = offline.process(convert.rgbd_msg_to_frame(frame_msg))
        live = convert.trace_msg_to_set(first)
        np.testing.assert_array_equal(out.camera_traces.query_ids, live.query_ids)
        np.testing.assert_allclose(out.camera_traces.samples, live.samples, atol=1e-4)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node._free()
        for n in (sync, node, probe):
            n.destroy_node()
        rclpy.try_shutdown()
