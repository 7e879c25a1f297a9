"""End-to-end latency and camera-rate ingest of the runtime graph over real Fast DDS, one process per node.

The graph rgbd_sync -> mu0_node -> action_expert (sim Sawyer joint config, NOT dry-run) is started
by mu0_app.launcher exactly as `mu0 run` starts it: every node in its own process. This process
plays the camera (colour rgb8 / aligned 16UC1 depth / camera_info at `--rate` Hz and `--size`,
stamped with the wall clock, realsense-ros topic names) and a subprocess plays the arm's driver
(joint states at 100 Hz). With `--player` the camera stream is first written to a rosbag2
(sqlite3, as realsense-ros records) and played by `bag_player` instead (ingest counts only: the
bag's stamps are not the wall clock). Prints
  ingest: camera frames sent, colour/depth images rgbd_sync received, /mu0/rgbd frames it published,
  trace sets received here and their rate against the model-bound rate 1000 / predict p50,
  camera stamp -> /mu0/traces received here (p50/p99),
  camera stamp -> command publish, measured inside the action expert (the source camera stamp of
  a frame's traces, to the publish of the first command planned from them) and reported on
  /diagnostics, with the age of the traces behind every command (chunk re-plans included),
  mu0_node's per-stage times (/diagnostics, last 100 frames), and the issue-14 target ratios.
Numbers, never asserts (docs/interfaces.md: benchmarks print).

    python bench/bench_runtime.py [--seconds 30] [--model checkpoints/mu0_small] [--size 320x240] [--rate 10]
    python bench/bench_runtime.py --size 640x480 --rate 30          # realsense-ros default stream
    python bench/bench_runtime.py --size 640x480 --rate 30 --player # the same stream from a bag
    python bench/bench_runtime.py --size 640x480 --micro             # CPU per frame of the message handling
"""
import argparse
import os
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
TOPICS = ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
          "/camera/camera/color/camera_info")
DISTINCT_FRAMES = 30   # colour images cycled (built once: the camera side must not be the bottleneck)


def camera_frames(w: int, h: int):
    """(colour images (DISTINCT_FRAMES, h, w, 3) rgb8 moving right, 16UC1 depth, intrinsics)."""
    import cv2

    from mu0_core.camera import CameraIntrinsics

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (7, 7), 0)
    colors = [np.roll(base, 2 * k, axis=1) for k in range(DISTINCT_FRAMES)]
    depth = np.full((h, w), 900, np.uint16)
    intr = CameraIntrinsics(w, h, 0.9 * w, 0.9 * w, (w - 1) / 2, (h - 1) / 2)
    return colors, depth, intr


