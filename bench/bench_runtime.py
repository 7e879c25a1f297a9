"""End-to-end latency of the runtime graph over real Fast DDS at 10 Hz.

A probe publishes colour/depth/camera_info at 10 Hz stamped with the wall clock, through
rgbd_sync -> mu0_node -> action_expert (not dry-run, sim Sawyer config). Prints p50/p99 of
  camera stamp -> /mu0/traces received   and
  camera stamp -> command received (stamp of the newest traces the probe had seen before it),
and the per-stage times mu0_node reports. Nodes share one process (MultiThreadedExecutor).

    python bench/bench_runtime.py [--seconds 20] [--model baseline:constant_velocity] [--size 320x240]
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", default="baseline:constant_velocity")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--queries", type=int, default=24)
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))

    import cv2
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from mu0_msgs.msg import TraceArray
    from mu0_perception.camera import CameraIntrinsics
    from mu0_perception.nodes.rgbd_sync import RGBDSyncNode
    from mu0_policy.nodes.action_expert_node import ActionExpertNode
    from mu0_policy.nodes.mu0_node import Mu0Node
    from mu0_ros import convert
    from mu0_ros.qos import latched_qos, reliable_qos

    rclpy.init()
    sync = RGBDSyncNode()
    mu0 = Mu0Node(parameter_overrides=[Parameter("model", value=args.model), Parameter("max_queries", value=args.queries),
                                       Parameter("camera_to_base", value=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])])
    mu0.trigger_configure()
    mu0.trigger_activate()
    expert = ActionExpertNode(parameter_overrides=[Parameter("robot_config", value="config/robots/sim_sawyer_joint.yaml"),
                                                   Parameter("dry_run", value=False)])
    probe = rclpy.create_node("bench_probe")
    traces, commands = [], []
    probe.create_subscription(TraceArray, "/mu0/traces",
                              lambda m: traces.append((time.time_ns(), convert.stamp_to_ns(m.header.stamp))), reliable_qos(50))
    probe.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                              lambda m: commands.append((time.time_ns(), traces[-1][1] if traces else None)), reliable_qos(50))
    pubs = [probe.create_publisher(t, n, reliable_qos(5)) for t, n in (
        (Image, "/camera/camera/color/image_raw"), (Image, "/camera/camera/aligned_depth_to_color/image_raw"),
        (CameraInfo, "/camera/camera/color/camera_info"))]
    joints = probe.create_publisher(JointState, "/joint_states", reliable_qos(5))
    probe.create_publisher(String, "/mu0/instruction", latched_qos()).publish(String(data="reach the block"))
    executor = MultiThreadedExecutor(num_threads=4)
    for n in (sync, mu0, expert, probe):
        executor.add_node(n)
    threading.Thread(target=executor.spin, daemon=True).start()
    time.sleep(2.0)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 0)
    intr = CameraIntrinsics(w, h, 0.9 * w, 0.9 * w, (w - 1) / 2, (h - 1) / 2)
    depth = np.full((h, w), 900, np.uint16)
    n_frames = int(args.seconds * 10)
    next_t = time.monotonic()
    for k in range(n_frames):
        stamp = time.time_ns()
        hdr = lambda: convert.make_header(stamp, "camera_color_optical_frame")  # noqa: E731
        js = JointState(name=["right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "gripper"],
                        position=[0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0, -1.0])
        js.header = hdr()
        joints.publish(js)
        pubs[0].publish(convert.numpy_to_image(np.roll(base, k, axis=1), "rgb8", hdr()))
        pubs[1].publish(convert.numpy_to_image(depth, "16UC1", hdr()))
        pubs[2].publish(convert.camera_info_from_intrinsics(intr, hdr()))
        next_t += 0.1
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(1.0)
    trace_lat = np.array([(r - s) / 1e6 for r, s in traces])
    cmd_lat = np.array([(r - s) / 1e6 for r, s in commands if s is not None])
    print(f"frames sent {n_frames} at 10 Hz, {w}x{h}, model {args.model}, {args.queries} queries")
    print(f"traces received {len(traces)}; mu0_node dropped {mu0.monitor.get('dropped_frames')} frames")
    for name, v in (("camera stamp -> traces", trace_lat), ("camera stamp -> command", cmd_lat)):
        if len(v):
            print(f"{name:26s} n={len(v):4d}  p50 {np.percentile(v, 50):7.1f} ms  p99 {np.percentile(v, 99):7.1f} ms  "
                  f"max {v.max():7.1f} ms")
    status = mu0.monitor.status()
    for key in ("convert_ms.p50", "select_ms.p50", "predict_ms.p50", "postprocess_ms.p50", "publish_ms.p50",
                "total_ms.p50", "frame_age_ms.p50"):
        print(f"mu0_node {key:22s} {status.values.get(key, '-')}")
    executor.shutdown(timeout_sec=2.0)
    mu0._free()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
