"""mu0_node: a lifecycle node that runs the frozen μ_0 on the newest RGB-D frame.

Lifecycle (rclpy.lifecycle; with `autostart` true, the default, the node configures and
activates itself because this project has no lifecycle manager outside ROS installs):
* configure  — loads the predictor (`model`: a checkpoint directory or `baseline:<name>`;
  `backend` torch|onnx, `device` cpu|cuda, `dtype`), warms it up, creates publishers,
  subscriptions and the SetInstruction service. SUCCESS, or FAILURE (logged, naming the file
  and field) when the model or a parameter is unusable — the node stays unconfigured.
* activate   — starts the worker that processes frames; lifecycle publishers go live. SUCCESS.
* deactivate — stops processing (frames keep being received and replaced, not processed). SUCCESS.
* cleanup    — destroys publishers, subscriptions, service and the predictor. SUCCESS.
* shutdown   — as cleanup, from any state. SUCCESS.

Data: /mu0/rgbd (keep-last 1; a frame arriving before the previous one was processed replaces it
and counts as dropped: never a backlog), /mu0/instruction (std_msgs/String, transient local)
and the ~/set_instruction service, /mu0/queries (mu0_msgs/QueryPoints, when `queries` is
`given`). Outputs: /mu0/traces (TraceArray stamped with the source frame; base frame when
`camera_to_base` = [x, y, z, qx, qy, qz, qw] is given, else camera frame), /mu0/traces_camera
(always camera frame; published only while it has subscribers), /mu0/trace_markers (LINE_STRIP
per trace, namespace per entity, colour by time, lifetime 2 x `expected_period`; only while it has
subscribers), /diagnostics (per-stage ms, frame age, drops). Traces and markers are serialized
from numpy directly (`convert.trace_set_to_cdr`, `convert.marker_array_cdr`); /mu0/rgbd arrives
with the camera's own 16UC1 depth and each image is decoded once (`convert.rgbd_msg_to_frame`).
The per-frame work is `mu0_policy.runtime.TracePipeline` (shared with offline replay).
"""
from __future__ import annotations

import sys
import threading
import time
import warnings

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from mu0_msgs.msg import RGBD, QueryPoints, TraceArray
from mu0_msgs.srv import SetInstruction
from mu0_core.resources import resolve
from mu0_core.tf_tree import TfTree, TransformUnavailable
from mu0_policy.runtime import OBJECTS_REFRESH_FRAMES, PipelineConfig, TracePipeline, extrinsic_from_list
from mu0_policy.predictors import DeviceUnavailableWarning, backend_report, describe_backend, make_predictor
from mu0_ros import convert
from mu0_ros.diagnostics import RuntimeMonitor, diagnostic_array_msg
from mu0_ros.node_main import spin_node
from mu0_ros.qos import QosEventMonitor, latched_qos, latest_only_qos, reliable_qos

try:   # on a ROS install; the pip-wheel environment has no tf2_msgs (then camera_to_base is the only source)
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the install
    TFMessage = None

WARN_COUNTERS = ("dropped_frames", "malformed_rgbd", "failed_frames", "bad_queries", "no_instruction",
                 "tf_unavailable")
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)     # what tf2_ros uses for /tf_static


