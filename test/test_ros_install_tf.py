"""TF on the ROS install path (tf2_msgs from ../shared/ros2; skipped without it).

* A static TF tree published by the test (base_link -> camera_link -> camera_color_optical_frame
  on /tf_static, transient local like tf2_ros' static broadcaster) and mu0_node WITHOUT any
  camera_to_base parameter: /mu0/traces arrive in base_link and equal the camera-frame traces
  mapped through the composed transform.
* mu0_node WITH camera_to_base publishes it on /tf_static (base_link -> the frames' camera frame).
* The sim publishes its camera and arm links on TF.
"""
from __future__ import annotations

import json
import sys
import textwrap

from ros_install_env import REPO, extras_prefix, in_ros_env, requires_shared_ros2

pytestmark = requires_shared_ros2

SCRIPT = textwrap.dedent('''
    import json, subprocess, sys, time
    import numpy as np
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage
    from mu0_msgs.msg import RGBD, TraceArray
    from mu0_core.camera import CameraIntrinsics, RigidTransform
    from mu0_core.frames import RGBDFrame
    from mu0_ros import convert

    mode = sys.argv[1]
    static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
    T_base_link = RigidTransform.from_quat_xyzw([0, 0, 0.38268343, 0.92387953], [0.4, -0.2, 0.9])
    T_link_optical = RigidTransform.from_quat_xyzw([-0.5, 0.5, -0.5, 0.5], [0.0, 0.015, 0.0])
    params = ["-p", "model:=baseline:constant_velocity", "-p", "instruction:=push the block",
              "-p", "queries:=grid", "-p", "base_frame_id:=base_link"]
    if mode == "param":
        tf = T_base_link @ T_link_optical
        params += ["-p", f"camera_to_base:={list(map(float, list(tf.translation) + list(tf.to_quat_xyzw())))}"]
    node_proc = subprocess.Popen([sys.executable, "-m", "mu0_policy.nodes.mu0_node", "--ros-args", *params])
    rclpy.init()
    node = rclpy.create_node("tf_test")
    got = {"base": [], "camera": [], "tf_static": []}
    node.create_subscription(TraceArray, "/mu0/traces", lambda m: got["base"].append(m), 10)
    node.create_subscription(TraceArray, "/mu0/traces_camera", lambda m: got["camera"].append(m), 10)
    node.create_subscription(TFMessage, "/tf_static", lambda m: got["tf_static"].extend(m.transforms), static_qos)
    if mode == "tf":
        pub = node.create_publisher(TFMessage, "/tf_static", static_qos)
        edges = []
        for parent, child, T in (("base_link", "camera_link", T_base_link),
                                 ("camera_link", "camera_color_optical_frame", T_link_optical)):
            t = TransformStamped()
            t.header.frame_id, t.child_frame_id = parent, child
            t.transform = convert.rigid_to_transform(T)
            edges.append(t)
        pub.publish(TFMessage(transforms=edges))
    rgbd = node.create_publisher(RGBD, "/mu0/rgbd", 10)
    intr = CameraIntrinsics(64, 48, 60.0, 60.0, 32.0, 24.0)
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + 120
    k = 0
    while time.monotonic() < deadline and len(got["base"]) < 3:
        k += 1
        frame = RGBDFrame(stamp_ns=node.get_clock().now().nanoseconds, frame_id="camera_color_optical_frame",
                          color=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                          depth=np.full((48, 64), 0.8 + 0.01 * (k % 5), np.float32), intrinsics=intr)
        rgbd.publish(convert.frame_to_rgbd_msg(frame))
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
    node_proc.send_signal(2)
    code = node_proc.wait(timeout=20)
    stamps = {convert.stamp_to_ns(m.header.stamp): m for m in got["camera"]}
    pairs = [(convert.trace_msg_to_set(m), convert.trace_msg_to_set(stamps[convert.stamp_to_ns(m.header.stamp)]))
             for m in got["base"] if convert.stamp_to_ns(m.header.stamp) in stamps]
    expected = T_base_link @ T_link_optical
    err = max((float(np.abs(expected.apply(c.positions) - b.positions).max()) for b, c in pairs), default=None)
    print(json.dumps({"base": len(got["base"]), "pairs": len(pairs), "frames": sorted({m.header.frame_id for m in got["base"]}),
                      "max_err": err, "exit": code,
                      "tf_static": [[t.header.frame_id, t.child_frame_id,
                                     [t.transform.translation.x, t.transform.translation.y, t.transform.translation.z]]
                                    for t in got["tf_static"]]}))
''')


def _run(mode: str, tmp_path) -> dict:
    prefix = extras_prefix()
    (tmp_path / "tf_script.py").write_text(SCRIPT)
    out = in_ros_env(prefix, f"cd {REPO} && {sys.executable} {tmp_path / 'tf_script.py'} {mode}", timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_traces_in_base_frame_from_static_tf_without_extrinsic_parameter(tmp_path):
    result = _run("tf", tmp_path)
    assert result["base"] >= 3 and result["pairs"] >= 1, result
    assert result["frames"] == ["base_link"], result
    assert result["max_err"] < 1e-4, result
    assert result["exit"] == 0, out.stderr[-4000:]


def test_extrinsic_parameter_is_published_on_tf_static(tmp_path):
    result = _run("param", tmp_path)
    assert result["frames"] == ["base_link"] and result["max_err"] < 1e-4, result
    published = [e for e in result["tf_static"] if e[:2] == ["base_link", "camera_color_optical_frame"]]
    assert published, result
    assert result["exit"] == 0, out.stderr[-4000:]


SIM_SCRIPT = textwrap.dedent('''
    import json, subprocess, sys, time
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage
    static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
    proc = subprocess.Popen([sys.executable, "-m", "mu0_sim.nodes.sim_node", "--ros-args",
                             "-p", "publish_camera_tf:=true", "-p", "width:=64", "-p", "height:=48"])
    rclpy.init()
    node = rclpy.create_node("sim_tf_probe")
    seen = {"tf": set(), "tf_static": set()}
    node.create_subscription(TFMessage, "/tf", lambda m: seen["tf"].update((t.header.frame_id, t.child_frame_id) for t in m.transforms), 10)
    node.create_subscription(TFMessage, "/tf_static", lambda m: seen["tf_static"].update((t.header.frame_id, t.child_frame_id) for t in m.transforms), static_qos)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (seen["tf"] and seen["tf_static"]):
        rclpy.spin_once(node, timeout_sec=0.1)
    for _ in range(10):
        rclpy.spin_once(node, timeout_sec=0.05)
    proc.send_signal(2)
    print(json.dumps({k: sorted(v) for k, v in seen.items()} | {"exit": proc.wait(timeout=20)}))
''')


def test_sim_publishes_arm_links_and_camera_on_tf(tmp_path):
    from mu0_sim.record import BASE_FRAME, COLOR_FRAME

    prefix = extras_prefix()
    (tmp_path / "sim_tf.py").write_text(SIM_SCRIPT)
    out = in_ros_env(prefix, f"cd {REPO} && {sys.executable} {tmp_path / 'sim_tf.py'}", timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    children = {child for parent, child in result["tf"] if parent == BASE_FRAME}
    assert "hand" in children and len(children) >= 7, result      # base .. hand of the Sawyer
    assert [BASE_FRAME, COLOR_FRAME] in result["tf_static"], result
    assert result["exit"] == 0, out.stderr[-4000:]
