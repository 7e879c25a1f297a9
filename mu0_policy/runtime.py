"""The per-frame work of mu0_node as a pure object: frame -> queries -> μ_0 -> published traces.

mu0_node (live, over DDS) and `mu0_app.replay.replay_offline` (in-process, bag to bag) both call
`TracePipeline.process`, so the two give the same traces for the same frames. No ROS imports.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from mu0_core.camera import RigidTransform
from mu0_core.frames import RGBDFrame
from mu0_core.traces import TraceSet
from mu0_perception.query_history import make_query_history
from mu0_perception.query_select import OBJECTS_REFRESH_FRAMES, QuerySet, QueryTracker
from mu0_policy.inference import TracePredictor, TraceRequest, pixels_to_normalized, sample_depth_at
from mu0_policy.trace_postprocess import (LineStrip, result_to_trace_set, trace_line_strips,
                                          transform_trace_set)


@dataclass
class PipelineConfig:
    queries: str = "objects"              # objects | automatic | grid | given (query_select.MODES)
    max_queries: int = 32
    grid_rows: int = 4
    grid_cols: int = 6
    num_entities: int = 4
    track_queries: bool = True
    # `objects` queries: the support plane / work surface are re-parsed at least every this many
    # frames (and whenever lost queries must be replaced); 1 = every frame (query_select.QueryTracker)
    objects_refresh_frames: int = OBJECTS_REFRESH_FRAMES
    num_samples: int = 1
    seed: int | None = 0
    camera_to_base: RigidTransform | None = None   # T_base_cam; None = camera frame only
    base_frame_id: str = "base_link"
    marker_width: float = 0.006

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "PipelineConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
        if "camera_to_base" in d and d["camera_to_base"] is not None and not isinstance(d["camera_to_base"], RigidTransform):
            d["camera_to_base"] = extrinsic_from_list(d["camera_to_base"], f"{where}.camera_to_base")
        return cls(**d)


def extrinsic_from_list(values, where: str = "camera_to_base") -> RigidTransform | None:
    """[x, y, z, qx, qy, qz, qw] (T_base_cam, the camera optical frame's pose in base) -> transform.

    An empty list means "no extrinsic" (traces in the camera frame only).
    """
    values = [] if values is None else list(values)
    if len(values) == 0:
        return None
    if len(values) != 7:
        raise ValueError(f"{where}: expected 7 numbers [x, y, z, qx, qy, qz, qw], got {len(values)}")
    try:
        return RigidTransform.from_quat_xyzw(values[3:], values[:3])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


GRIPPER_QUERY_ID = 2 ** 31     # stable id of the kinematics-seeded gripper query (above the tracker's ids)

def gripper_query(ee_position_base, T_base_cam: RigidTransform, intrinsics, entity: str = "gripper",
                  kinematic_depth: bool = False) -> QuerySet:
    """The gripper as a query: its position from the robot's forward kinematics (base frame)
    projected into the camera. Empty when it falls outside the image or behind the camera. With
    `kinematic_depth` (robot config `gripper_point.depth: kinematic`) its anchor depth is the
    kinematic point's, not the image's at that pixel: thin fingers high above the table show the
    table behind them, and the image put the gripper's trace 20-40 cm from the hand."""
    from mu0_core.camera import project

    uv, z = project(T_base_cam.inverse().apply(np.asarray(ee_position_base, float).reshape(1, 3)), intrinsics)
    u, v = uv[0]
    inside = np.isfinite(u) and np.isfinite(v) and z[0] > 0 and 0 <= u <= intrinsics.width - 1 \
        and 0 <= v <= intrinsics.height - 1
    if not inside:
        return QuerySet(np.zeros(0, np.uint32), np.zeros((0, 2), np.float32), [])
    return QuerySet(np.array([GRIPPER_QUERY_ID], np.uint32), np.array([[u, v]], np.float32), [entity],
                    np.array([z[0]], np.float32) if kinematic_depth else None)


class GripperSeeder:
    """Where the gripper is, for `gripper_query`: forward kinematics of the latest joint state of
    the robot in `config/robots/<robot>.yaml` (mu0_node's optional `robot_config`)."""

    def __init__(self, robot):
        self.robot = robot
        self.kinematics = robot.build_kinematics()
        if self.kinematics is None:
            raise ValueError(f"{robot.path}: kinematics.source 'none': the gripper cannot be located")
        self._q = {}
        # the last query / self mask and what they were computed from (joints, extrinsic,
        # intrinsics): a robot at rest, or a joint state that has not changed since the last
        # camera frame, gets them again without forward kinematics and drawing (~1 ms a frame)
        self._query_memo: tuple | None = None
        self._mask_memo: tuple | None = None
        self._fk_memo: tuple | None = None      # (joints, their link points): one FK per joint state

    def _inputs(self, T_base_cam: RigidTransform, intrinsics) -> tuple:
        q = np.array([self._q[n] for n in self.robot.joint_names])
        return q, (q.tobytes(), T_base_cam.rotation.tobytes(), T_base_cam.translation.tobytes(), intrinsics)

    def _link_points(self, q: np.ndarray) -> np.ndarray:
        """`kinematics.link_points(q)`, shared by the query (its last row, the tool point, is the
        ee position `ee_pose` gives: the same chain product) and the self mask of one frame."""
        key = q.tobytes()
        if self._fk_memo is None or self._fk_memo[0] != key:
            points = self.kinematics.link_points(q)
            points.flags.writeable = False
            self._fk_memo = (key, points)
        return self._fk_memo[1]

    def update_joint_state(self, names, positions) -> None:
        pos = np.asarray(positions, float).reshape(-1)
        for n, p in zip(names, pos):
            if n in self.robot.joint_names and np.isfinite(p):
                self._q[n] = float(p)

    def ee_position(self):
        if not all(n in self._q for n in self.robot.joint_names):
            return None
        return self.kinematics.ee_pose(np.array([self._q[n] for n in self.robot.joint_names]))[:3, 3]

    def query(self, T_base_cam: RigidTransform | None, intrinsics) -> QuerySet | None:
        """The gripper query (`gripper_query`); None without joints or extrinsic. The same QuerySet
        object while joints, extrinsic and intrinsics are unchanged (callers do not modify it)."""
        if T_base_cam is None or not all(n in self._q for n in self.robot.joint_names):
            return None
        q, key = self._inputs(T_base_cam, intrinsics)
        if self._query_memo is not None and self._query_memo[0] == key:
            return self._query_memo[1]
        out = gripper_query(self._link_points(q)[-1], T_base_cam, intrinsics, self.robot.gripper_entity,
                            self.robot.gripper_depth == "kinematic")
        self._query_memo = (key, out)
        return out

    def self_mask(self, T_base_cam: RigidTransform | None, intrinsics,
                  depth: np.ndarray | None = None) -> np.ndarray | None:
        """(H, W) bool: the robot's own pixels (`robot_self_mask`; `depth`: the frame's, used by a
        robot config with `self_filter.mode: depth`), None without joints or extrinsic."""
        if T_base_cam is None or not all(n in self._q for n in self.robot.joint_names):
            return None
        q, key = self._inputs(T_base_cam, intrinsics)
        points = self._link_points(q)
        if self.robot.self_filter_mode == "depth" and depth is not None:   # each frame's depth decides
            return robot_self_mask(self.robot, self.kinematics, q, T_base_cam, intrinsics, depth, points)
        if self._mask_memo is not None and self._mask_memo[0] == key:
            return self._mask_memo[1]
        mask = robot_self_mask(self.robot, self.kinematics, q, T_base_cam, intrinsics, link_points=points)
        mask.flags.writeable = False     # handed out again for the next frames: nobody may edit it
        self._mask_memo = (key, mask)
        return mask


def robot_queries(robot, kinematics, q_arm, T_base_cam: RigidTransform, intrinsics,
                  depth: np.ndarray | None = None) -> tuple[QuerySet, np.ndarray]:
    """What mu0_node adds to a frame when it has a robot config: the gripper query at the arm's
    forward-kinematics position and the robot's own pixels (`robot_self_mask`), for offline users
    (the expert's training data, the closed-loop evaluator) that hold the joints themselves."""
    points = kinematics.link_points(np.asarray(q_arm, float))     # its last row is the ee position
    return (gripper_query(points[-1], T_base_cam, intrinsics, robot.gripper_entity, robot.gripper_depth == "kinematic"),
            robot_self_mask(robot, kinematics, q_arm, T_base_cam, intrinsics, depth, points))


def robot_self_mask(robot, kinematics, q_arm, T_base_cam: RigidTransform, intrinsics,
                    depth: np.ndarray | None = None, link_points: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: pixels the robot covers - capsules around its link skeleton (forward kinematics
    of `q_arm`, the robot config's joints) plus the config's fixed `self_filter.capsules` - so query
    selection does not take the arm for an object. With `self_filter.mode: depth` and the frame's
    `depth`, only the pixels whose measured point lies inside a capsule: the silhouette alone hides
    whatever is seen next to the gripper (a drawer handle 15 cm behind it), see
    tabletop.capsules_mask."""
    from mu0_perception.tabletop import capsules_mask, robot_capsules

    if link_points is None:      # else the caller's `kinematics.link_points(q_arm)`
        link_points = kinematics.link_points(np.asarray(q_arm, float))
    caps = robot_capsules(link_points, robot.self_filter_radius, robot.self_filter_capsules)
    if robot.self_filter_mode == "depth" and depth is not None:
        return capsules_mask(caps, T_base_cam, intrinsics, depth, robot.self_filter_depth_margin)
    return capsules_mask(caps, T_base_cam, intrinsics)


@dataclass
class PipelineOutput:
    stamp_ns: int
    queries: QuerySet
    camera_traces: TraceSet
    base_traces: TraceSet | None
    marker_width: float = 0.006
    timings_ms: dict = field(default_factory=dict)
    queries_without_depth: int = 0

    @property
    def published(self) -> TraceSet:
        """The set the node publishes on /mu0/traces: base frame when an extrinsic is given."""
        return self.base_traces if self.base_traces is not None else self.camera_traces

    @functools.cached_property
    def markers(self) -> list[LineStrip]:
        """RViz line strips of the published set (`trace_line_strips`), built on first use: the node
        asks only when /mu0/trace_markers has a subscriber."""
        return trace_line_strips(self.published, width=self.marker_width)


class TracePipeline:
    """Stateful (query tracking + history) frame processor around a TracePredictor."""

    def __init__(self, predictor: TracePredictor, config: PipelineConfig | None = None,
                 instruction: str = ""):
        self.predictor = predictor
        self.config = config or PipelineConfig()
        if self.config.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.config.num_samples}")
        self.tracker = QueryTracker(self.config.queries, max_points=self.config.max_queries,
                                    grid_rows=self.config.grid_rows, grid_cols=self.config.grid_cols,
                                    num_entities=self.config.num_entities, track=self.config.track_queries,
                                    objects_refresh_frames=self.config.objects_refresh_frames)
        # the history is built by the rule the checkpoint's training data was made with: a model
        # trained on synchronous (progress) steps must not get a time-spaced history
        self.history = make_query_history(getattr(predictor, "history_parameterization", "arc_length"))
        self.instruction = ""
        if instruction:
            self.set_instruction(instruction)

    def set_instruction(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction: must be a non-empty string")
        self.instruction = text.strip()

    def set_given_queries(self, pixels, query_ids=None, entities=None) -> None:
        if self.config.queries != "given":
            raise ValueError(f"given queries arrive while queries mode is {self.config.queries!r}")
        self.tracker.set_given(pixels, query_ids, entities)

    def reset(self) -> None:
        self.tracker.reset()
        self.history.reset()
        self.predictor.reset()

    def warmup(self, width: int = 64, height: int = 48) -> float:
        """Run the predictor once on a synthetic frame (first-call costs happen here); returns ms."""
        from mu0_core.camera import CameraIntrinsics

        intr = CameraIntrinsics(width, height, width, width, (width - 1) / 2, (height - 1) / 2)
        request = TraceRequest(color=np.full((height, width, 3), 128, np.uint8),
                               depth=np.ones((height, width), np.float32), intrinsics=intr,
                               instruction=self.instruction or "warm up",
                               query_px=np.array([[width / 2, height / 2]], np.float32))
        start = time.perf_counter()
        self.predictor.predict([request], num_samples=self.config.num_samples, seed=self.config.seed)
        return (time.perf_counter() - start) * 1e3

    def process(self, frame: RGBDFrame, extra_queries: QuerySet | None = None,
                exclude_mask: np.ndarray | None = None, hold_occluded: int = 0) -> PipelineOutput | None:
        """Traces for one frame; None when there is nothing to predict (no instruction / queries).

        `extra_queries` are asked about in this frame on top of the tracked ones (e.g. the gripper
        where the robot's kinematics puts it: `gripper_query`); their ids must stay stable across
        frames for their history, and must not collide with the tracker's (use ids >= 2**31).
        `exclude_mask` ((H, W) bool, e.g. `robot_self_mask`) marks pixels where the tracker must not
        place queries (the robot's own body); `hold_occluded` (frames; robot config
        `self_filter.hold_occluded_frames`) holds a query the robot's pixels cover instead of
        dropping it (`QueryTracker.update`)."""
        if not self.instruction:
            return None
        timings = {}
        t0 = time.perf_counter()
        T = self.config.camera_to_base
        # base z axis in the camera frame: column 2 of T's inverse rotation R^T, i.e. row 2 of R
        up = None if T is None else T.rotation[2].copy()
        queries = self.tracker.update(frame.color, frame.depth, frame.intrinsics, up, exclude_mask, hold_occluded)
        # depths known without the image (a query held under the robot, the kinematic gripper), NaN elsewhere
        known = queries.depth
        if extra_queries is not None and len(extra_queries):
            if known is not None or extra_queries.depth is not None:
                own = known if known is not None else np.full(len(queries), np.nan, np.float32)
                other = extra_queries.depth if extra_queries.depth is not None else np.full(len(extra_queries), np.nan, np.float32)
                known = np.concatenate([own, other])
            queries = QuerySet(np.concatenate([queries.query_ids, extra_queries.query_ids]),
                               np.concatenate([queries.pixels, extra_queries.pixels]),
                               [*queries.entities, *extra_queries.entities])
        width, height = frame.intrinsics.width, frame.intrinsics.height
        z = sample_depth_at(frame.depth, queries.pixels) if len(queries) else np.zeros(0, np.float32)
        if known is not None:
            z = np.where(np.isfinite(known), known, z).astype(np.float32)
        has_depth = np.isfinite(z) & (z > 0)
        without_depth = int((~has_depth).sum())
        if without_depth:   # a depthless frame is a gap in those queries' history (NaN = invalid step),
            # as TraceExtract marks it in training; interpolating over it would feed the model a
            # history it never saw
            self.history.add(frame.stamp_ns, queries.query_ids[~has_depth], np.full((without_depth, 3), np.nan))
        queries = queries.subset(has_depth)   # no metric anchor -> no 3D trace for the robot
        z = z[has_depth]
        uvz_now = np.concatenate([pixels_to_normalized(queries.pixels, width, height), z[:, None]], axis=1)
        self.history.add(frame.stamp_ns, queries.query_ids, uvz_now)
        history = self.history.history(queries.query_ids, frame.stamp_ns, self.predictor.step_period)
        timings["select_ms"] = (time.perf_counter() - t0) * 1e3
        if len(queries) == 0:
            return None
        t1 = time.perf_counter()
        # the anchor depth sampled above goes with the request: the predictor does not sample the
        # depth image a second time (same rule, mu0_core.query_geometry.depth_at_pixels)
        request = TraceRequest(color=frame.color, depth=frame.depth, intrinsics=frame.intrinsics,
                               instruction=self.instruction, query_px=queries.pixels, history_uvz=history,
                               query_depth=z)
        result = self.predictor.predict([request], num_samples=self.config.num_samples,
                                        seed=self.config.seed)[0]
        timings["predict_ms"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        camera_traces = result_to_trace_set(
            result, query_ids=queries.query_ids, entities=queries.entities, pixels=queries.pixels,
            intrinsics=frame.intrinsics, stamp_ns=frame.stamp_ns, camera_frame_id=frame.frame_id,
            instruction=self.instruction, model_id=self.predictor.model_id,
            step_period=self.predictor.step_period)
        base_traces = None
        if self.config.camera_to_base is not None:
            base_traces = transform_trace_set(camera_traces, self.config.camera_to_base, self.config.base_frame_id)
        timings["postprocess_ms"] = (time.perf_counter() - t2) * 1e3
        return PipelineOutput(frame.stamp_ns, queries, camera_traces, base_traces, self.config.marker_width,
                              timings, without_depth)
