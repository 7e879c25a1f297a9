"""rgbd_sync, mu0_node and action_expert over real rclpy / Fast DDS (in one process, real transport).

Frames are synthetic (textured images moving right, 16UC1 depth); the model is the
constant-velocity baseline so these tests do not depend on trained weights.
"""
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from mu0_msgs.msg import RGBD, TraceArray  # noqa: E402
from mu0_msgs.srv import SetInstruction  # noqa: E402
from mu0_core.camera import CameraIntrinsics  # noqa: E402
from mu0_perception.nodes.rgbd_sync import RGBDSyncNode
from mu0_perception.sync import FAULTS  # noqa: E402
from mu0_policy.nodes.mu0_node import Mu0Node  # noqa: E402
from mu0_ros import convert  # noqa: E402
from mu0_ros.qos import latched_qos, make_qos, reliable_qos  # noqa: E402
from robot_configs import follower_config

W, H = 128, 96
INTR = CameraIntrinsics(W, H, 100.0, 100.0, 63.5, 47.5)
COLOR, DEPTH, INFO = ("/camera/camera/color/image_raw", "/camera/camera/aligned_depth_to_color/image_raw",
                      "/camera/camera/color/camera_info")
ROBOT = follower_config("sim_sawyer_joint", hold_orientation=True)
HOME = [0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0, -1.0]
JOINTS = ["right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "gripper"]


def textured(shift):
    import cv2

    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (5, 5), 0)
    return np.roll(img, shift, axis=1)


