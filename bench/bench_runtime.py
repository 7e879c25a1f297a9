"""End-to-end latency of the runtime graph over real Fast DDS at 10 Hz, one process per node.

The graph rgbd_sync -> mu0_node -> action_expert (sim Sawyer joint config, NOT dry-run) is started
by mu0_app.launcher exactly as `mu0 run` starts it: every node in its own process. This process
plays the camera (colour / 16UC1 depth / camera_info at 10 Hz, stamped with the wall clock) and a
subprocess plays the arm's driver (joint states at 100 Hz). Prints p50/p99 of
  camera stamp -> /mu0/traces received here, and
  camera stamp -> command publish, measured inside the action expert (the source camera stamp of
  the traces a command was planned from, to its publish) and reported on /diagnostics,
plus the per-stage times mu0_node reports on /diagnostics.

    python bench/bench_runtime.py [--seconds 30] [--model checkpoints/mu0_small] [--size 320x240]
"""
import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

JOINT_DRIVER = """
import time, rclpy
from sensor_msgs.msg import JointState
from mu0_ros.convert import make_header
from mu0_ros.qos import reliable_qos
rclpy.init(); node = rclpy.create_node("bench_joint_driver")
pub = node.create_publisher(JointState, "/joint_states", reliable_qos(5))
names = ["right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "gripper"]
while True:
    msg = JointState(name=names, position=[0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0, -1.0])
    msg.header = make_header(time.time_ns(), "")
    pub.publish(msg)
    time.sleep(0.01)
"""
# T_base_cam of the sim's corner camera: traces reach the expert in the robot base frame
SIM_CAMERA_TO_BASE = [-1.1, -0.4, 0.6, 0.736838, -0.305208, 0.230856, -0.557335]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", default="checkpoints/mu0_small")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--queries", type=int, default=24)
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))

    import cv2
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    from mu0_msgs.msg import TraceArray
    from mu0_core.camera import CameraIntrinsics
    from mu0_ros import convert
    from mu0_app.launcher import ProcessGraph, load_graph_config, resolve_config
    from mu0_ros.qos import latched_qos, reliable_qos

    config = load_graph_config(resolve_config("replay"), [
        "mu0_graph.use_sim_time=false", f"mu0_node.model={args.model}", f"mu0_node.backend={args.backend}",
        f"mu0_node.max_queries={args.queries}", f"mu0_node.camera_to_base={SIM_CAMERA_TO_BASE}",
        "action_expert.robot_config=config/robots/sim_sawyer_joint.yaml", "action_expert.dry_run=false"])
    log_dir = Path(tempfile.mkdtemp(prefix="mu0_bench_runtime_"))
    graph = ProcessGraph(config, log_dir=log_dir)
    graph.start()
    joint_driver = subprocess.Popen([sys.executable, "-c", JOINT_DRIVER])

    rclpy.init()
    probe = rclpy.create_node("bench_camera")
    traces, diagnostics = [], {}
    probe.create_subscription(TraceArray, "/mu0/traces",
                              lambda m: traces.append((time.time_ns(), convert.stamp_to_ns(m.header.stamp))),
                              reliable_qos(50))

    def on_diagnostics(msg):
        for status in msg.status:
            # names: "mu0: mu0_node", "mu0: rgbd_sync", "action_expert: <robot>"
            key = status.name.split(":")[-1].strip() if status.name.startswith("mu0:") else status.name.split(":")[0]
            diagnostics[key] = {kv.key: kv.value for kv in status.values}

    probe.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable_qos(50))
    pubs = [probe.create_publisher(t, n, reliable_qos(5)) for t, n in (
        (Image, "/camera/camera/color/image_raw"), (Image, "/camera/camera/aligned_depth_to_color/image_raw"),
        (CameraInfo, "/camera/camera/color/camera_info"))]
    probe.create_publisher(String, "/mu0/instruction", latched_qos()).publish(String(data="reach the block"))
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()

    print(f"starting the graph (logs: {log_dir}) ...", flush=True)
    deadline = time.monotonic() + 60
    while "mu0_node" not in diagnostics and time.monotonic() < deadline:   # configured + warmed up
        time.sleep(0.2)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 0)
    intr = CameraIntrinsics(w, h, 0.9 * w, 0.9 * w, (w - 1) / 2, (h - 1) / 2)
    depth = np.full((h, w), 900, np.uint16)
    n_frames = int(args.seconds * 10)
    start_traces = len(traces)
    next_t = time.monotonic()
    for k in range(n_frames):
        stamp = time.time_ns()
        hdr = lambda: convert.make_header(stamp, "camera_color_optical_frame")  # noqa: E731
        pubs[0].publish(convert.numpy_to_image(np.roll(base, k, axis=1), "rgb8", hdr()))
        pubs[1].publish(convert.numpy_to_image(depth, "16UC1", hdr()))
        pubs[2].publish(convert.camera_info_from_intrinsics(intr, hdr()))
        next_t += 0.1
        time.sleep(max(0.0, next_t - time.monotonic()))
    time.sleep(2.5)   # last traces + one more diagnostics period
    joint_driver.kill()
    codes = graph.stop()
    executor.shutdown(timeout_sec=2.0)
    rclpy.try_shutdown()

    trace_lat = np.array([(r - s) / 1e6 for r, s in traces[start_traces:]])
    print(f"frames sent {n_frames} at 10 Hz, {w}x{h}, model {args.model} ({args.backend}), {args.queries} queries, "
          f"one process per node; exit codes {codes}")
    mu0 = diagnostics.get("mu0_node", {})
    expert = next((v for k, v in diagnostics.items() if k.startswith("action_expert")), {})
    print(f"traces received {len(trace_lat)}; mu0_node dropped {mu0.get('dropped_frames', 0)} frames "
          "(keep-newest: a frame that arrives while the model runs replaces the waiting one)")
    if len(trace_lat):
        print(f"camera stamp -> traces          n={len(trace_lat):4d}  p50 {np.percentile(trace_lat, 50):7.1f} ms  "
              f"p99 {np.percentile(trace_lat, 99):7.1f} ms  max {trace_lat.max():7.1f} ms")
    print(f"camera stamp -> command publish p50 {expert.get('camera_to_command_ms.p50', '-')} ms  "
          f"p99 {expert.get('camera_to_command_ms.p99', '-')} ms  (commands published: {expert.get('published', '-')})")
    for key in ("convert_ms.p50", "select_ms.p50", "predict_ms.p50", "postprocess_ms.p50", "publish_ms.p50",
                "total_ms.p50", "frame_age_ms.p50"):
        print(f"mu0_node {key:22s} {mu0.get(key, '-')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