def write_camera_bag(path: Path, w: int, h: int, rate: float, n_frames: int) -> None:
    """The camera stream as a rosbag2 (sqlite3, realsense-ros topic names) for `--player`."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mu0_ros import convert

    store = convert.mu0_typestore()
    colors, depth, intr = camera_frames(w, h)
    t0 = time.time_ns()
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conns = [writer.add_connection(t, m, typestore=store) for t, m in zip(
            TOPICS, ("sensor_msgs/msg/Image", "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"))]
        for k in range(n_frames):
            stamp = t0 + int(k * 1e9 / rate)
            hdr = lambda: convert.make_header(stamp, "camera_color_optical_frame", store)  # noqa: E731
            msgs = (convert.numpy_to_image(colors[k % DISTINCT_FRAMES], "rgb8", hdr(), store),
                    convert.numpy_to_image(depth, "16UC1", hdr(), store),
                    convert.camera_info_from_intrinsics(intr, hdr(), store))
            for conn, msg in zip(conns, msgs):
                writer.write(conn, stamp, store.serialize_cdr(msg, conn.msgtype))


def micro(w: int, h: int, n_traces: int, reps: int = 30) -> None:
    """Per-frame CPU time (thread_time: unaffected by how loaded the machine is) of the hot path's
    message handling, the pre-issue-14 way and now, on one process: rgbd_sync's matched set ->
    /mu0/rgbd bytes, mu0_node's /mu0/rgbd bytes -> frame, its publish step, the expert's read."""
    from rclpy.serialization import deserialize_message, serialize_message

    from mu0_core.camera import RigidTransform
    from mu0_core.traces import TraceSet
    from mu0_msgs.msg import RGBD, TraceArray
    from mu0_perception.sync import assemble_frame, assemble_rgbd_msg
    from mu0_policy.trace_postprocess import trace_line_strips
    from mu0_ros import convert

    colors, depth, intr = camera_frames(w, h)
    hdr = convert.make_header(1_000_000_000, "camera_color_optical_frame")
    parts = (convert.numpy_to_image(colors[0], "rgb8", hdr), convert.numpy_to_image(depth, "16UC1", hdr),
             convert.camera_info_from_intrinsics(intr, hdr))
    wire = [serialize_message(m) for m in parts]
    types = [type(m) for m in parts]
    rng = np.random.default_rng(0)
    t1 = 33
    traces = TraceSet(
        stamp_ns=1, frame_id="base_link", instruction="reach the block", model_id="mu0_small", horizon_steps=32,
        step_period=0.0125, query_ids=np.arange(n_traces, dtype=np.uint32),
        entities=[f"cluster_{i % 4}" for i in range(n_traces)], pixels=rng.random((n_traces, 2)).astype(np.float32),
        positions=rng.random((n_traces, 3)), knots=np.linspace(0, 1, 14), control_points=rng.random((n_traces, 10, 3)),
        samples=rng.random((n_traces, t1, 3)), validity=np.ones((n_traces, t1), np.float32),
        confidence=np.ones(n_traces, np.float32), camera_to_frame=RigidTransform.identity())
    strips = trace_line_strips(traces)

    def cpu_ms(fn):
        fn()
        start = time.thread_time()
        for _ in range(reps):
            fn()
        return (time.thread_time() - start) / reps * 1e3

    def sync_before():
        m = [deserialize_message(b, t) for b, t in zip(wire, types)]
        return serialize_message(convert.frame_to_rgbd_msg(assemble_frame(*m)))

    def sync_now():
        m = [deserialize_message(b, t) for b, t in zip(wire, types)]
        return serialize_message(assemble_rgbd_msg(*m))

    rgbd_before, rgbd_now = sync_before(), sync_now()
    rows = [
        ("rgbd_sync: 3 images in -> /mu0/rgbd out", cpu_ms(sync_before), cpu_ms(sync_now),
         f"{len(rgbd_before) / 1e6:.2f} MB -> {len(rgbd_now) / 1e6:.2f} MB per frame"),
        ("mu0_node: /mu0/rgbd in -> frame", cpu_ms(lambda: convert.rgbd_msg_to_frame(deserialize_message(rgbd_before, RGBD))),
         cpu_ms(lambda: convert.rgbd_msg_to_frame(deserialize_message(rgbd_now, RGBD))), ""),
        (f"mu0_node publish ({n_traces} traces, traces + traces_camera + markers)",
         cpu_ms(lambda: [serialize_message(convert.trace_set_to_msg(traces)) for _ in range(2)]
                + [serialize_message(convert.marker_array_msg(strips, 0.2, (), 1, "base_link"))]),
         cpu_ms(lambda: [convert.trace_set_to_cdr(traces) for _ in range(2)]
                + [convert.marker_array_cdr(strips, 0.2, (), 1, "base_link")]), "now: the camera copy and markers only when subscribed"),
        ("mu0_node publish, nobody on traces_camera / markers", float("nan"), cpu_ms(lambda: convert.trace_set_to_cdr(traces)), ""),
        ("action_expert: /mu0/traces in -> TraceSet",
         cpu_ms(lambda: convert.trace_msg_to_set(deserialize_message(convert.trace_set_to_cdr(traces), TraceArray))),
         cpu_ms(lambda: convert.trace_cdr_to_set(convert.trace_set_to_cdr(traces))), ""),
    ]
    load = os.getloadavg()
    print(f"CPU ms per frame (thread_time, {reps} reps, {w}x{h}; load average {load[0]:.2f}):")
    print(f"  {'step':62s} {'before':>8s} {'now':>8s}")
    for name, before, now, note in rows:
        print(f"  {name:62s} {before:8.2f} {now:8.2f}  {note}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", default="checkpoints/mu0_small")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--rate", type=float, default=10.0, help="camera frames per second")
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--micro", action="store_true",
                        help="only the per-frame CPU time of the message handling, before issue 14 and now")
    parser.add_argument("--player", action="store_true",
                        help="play the camera stream from a rosbag2 with bag_player (ingest counts only)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    if args.micro:
        micro(w, h, args.queries)
        return 0

    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    from mu0_msgs.msg import TraceArray
    from mu0_ros import convert
    from mu0_app.launcher import ProcessGraph, load_graph_config, resolve_config
    from mu0_ros.qos import latched_qos, reliable_qos

    n_frames = int(round(args.seconds * args.rate))
    log_dir = Path(tempfile.mkdtemp(prefix="mu0_bench_runtime_"))
    bag = None
    if args.player:
        bag = log_dir / "camera_bag"
        print(f"writing the camera stream to {bag} ...", flush=True)
        write_camera_bag(bag, w, h, args.rate, n_frames)
    config = load_graph_config(resolve_config("replay"), [
        "mu0_graph.use_sim_time=false", f"mu0_node.model={args.model}", f"mu0_node.backend={args.backend}",
        f"mu0_node.max_queries={args.queries}", f"mu0_node.camera_to_base={SIM_CAMERA_TO_BASE}",
        f"mu0_node.expected_period={1.0 / args.rate:g}",
        "action_expert.robot_config=config/robots/sim_sawyer_joint.yaml", "action_expert.dry_run=false"])
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
    pubs = [] if args.player else [probe.create_publisher(t, n, reliable_qos(5)) for t, n in zip(
        (Image, Image, CameraInfo), TOPICS)]
    probe.create_publisher(String, "/mu0/instruction", latched_qos()).publish(String(data="reach the block"))
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()

    print(f"starting the graph (logs: {log_dir}) ...", flush=True)
    deadline = time.monotonic() + 90
    while not ("mu0_node" in diagnostics and "rgbd_sync" in diagnostics) and time.monotonic() < deadline:
        time.sleep(0.2)   # configured + warmed up
    time.sleep(1.0)
    base_sync = {k: int(diagnostics.get("rgbd_sync", {}).get(k, 0))
                 for k in ("published", "received_color", "received_depth", "received_info")}
    start_traces = len(traces)
    t_start = time.monotonic()
    if args.player:
        player = subprocess.run([sys.executable, "-m", "mu0_ros.bag_player", str(bag), "--no-clock",
                                 "--start-delay", "1.0", "--linger", "0.5"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if player.returncode:
            print(f"bag_player exited {player.returncode}: {player.stderr[-2000:]}")
        player_report = [line for line in player.stderr.splitlines() if "behind" in line]
        sent_seconds = time.monotonic() - t_start
    else:
        colors, depth, intr = camera_frames(w, h)
        hdr0 = convert.make_header(0, "camera_color_optical_frame")
        # messages built once; only the stamps change per frame
        color_msgs = [convert.numpy_to_image(c, "rgb8", hdr0) for c in colors]
        depth_msg = convert.numpy_to_image(depth, "16UC1", hdr0)
        info_msg = convert.camera_info_from_intrinsics(intr, hdr0)
        next_t = time.monotonic()
        for k in range(n_frames):
            stamp = time.time_ns()
            t = Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
            msgs = (color_msgs[k % DISTINCT_FRAMES], depth_msg, info_msg)
            for pub, msg in zip(pubs, msgs):
                msg.header.stamp = t
                pub.publish(msg)
            next_t += 1.0 / args.rate
            time.sleep(max(0.0, next_t - time.monotonic()))
        sent_seconds = time.monotonic() - t_start
    time.sleep(2.5)   # last traces + one more diagnostics period
    n_traces = len(traces) - start_traces
    joint_driver.kill()
    codes = graph.stop()
    executor.shutdown(timeout_sec=2.0)
    rclpy.try_shutdown()

    load = os.getloadavg()
    sync = {k: int(diagnostics.get("rgbd_sync", {}).get(k, 0)) - v for k, v in base_sync.items()}
    mu0 = diagnostics.get("mu0_node", {})
    expert = next((v for k, v in diagnostics.items() if k.startswith("action_expert")), {})
    f = lambda d, k: float(d[k]) if k in d else float("nan")  # noqa: E731
    print(f"camera {'bag_player' if args.player else 'publisher'}: {n_frames} frames at {args.rate:g} Hz, "
          f"{w}x{h}, model {args.model} ({args.backend}), {args.queries} queries, one process per node; "
          f"exit codes {codes}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.player:
        print("bag_player: " + ("; ".join(line.split("]: ")[-1] for line in player_report) or "-"))
    print(f"rgbd_sync received colour {sync['received_color']} depth {sync['received_depth']} "
          f"info {sync['received_info']}; published /mu0/rgbd {sync['published']} "
          f"({100.0 * sync['published'] / max(n_frames, 1):.1f} % of camera frames)")
    predict_p50, predict_p99 = f(mu0, "predict_ms.p50"), f(mu0, "predict_ms.p99")
    trace_rate = n_traces / max(sent_seconds, 1e-9)
    model_rate = 1000.0 / predict_p50 if predict_p50 > 0 else float("nan")
    print(f"trace sets received {n_traces} in {sent_seconds:.1f} s = {trace_rate:.2f} Hz; model-bound rate "
          f"1000/predict p50 = {model_rate:.2f} Hz (ratio {trace_rate / model_rate:.2f}; capped by the camera "
          f"rate {args.rate:g} Hz); mu0_node dropped {mu0.get('dropped_frames', 0)} frames (keep-newest)")
    trace_lat = np.array([(r - s) / 1e6 for r, s in traces[start_traces:]])
    p99_traces = float("nan")
    if len(trace_lat) and not args.player:
        p99_traces = float(np.percentile(trace_lat, 99))
        print(f"camera stamp -> traces          n={len(trace_lat):4d}  p50 {np.percentile(trace_lat, 50):7.1f} ms  "
              f"p99 {p99_traces:7.1f} ms  max {trace_lat.max():7.1f} ms")
    print(f"camera stamp -> command publish p50 {expert.get('camera_to_command_ms.p50', '-')} ms  "
          f"p99 {expert.get('camera_to_command_ms.p99', '-')} ms  (the first command planned from each frame; "
          f"commands published: {expert.get('published', '-')}, "
          f"event-driven re-plans: {expert.get('runner.replans_on_traces', '-')})")
    print(f"age of the traces of every command p50 {expert.get('command_trace_age_ms.p50', '-')} ms  "
          f"p99 {expert.get('command_trace_age_ms.p99', '-')} ms  (chunk re-plans from older traces included)")
    for key in ("convert_ms", "select_ms", "predict_ms", "postprocess_ms", "publish_ms", "total_ms", "frame_age_ms"):
        print(f"mu0_node {key:16s} p50 {mu0.get(key + '.p50', '-'):>9s}  p99 {mu0.get(key + '.p99', '-'):>9s}")
    total_p50 = f(mu0, "total_ms.p50")
    control_period_ms = 50.0   # config/robots/sim_sawyer_joint.yaml: 20 Hz
    cmd_p99 = f(expert, "camera_to_command_ms.p99")
    print("targets (issue 14):")
    if args.rate >= 30:
        print(f"  /mu0/rgbd >= 95 % of camera frames: {100.0 * sync['published'] / max(n_frames, 1):.1f} %")
    print(f"  trace sets >= 0.8 x min(model-bound, camera) rate: "
          f"{trace_rate / min(model_rate, args.rate):.2f}")
    print(f"  mu0_node total / predict (p50) <= 1.10: {total_p50 / predict_p50:.2f}")
    if not args.player:
        print(f"  camera->traces p99 - predict p99 <= 15 ms: {p99_traces - predict_p99:.1f} ms")
        print(f"  camera->command p99 - camera->traces p99 <= {control_period_ms:.0f} ms: {cmd_p99 - p99_traces:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