class Graph:
    """Nodes + a probe node on one executor thread; collects what the probe receives."""

    def __init__(self, nodes, reliability="reliable"):
        self.nodes = nodes
        self.probe = rclpy.create_node("probe")
        self.got = {"traces": [], "markers": [], "rgbd": [], "diag": [], "commands": []}
        p = self.probe
        p.create_subscription(TraceArray, "/mu0/traces", lambda m: self.got["traces"].append(m), reliable_qos(50))
        p.create_subscription(MarkerArray, "/mu0/trace_markers", lambda m: self.got["markers"].append(m), reliable_qos(50))
        p.create_subscription(RGBD, "/mu0/rgbd", lambda m: self.got["rgbd"].append(m), reliable_qos(50))
        p.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.got["diag"].append(m), reliable_qos(50))
        p.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                              lambda m: self.got["commands"].append(m), reliable_qos(50))
        cam_qos = make_qos(reliability, "volatile", 10)
        self.pubs = {"color": p.create_publisher(Image, COLOR, cam_qos),
                     "depth": p.create_publisher(Image, DEPTH, cam_qos),
                     "info": p.create_publisher(CameraInfo, INFO, cam_qos)}
        self.instruction = p.create_publisher(String, "/mu0/instruction", latched_qos())
        self.joints = p.create_publisher(JointState, "/joint_states", reliable_qos(10))
        self.executor = MultiThreadedExecutor(num_threads=3)
        for n in [*nodes, p]:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_matched(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(pub.get_subscription_count() > 0 for pub in self.pubs.values()):
                return True
            time.sleep(0.05)
        return False

    def send_frame(self, stamp_ns, shift=0, color_encoding="rgb8", depth=None, info_size=(W, H), skip=()):
        header = lambda: convert.make_header(stamp_ns, "camera_color_optical_frame")  # noqa: E731
        color = convert.numpy_to_image(textured(shift), "rgb8", header())
        color.encoding = color_encoding
        d = np.full((H, W), 900, np.uint16) if depth is None else depth
        depth_msg = (convert.numpy_to_image(d, "16UC1", header()) if d.dtype == np.uint16
                     else convert.numpy_to_image(d, "32FC1", header()))
        intr = CameraIntrinsics(info_size[0], info_size[1], 100.0, 100.0, 63.5, 47.5)
        msgs = {"color": color, "depth": depth_msg, "info": convert.camera_info_from_intrinsics(intr, header())}
        for k in ("color", "depth", "info"):
            if k not in skip:
                self.pubs[k].publish(msgs[k])

    def send_joints(self, stamp_ns):
        js = JointState(name=JOINTS, position=[0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0, -1.0], velocity=[0.0] * 8)
        js.header = convert.make_header(stamp_ns, "")
        self.joints.publish(js)

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        for n in [*self.nodes, self.probe]:
            if isinstance(n, Mu0Node):
                n._free()
            n.destroy_node()


@pytest.fixture(scope="module", autouse=True)
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def mu0(**params):
    defaults = {"model": "baseline:constant_velocity", "max_queries": 12, "expected_period": 0.1,
                "autostart": False, "diagnostics_period": 0.3}
    defaults.update(params)
    return Mu0Node(parameter_overrides=[Parameter(k, value=v) for k, v in defaults.items()])


def expert_node(dry_run):
    from mu0_policy.nodes.action_expert_node import ActionExpertNode

    return ActionExpertNode(parameter_overrides=[Parameter("robot_config", value=ROBOT),
                                                 Parameter("dry_run", value=dry_run)])


def diag_values(graph, name):
    for arr in reversed(graph.got["diag"]):
        for s in arr.status:
            if s.name == name:
                return {kv.key: kv.value for kv in s.values}, s
    return None, None


def test_sync_mu0_expert_traces_stamped_with_source_frames_markers_and_commands():
    sync = RGBDSyncNode(parameter_overrides=[Parameter("diagnostics_period", value=0.3)])
    node = mu0(camera_to_base=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    expert = expert_node(dry_run=False)
    g = Graph([sync, node, expert])
    try:
        g.instruction.publish(String(data="push the block right"))   # before configure: latched
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert g.wait_matched()
        sent = []
        t0 = time.time_ns()
        # stream like a camera at 10 Hz until the graph has produced enough (bounded): a loaded
        # machine may drop frames (keep-newest), which is the node's intended behaviour
        for k in range(60):
            stamp = t0 + k * 100_000_000
            g.send_joints(time.time_ns())
            g.send_frame(stamp, shift=2 * k)
            sent.append(stamp)
            time.sleep(0.1)
            if len(g.got["traces"]) >= 8 and g.got["commands"]:
                break
        assert wait_until(lambda: len(g.got["traces"]) >= 8 and g.got["commands"])
        stamps = [convert.stamp_to_ns(m.header.stamp) for m in g.got["traces"]]
        assert set(stamps) <= set(sent)                       # every output carries a source stamp
        assert stamps == sorted(stamps)
        last = g.got["traces"][-1]
        assert last.header.frame_id == "base_link" and last.instruction == "push the block right"
        assert last.model_id == "baseline/constant_velocity" and len(last.traces) > 0
        assert abs(last.traces[0].position.z - 1.0 - 0.9) < 0.05     # 0.9 m depth + 1 m offset
        # nothing lost in sync: every frame it matched was published and reached us (best-effort
        # camera topics may lose a stream of a frame before the sync sees it: counted as unmatched)
        assert {convert.stamp_to_ns(m.header.stamp) for m in g.got["rgbd"]} <= set(sent)
        assert wait_until(lambda: len(g.got["rgbd"]) == sync.counters()["published"])
        counters = sync.counters()
        assert counters["matched"] == counters["published"] >= 8
        assert not any(counters[f] for f in FAULTS)
        markers = [m for arr in g.got["markers"] for m in arr.markers if m.action == Marker.ADD]
        assert markers and all(m.type == Marker.LINE_STRIP for m in markers)
        assert {m.ns for m in markers} <= {f"cluster_{i}" for i in range(4)}
        assert markers[-1].lifetime.nanosec == 200_000_000 and len(markers[-1].colors) == len(markers[-1].points)
        assert all(np.isfinite(p).all() for c in g.got["commands"] for p in [np.array([pt.positions for pt in c.points])])
        assert wait_until(lambda: diag_values(g, "mu0: mu0_node")[0] is not None
                          and "predict_ms.p50" in diag_values(g, "mu0: mu0_node")[0])
        values, _ = diag_values(g, "mu0: mu0_node")
        assert {"frame_age_ms.p50", "select_ms.p50", "postprocess_ms.p50", "total_ms.p50"} <= set(values)
        # lifecycle: deactivated -> frames are not processed, nothing is published
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        # deactivate returns after the last in-model frame is published; that one may still be
        # on the wire: let it land before counting
        time.sleep(0.5)
        n_before = len(g.got["traces"])
        for k in range(3):
            g.send_frame(time.time_ns(), shift=k)
            time.sleep(0.1)
        time.sleep(0.5)
        assert len(g.got["traces"]) == n_before
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and node.pipeline is None
    finally:
        g.close()


def test_mu0_node_configure_fails_on_bad_model_and_service_rejects_empty_instruction(tmp_path):
    bad = mu0(model=str(tmp_path / "no_such_checkpoint"))
    assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
    bad.destroy_node()
    bad = mu0(objects_refresh_frames=0)        # the scene cache needs >= 1
    assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
    bad.destroy_node()
    every_frame = mu0(objects_refresh_frames=1)
    assert every_frame.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert every_frame.pipeline.config.objects_refresh_frames == 1
    every_frame.destroy_node()
    node = mu0()
    g = Graph([node])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        client = g.probe.create_client(SetInstruction, "/mu0_node/set_instruction")
        assert client.wait_for_service(timeout_sec=10.0)
        for text, ok in (("", False), ("open the drawer", True)):
            future = client.call_async(SetInstruction.Request(instruction=text))
            assert wait_until(future.done)
            assert future.result().success is ok
        assert node.pipeline.instruction == "open the drawer"
    finally:
        g.close()


def test_mu0_node_keeps_only_the_newest_frame():
    node = mu0()
    g = Graph([node])
    try:
        g.instruction.publish(String(data="go"))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        rgbd_pub = g.probe.create_publisher(RGBD, "/mu0/rgbd", reliable_qos(100))
        assert wait_until(lambda: rgbd_pub.get_subscription_count() > 0)
        from mu0_core.frames import RGBDFrame

        msgs = [convert.frame_to_rgbd_msg(RGBDFrame(1_000_000_000 + k * 10_000_000, "cam", textured(k),
                                                    np.full((H, W), 0.9, np.float32), INTR)) for k in range(60)]
        for m in msgs[:-1]:                                 # a burst far faster than the model
            rgbd_pub.publish(m)
        # the input is best-effort keep-last(1): under load DDS may also drop burst frames, so
        # the newest-frame property is checked with one more frame sent after the burst
        time.sleep(0.3)
        rgbd_pub.publish(msgs[-1])
        newest = convert.stamp_to_ns(msgs[-1].header.stamp)
        assert wait_until(lambda: any(convert.stamp_to_ns(t.header.stamp) == newest for t in g.got["traces"]),
                          timeout=30.0)
        time.sleep(0.5)
        stamps = [convert.stamp_to_ns(t.header.stamp) for t in g.got["traces"]]
        assert stamps[-1] == newest                          # nothing older is worked on afterwards
        assert stamps == sorted(stamps)
        assert len(stamps) < len(msgs) // 2                  # no backlog was worked through
    finally:
        g.close()


@pytest.mark.parametrize("case", ["unknown_encoding", "size_mismatch", "nan_depth", "missing_camera_info"])
def test_malformed_input_counted_warned_and_nothing_reaches_the_robot(case):
    sync = RGBDSyncNode(parameter_overrides=[Parameter("diagnostics_period", value=0.3),
                                             Parameter("missing_input_timeout", value=0.5),
                                             Parameter("queue_size", value=3)])
    node = mu0()
    expert = expert_node(dry_run=False)
    g = Graph([sync, node, expert])
    try:
        g.instruction.publish(String(data="go"))
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        if hasattr(expert, "trigger_activate"):    # the lifecycle action_expert: autostart lives in main()
            assert expert.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert expert.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert g.wait_matched()
        nan_depth = np.full((H, W), np.nan, np.float32)
        for k in range(5):
            stamp = time.time_ns()
            g.send_joints(stamp)
            if case == "unknown_encoding":
                g.send_frame(stamp, color_encoding="yuv422")
            elif case == "size_mismatch":
                g.send_frame(stamp, info_size=(2 * W, 2 * H))
            elif case == "nan_depth":
                g.send_frame(stamp, depth=nan_depth)
            else:
                g.send_frame(stamp, skip=("info",))
            time.sleep(0.1)
        counter = {"unknown_encoding": "bad_encoding", "size_mismatch": "size_mismatch",
                   "nan_depth": "invalid_depth", "missing_camera_info": "overflow_color"}[case]
        assert wait_until(lambda: sync.counters()[counter] >= (2 if case == "missing_camera_info" else 5))
        assert wait_until(lambda: (diag_values(g, "mu0: rgbd_sync")[1] is not None
                                   and diag_values(g, "mu0: rgbd_sync")[1].level == b"\x01"))
        if case == "missing_camera_info":
            assert wait_until(lambda: "missing: info" in diag_values(g, "mu0: rgbd_sync")[1].message)
        time.sleep(0.5)
        assert g.got["rgbd"] == [] and g.got["traces"] == []
        # the robot is never moved on bad input: the expert only sends holds at the measured position
        measured = dict(zip(JOINTS, HOME))
        # holds must actually have been received (an empty list would prove nothing)
        assert wait_until(lambda: len(g.got["commands"]) >= 3)
        for cmd in list(g.got["commands"]):
            held = [measured[j] for j in cmd.joint_names]
            assert len(cmd.points) >= 1 and len(held) >= 7
            assert np.allclose([pt.positions for pt in cmd.points], held)
        # still alive: a good frame goes through
        g.send_frame(time.time_ns())
        assert wait_until(lambda: len(g.got["traces"]) == 1)
    finally:
        g.close()


def test_incompatible_qos_is_reported_not_silent():
    sync = RGBDSyncNode(parameter_overrides=[Parameter("input_reliability", value="reliable"),
                                             Parameter("diagnostics_period", value=0.3)])
    g = Graph([sync], reliability="best_effort")           # a camera publishing best effort
    try:
        assert wait_until(lambda: sync.counters()["incompatible_qos"] >= 3)
        assert set(sync.qos_events.incompatible) == {COLOR, DEPTH, INFO}
        g.send_frame(time.time_ns())
        time.sleep(0.5)
        assert g.got["rgbd"] == []
    finally:
        g.close()


@pytest.mark.skip(reason="open defect: in the full suite the QoS-incompatible events reach rgbd_sync for fewer "
                  "than all 3 streams in about half the fresh-clone CI runs (passes alone); the late best-effort "
                  "camera fallback needs an event-independent check (issue 14)")
def test_default_input_qos_takes_a_best_effort_camera_that_starts_later():
    """BEST_AVAILABLE is resolved when the subscription is made (reliable: no camera yet); a
    best-effort camera appearing later is re-subscribed best effort, not left unheard."""
    sync = RGBDSyncNode(parameter_overrides=[Parameter("diagnostics_period", value=0.3)])
    g = Graph([sync], reliability="best_effort")
    try:
        assert wait_until(lambda: sync.monitor.get("reliability_fallbacks") == 3)
        assert sync.counters()["incompatible_qos"] == 0
        assert g.wait_matched()
        deadline = time.monotonic() + 10
        k = 0
        while not g.got["rgbd"] and time.monotonic() < deadline:   # best effort: a frame may be lost
            g.send_frame(time.time_ns(), shift=k)
            k += 1
            time.sleep(0.2)
        assert g.got["rgbd"] and g.got["rgbd"][0].depth.encoding == "16UC1"
    finally:
        g.close()


def test_reliable_camera_frames_arrive_whole_with_their_16uc1_depth():
    sync = RGBDSyncNode(parameter_overrides=[Parameter("diagnostics_period", value=0.3)])
    g = Graph([sync], reliability="reliable")
    try:
        assert g.wait_matched()
        time.sleep(0.5)
        stamps = [time.time_ns() + k * 33_000_000 for k in range(10)]
        for k, stamp in enumerate(stamps):
            g.send_frame(stamp, shift=k)
            time.sleep(0.05)
        assert wait_until(lambda: len(g.got["rgbd"]) == 10)
        assert [convert.stamp_to_ns(m.header.stamp) for m in g.got["rgbd"]] == stamps
        frame = convert.rgbd_msg_to_frame(g.got["rgbd"][0])
        assert frame.depth.dtype == np.float32 and np.allclose(frame.depth, 0.9)
        assert sync.monitor.get("reliability_fallbacks") == 0
    finally:
        g.close()