class Mu0Node(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("mu0_node", **kwargs)
        p = self.declare_parameter
        p("model", "baseline:constant_velocity")
        p("backend", "torch")
        p("device", "cpu")
        p("dtype", "float32")
        p("instruction", "")
        p("queries", "objects")
        p("max_queries", 32)
        p("grid_rows", 4)
        p("grid_cols", 6)
        p("num_entities", 4)
        p("track_queries", True)
        # `objects` queries: the scene (support plane, surfaces) is re-parsed every N frames and
        # whenever queries were lost; 1 = every frame (the pre-cache behaviour)
        p("objects_refresh_frames", OBJECTS_REFRESH_FRAMES)
        p("num_samples", 1)
        p("seed", 0)
        p("camera_to_base", Parameter.Type.DOUBLE_ARRAY)
        p("base_frame_id", "base_link")
        p("expected_period", 0.1)
        p("input_topic", "/mu0/rgbd")
        p("diagnostics_period", 1.0)
        p("autostart", True)
        p("require_device", False)
        p("publish_camera_tf", True)
        p("tf_max_age", 0.5)
        # optional: the robot's config; the gripper is then also queried where the arm's forward
        # kinematics (from /joint_states) puts it in each frame, as the learned experts were trained
        p("robot_config", "")
        self.monitor = RuntimeMonitor("mu0: mu0_node")
        self.qos_events = QosEventMonitor(self)
        self.pipeline: TracePipeline | None = None
        self._slot = None                      # newest unprocessed RGBD message
        self._slot_cv = threading.Condition()
        # held by the worker while it processes a frame: deactivate waits on it, so nothing is
        # published once deactivate has returned (a frame already in the model finishes first)
        self._processing = threading.Lock()
        self._active = False
        self._stop = False
        self._worker: threading.Thread | None = None
        self._entities = []
        self.period = 0.1
        self.traces_pub = self.camera_traces_pub = self.markers_pub = self.diag_pub = None
        self.tf_tree: TfTree | None = None      # camera -> base from /tf_static + /tf (no camera_to_base)
        self._tf_lock = threading.Lock()
        self._static_extrinsic = None           # camera_to_base parameter, published on /tf_static
        self._published_static_for = None
        self.tf_static_pub = None
        self.tf_subs = []
        self.gripper_seeder = None
        self.joint_state_sub = None

    # ------------------------------------------------------------------ lifecycle transitions
    def _LifecycleNodeMixin__change_state(self, transition_id: int) -> TransitionCallbackReturn:
        """Every transition request goes through here (the change_state service, trigger_*).
        rclpy raises out of the service callback, killing the node, on a transition that is not
        valid in the current state (a second `ros2 lifecycle set /mu0_node configure`, a repeated
        launch request): refuse it (success false) instead."""
        available = {t[0] for t in self._state_machine.available_transitions}
        if transition_id not in available:
            self.get_logger().warning(f"refused lifecycle transition {transition_id}: not valid in state "
                                      f"{self._state_machine.current_state[1]!r}")
            return TransitionCallbackReturn.FAILURE
        return LifecycleNodeMixin._LifecycleNodeMixin__change_state(self, transition_id)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load + warm up the predictor, create endpoints. SUCCESS, or FAILURE with the reason logged."""
        g = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            try:
                extrinsic_values = g("camera_to_base")
            except ParameterUninitializedException:   # not given: traces in the camera frame only
                extrinsic_values = None
            extrinsic = extrinsic_from_list(extrinsic_values, "parameter camera_to_base")
            config = PipelineConfig(queries=g("queries"), max_queries=int(g("max_queries")),
                                    grid_rows=int(g("grid_rows")), grid_cols=int(g("grid_cols")),
                                    num_entities=int(g("num_entities")), track_queries=bool(g("track_queries")),
                                    num_samples=int(g("num_samples")), seed=int(g("seed")),
                                    camera_to_base=extrinsic, base_frame_id=g("base_frame_id"),
                                    objects_refresh_frames=int(g("objects_refresh_frames")))
            model = g("model")
            if not model.startswith("baseline:"):   # a checkpoint: cwd, else the source tree / share/mu0
                model = str(resolve(model))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DeviceUnavailableWarning)
                predictor = make_predictor(model, g("backend"), g("device"), g("dtype"),
                                           require_device=bool(g("require_device")))
            self.backend = getattr(predictor, "backend_report", None) or backend_report(predictor, g("backend"), g("device"))
            for w in caught:
                if issubclass(w.category, DeviceUnavailableWarning):
                    self.get_logger().warning(f"{w.message} - running anyway (set require_device to refuse)")
            self.pipeline = TracePipeline(predictor, config, instruction=g("instruction") or "")
            self.period = float(g("expected_period"))
            if not self.period > 0:
                raise ValueError(f"parameter expected_period must be > 0, got {self.period}")
            warm_ms = self.pipeline.warmup()
            self.tf_max_age_ns = int(float(g("tf_max_age")) * 1e9)
        except Exception as exc:  # CheckpointError / ValueError name the file and field
            self.get_logger().error(f"configure failed: {exc}")
            self.pipeline = None
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"loaded {predictor.model_id} ({model}, {describe_backend(self.backend)}), "
                               f"warm-up {warm_ms:.1f} ms")
        self._setup_tf(extrinsic, bool(g("publish_camera_tf")), g("base_frame_id"))
        self.traces_pub = self.create_lifecycle_publisher(TraceArray, "/mu0/traces", reliable_qos(5))
        self.camera_traces_pub = self.create_lifecycle_publisher(TraceArray, "/mu0/traces_camera", reliable_qos(5))
        self.markers_pub = self.create_lifecycle_publisher(MarkerArray, "/mu0/trace_markers", reliable_qos(5))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable_qos(10))
        topic = g("input_topic")
        self.rgbd_sub = self.create_subscription(RGBD, topic, self._on_rgbd, latest_only_qos(),
                                                 event_callbacks=self.qos_events.subscription(topic))
        self.instruction_sub = self.create_subscription(
            String, "/mu0/instruction", self._on_instruction, latched_qos(),
            event_callbacks=self.qos_events.subscription("/mu0/instruction"))
        self.queries_sub = self.create_subscription(QueryPoints, "/mu0/queries", self._on_queries, reliable_qos(5))
        if g("robot_config"):
            self._setup_gripper_seeder(g("robot_config"))
        self.instruction_srv = self.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction)
        # on the steady clock: under use_sim_time diagnostics keep coming when /clock stops
        self.diag_timer = self.create_timer(float(g("diagnostics_period")), self._report,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="mu0_worker", daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def _setup_tf(self, extrinsic, publish: bool, base_frame: str) -> None:
        """One source of truth for camera -> base: the camera_to_base parameter (then published on
        /tf_static for RViz and other nodes), else the TF tree (/tf_static + /tf)."""
        self._static_extrinsic, self._published_static_for, self.tf_tree = extrinsic, None, None
        if extrinsic is not None:
            if publish and TFMessage is not None:
                self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
            self.get_logger().info(f"camera -> {base_frame}: parameter camera_to_base"
                                   + (" (published on /tf_static)" if self.tf_static_pub else ""))
            return
        if TFMessage is None:
            self.get_logger().warning("no camera_to_base and no tf2_msgs to read TF with: traces in the camera "
                                      "frame only")
            return
        self.tf_tree = TfTree()
        self.tf_subs = [self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), TF_STATIC_QOS),
                        self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), 100)]
        self.get_logger().info(f"camera -> {base_frame}: from TF (/tf_static, /tf)")

    def _on_tf(self, msg, static: bool) -> None:
        with self._tf_lock:
            for t in msg.transforms:
                try:
                    self.tf_tree.set_transform(t.header.frame_id, t.child_frame_id,
                                               convert.transform_to_rigid(t.transform),
                                               convert.stamp_to_ns(t.header.stamp), static)
                except ValueError as exc:
                    self.get_logger().warning(f"ignored a TF edge: {exc}", throttle_duration_sec=5.0)

    def _publish_static_tf(self, camera_frame: str, stamp) -> None:
        """The camera_to_base parameter as base_frame -> camera frame on /tf_static (once per frame id)."""
        if self.tf_static_pub is None or self._published_static_for == camera_frame or not camera_frame:
            return
        from geometry_msgs.msg import TransformStamped

        t = TransformStamped()
        t.header.stamp = stamp
        t.header.frame_id = self.pipeline.config.base_frame_id
        t.child_frame_id = camera_frame
        t.transform = convert.rigid_to_transform(self._static_extrinsic)
        self.tf_static_pub.publish(TFMessage(transforms=[t]))
        self._published_static_for = camera_frame

    def _setup_gripper_seeder(self, path: str) -> None:
        from mu0_policy.experts.robot_config import load_robot_config
        from mu0_policy.runtime import GripperSeeder

        robot = load_robot_config(str(resolve(path)))
        self.gripper_seeder = GripperSeeder(robot)
        # best effort: matches joint-state publishers of either reliability
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.joint_state_sub = self.create_subscription(JointState, robot.joint_state_topic, self._on_joint_state, qos)
        self.get_logger().info(f"gripper queried at its kinematic position ({robot.robot}, {path})")

    def _on_joint_state(self, msg) -> None:
        try:
            with self._tf_lock:
                self.gripper_seeder.update_joint_state(list(msg.name), list(msg.position))
        except Exception as exc:  # a malformed joint state must not stop the node
            self.monitor.count("malformed_joint_states")
            self.get_logger().warning(f"dropped a joint state: {exc!r}", throttle_duration_sec=5.0)

    def _camera_to_base(self, frame) -> bool:
        """Set the pipeline's extrinsic for this frame from TF; False (frame skipped) when unavailable."""
        if self.tf_tree is None:
            return True
        try:
            with self._tf_lock:
                T = self.tf_tree.lookup(self.pipeline.config.base_frame_id, frame.frame_id,
                                        now_ns=frame.stamp_ns, max_age_ns=self.tf_max_age_ns)
        except TransformUnavailable as exc:
            self.monitor.count("tf_unavailable")
            self.get_logger().warning(f"skipped a frame: {exc}", throttle_duration_sec=5.0)
            return False
        self.pipeline.config.camera_to_base = T
        return True

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start processing frames; lifecycle publishers go live. SUCCESS."""
        with self._slot_cv:
            self._slot = None   # never process a frame that waited through the inactive period
            self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing (frames are still received and replaced); returns once a frame already
        in the model has finished, so nothing is published after it. SUCCESS."""
        with self._slot_cv:
            self._active = False
        if self._processing.acquire(timeout=5.0):
            self._processing.release()
        return super().on_deactivate(state)

    def _free(self) -> None:
        with self._slot_cv:
            self._active = False
            self._stop = True
            self._slot = None
            self._slot_cv.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5.0)
        self._worker = None
        self.gripper_seeder = None
        for name in ("rgbd_sub", "instruction_sub", "queries_sub", "joint_state_sub"):
            if getattr(self, name, None) is not None:
                self.destroy_subscription(getattr(self, name))
                setattr(self, name, None)
        for name in ("traces_pub", "camera_traces_pub", "markers_pub"):
            if getattr(self, name, None) is not None:
                self.destroy_lifecycle_publisher(getattr(self, name))
                setattr(self, name, None)
        if getattr(self, "diag_pub", None) is not None:
            self.destroy_publisher(self.diag_pub)
            self.diag_pub = None
        if getattr(self, "tf_static_pub", None) is not None:
            self.destroy_publisher(self.tf_static_pub)
            self.tf_static_pub = None
        for sub in getattr(self, "tf_subs", []):
            self.destroy_subscription(sub)
        self.tf_subs = []
        self.tf_tree = None
        if getattr(self, "instruction_srv", None) is not None:
            self.destroy_service(self.instruction_srv)
            self.instruction_srv = None
        if getattr(self, "diag_timer", None) is not None:
            self.destroy_timer(self.diag_timer)
            self.diag_timer = None
        self.pipeline = None  # drops the predictor (and its memory)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy endpoints and the predictor; back to unconfigured. SUCCESS."""
        self._free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything from any state. SUCCESS."""
        self._free()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ inputs
    def _on_rgbd(self, msg) -> None:
        self.monitor.count("received_frames")
        with self._slot_cv:
            if self._slot is not None:
                self.monitor.count("dropped_frames")  # the worker was busy: only the newest counts
            self._slot = msg
            self._slot_cv.notify()

    def _apply_instruction(self, text: str) -> tuple[bool, str]:
        if self.pipeline is None:
            return False, "node is not configured"
        try:
            self.pipeline.set_instruction(text)
        except ValueError as exc:
            return False, str(exc)
        self.get_logger().info(f"instruction: {self.pipeline.instruction!r}")
        return True, ""

    def _on_instruction(self, msg: String) -> None:
        ok, why = self._apply_instruction(msg.data)
        if not ok:
            self.monitor.count("bad_instruction")
            self.get_logger().warning(f"ignored instruction: {why}", throttle_duration_sec=5.0)

    def _on_set_instruction(self, request, response):
        response.success, response.message = self._apply_instruction(request.instruction)
        return response

    def _on_queries(self, msg: QueryPoints) -> None:
        try:
            pixels, query_ids, entities = convert.query_points_to_arrays(msg)
            self.pipeline.set_given_queries(pixels, query_ids, entities)
        except (ValueError, AttributeError) as exc:
            self.monitor.count("bad_queries")
            self.get_logger().warning(f"ignored QueryPoints: {exc}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._slot_cv:
                while not self._stop and (self._slot is None or not self._active):
                    self._slot_cv.wait(timeout=0.5)
                if self._stop:
                    return
                msg, self._slot = self._slot, None
                self._processing.acquire()      # taken under the slot lock: deactivate sees it
            try:
                self._process(msg)
            except Exception as exc:  # a bug or a model failure must not kill the node
                self.monitor.count("failed_frames")
                self.get_logger().error(f"frame processing failed: {exc!r}", throttle_duration_sec=5.0)
            finally:
                self._processing.release()

    def _process(self, msg) -> None:
        start = time.perf_counter()
        pipeline = self.pipeline
        if pipeline is None:
            return
        try:
            frame = convert.rgbd_msg_to_frame(msg)
        except ValueError as exc:
            self.monitor.count("malformed_rgbd")
            self.get_logger().warning(f"dropped a malformed RGBD frame: {exc}", throttle_duration_sec=5.0)
            return
        self.monitor.record("convert_ms", (time.perf_counter() - start) * 1e3)
        if not pipeline.instruction:
            self.monitor.count("no_instruction")
            self.get_logger().warning("no instruction yet (topic /mu0/instruction or ~/set_instruction)",
                                      throttle_duration_sec=10.0)
            return
        age_ms = (self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e6
        self.monitor.record("frame_age_ms", age_ms)
        if self._static_extrinsic is not None:
            self._publish_static_tf(frame.frame_id, msg.header.stamp)
        elif not self._camera_to_base(frame):
            return
        extra = robot_pixels = None
        if self.gripper_seeder is not None:
            with self._tf_lock:
                extra = self.gripper_seeder.query(pipeline.config.camera_to_base, frame.intrinsics)
                robot_pixels = self.gripper_seeder.self_mask(pipeline.config.camera_to_base, frame.intrinsics,
                                                             frame.depth)
        out = pipeline.process(frame, extra, robot_pixels,
                               0 if self.gripper_seeder is None else self.gripper_seeder.robot.self_filter_hold_frames)
        if out is None:
            self.monitor.count("frames_without_queries")
            return
        for stage, ms in out.timings_ms.items():
            self.monitor.record(stage, ms)
        self.monitor.count("queries_without_depth", out.queries_without_depth)
        t_pub = time.perf_counter()
        if self._active and self.traces_pub is not None:
            # serialized straight from the arrays (convert.trace_set_to_cdr: the same TraceArray,
            # without ~1000 Point objects per set); the robot's input goes out first
            self.traces_pub.publish(convert.trace_set_to_cdr(out.published))
            # the camera-frame copy and the RViz markers only when someone listens: nobody pays
            # for an unwatched visualisation
            if self.camera_traces_pub.get_subscription_count() > 0:
                self.camera_traces_pub.publish(convert.trace_set_to_cdr(out.camera_traces))
            if self.markers_pub.get_subscription_count() > 0:
                # entities that disappeared since the last markers: delete their namespaces explicitly
                current = {s.namespace for s in out.markers}
                self.markers_pub.publish(convert.marker_array_cdr(out.markers, 2.0 * self.period,
                                                                  set(self._entities) - current,
                                                                  frame.stamp_ns, out.published.frame_id))
                self._entities = sorted(current)
            self.monitor.count("published_frames")
        self.monitor.record("publish_ms", (time.perf_counter() - t_pub) * 1e3)
        self.monitor.record("total_ms", (time.perf_counter() - start) * 1e3)

    def _report(self) -> None:
        if self.diag_pub is None:
            return
        status = self.monitor.status(WARN_COUNTERS)
        status.values["incompatible_qos"] = str(self.qos_events.total())
        status.values["active"] = str(self._active)
        if self.pipeline is not None:
            status.values["model_id"] = self.pipeline.predictor.model_id
            status.values["backend"] = describe_backend(self.backend)
            status.values["providers"] = ",".join(self.backend["providers"]) or "-"
            status.values["device"] = self.backend["device"]
            status.values["instruction"] = self.pipeline.instruction
        self.diag_pub.publish(diagnostic_array_msg([status], self.get_clock().now().to_msg()))


def _autostart(node: Mu0Node) -> int | None:
    """Without a launch driving the lifecycle: configure and activate here (1 if configure fails)."""
    if node.get_parameter("autostart").value:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return 1
        node.trigger_activate()
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on SIGINT / SIGTERM (also when interrupted while starting), 1 when autostart's
    configure fails (mu0_ros.node_main has the rest)."""
    return spin_node(Mu0Node, argv, name="mu0_node", start=_autostart, free=Mu0Node._free)


if __name__ == "__main__":
    sys.exit(main())
