"""mu0_node's per-frame work around predict, made cheaper (issue 14) without changing a number: each
restructured piece against the code it replaced (kept here as the reference), bit for bit, and the
memos (self mask, gripper query, transform compositions) against recomputing."""
import colorsys

import cv2
import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, RigidTransform, project
from mu0_core.frames import RGBDFrame
from mu0_perception import tabletop
from mu0_policy import runtime, trace_postprocess
from mu0_policy.baselines import ConstantVelocityPredictor
from mu0_policy.runtime import GripperSeeder, PipelineConfig, TracePipeline, gripper_query, robot_self_mask
from mu0_policy.trace_postprocess import time_colors, trace_line_strips, transform_trace_set
from mu0_ros import convert

INTR = CameraIntrinsics(160, 120, 150.0, 150.0, 79.5, 59.5)
# the sim's corner camera (bench_runtime.SIM_CAMERA_TO_BASE)
T_BASE_CAM = RigidTransform.from_quat_xyzw([0.736838, -0.305208, 0.230856, -0.557335], [-1.1, -0.4, 0.6])


def _identical(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ the replaced implementations
def _hold_last_finite_loop(xyz, ok):
    out = xyz.copy()
    for i in range(out.shape[0]):
        for t in range(1, out.shape[1]):
            if not ok[i, t]:
                out[i, t] = out[i, t - 1]
    return out


def _backproject_before(depth, intr):
    h, w = depth.shape
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float64)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z], axis=-1)


def _stands_on_surface_before(points, plane, intr, region, min_height=0.008, max_height=0.45):
    finite = np.all(np.isfinite(points), axis=-1)
    safe = np.where(finite[..., None], points, 0.0)
    h = plane.height(safe)
    cand = finite & (h > min_height) & (h < max_height)
    foot = safe - h[..., None] * plane.normal
    out = np.zeros_like(cand)
    if not cand.any():
        return out
    uv, z = project(foot[cand], intr)
    ui, vi = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    ok = (z > 0) & (ui >= 0) & (ui < intr.width) & (vi >= 0) & (vi < intr.height)
    inside = np.zeros(len(ui), bool)
    inside[ok] = region[vi[ok], ui[ok]]
    out[cand] = inside
    return out


def _capsules_mask_one_by_one(capsules_base, T_base_cam, intr, depth=None, depth_margin=0.02):
    mask = np.zeros((intr.height, intr.width), bool)
    lim = 4 * max(intr.width, intr.height)
    z_img = None if depth is None else np.asarray(depth, np.float64)
    for c in np.asarray(capsules_base, float).reshape(-1, 7):
        cam = T_base_cam.inverse().apply(c[:6].reshape(2, 3))
        uv, z = project(cam, intr)
        if not (np.all(z > 0.05) and np.all(np.isfinite(uv))):
            continue
        one = np.zeros((intr.height, intr.width), np.uint8)
        r_px = int(np.ceil(c[6] * intr.fx / z.min()))
        pa, pb = (tuple(int(x) for x in np.clip(np.rint(p), -lim, lim)) for p in uv)
        cv2.line(one, pa, pb, 1, thickness=max(1, 2 * r_px))
        cv2.circle(one, pa, r_px, 1, -1)
        cv2.circle(one, pb, r_px, 1, -1)
        covered = one.astype(bool)
        if z_img is not None:
            covered &= ~(np.isfinite(z_img) & (z_img > float(z.max()) + c[6] + depth_margin))
        mask |= covered
    return mask


def _surface_region_before(points, plane, threshold=0.006, margin_px=2):
    finite = np.all(np.isfinite(points), axis=-1)
    h = plane.height(np.where(finite[..., None], points, 0.0))
    on_plane = (finite & (np.abs(h) < threshold)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(on_plane, connectivity=8)
    region = np.zeros(on_plane.shape, np.uint8)
    if n <= 1:
        return region.astype(bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    v, u = np.nonzero(labels == k)
    hull = cv2.convexHull(np.stack([u, v], axis=1).astype(np.int32))
    cv2.fillConvexPoly(region, hull, 1)
    if margin_px > 0:
        region = cv2.erode(region, np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8))
    return region.astype(bool)


def _table_scene(rng):
    """Depth of a tilted table 0.8-1.1 m away with two boxes on it, a strip with no depth and
    scattered holes; the true support plane."""
    v, u = np.mgrid[0:INTR.height, 0:INTR.width].astype(np.float64)
    depth = 0.8 + 0.3 * v / INTR.height + 0.02 * u / INTR.width
    depth[40:60, 30:55] -= 0.06
    depth[70:90, 100:130] -= 0.1
    depth[:, :6] = np.nan
    depth[rng.random(depth.shape) < 0.05] = 0.0
    depth = depth.astype(np.float32)
    points = _backproject_before(depth, INTR)
    plane = tabletop.fit_support_plane(points)
    assert plane is not None
    return depth, points, plane


# ------------------------------------------------------------------ tabletop
def test_backproject_and_the_object_rule_equal_the_code_they_replaced_bit_for_bit():
    depth, points, plane = _table_scene(np.random.default_rng(0))
    assert _identical(tabletop.backproject(depth, INTR), points)
    assert _identical(tabletop.backproject(depth, INTR), points)            # the cached ray grids again
    other = CameraIntrinsics(160, 120, 151.0, 149.0, 80.0, 59.0)            # other intrinsics: other grids
    assert _identical(tabletop.backproject(depth, other), _backproject_before(depth, other))
    region = tabletop.surface_region(points, plane)
    assert _identical(region, _surface_region_before(points, plane)) and region.mean() > 0.5
    flat = points.reshape(-1, 3)
    assert _identical(tabletop.stands_on_surface(flat, plane, INTR, region),
                      _stands_on_surface_before(flat, plane, INTR, region))
    mask = tabletop.object_mask(points, plane, INTR, region)
    assert _identical(mask, _stands_on_surface_before(flat, plane, INTR, region).reshape(mask.shape))
    assert mask.sum() > 100                                                   # the boxes are found
    assert _identical(tabletop.finite_points(points), np.all(np.isfinite(points), axis=-1))
    partial = flat[:50].copy()
    partial[3, 0], partial[7, 1], partial[9, 2] = np.inf, np.nan, -np.inf
    assert _identical(tabletop.finite_points(partial), np.all(np.isfinite(partial), axis=-1))


@pytest.mark.parametrize("with_depth", [False, True])
def test_capsules_mask_equals_drawing_one_capsule_at_a_time(with_depth):
    rng = np.random.default_rng(1)
    depth, _, _ = _table_scene(rng)
    cam_pts = np.stack([rng.uniform(-0.3, 0.3, 12), rng.uniform(-0.2, 0.2, 12), rng.uniform(0.5, 1.0, 12)], 1)
    base = T_BASE_CAM.apply(cam_pts)
    caps = tabletop.robot_capsules(base, 0.05, extra=[[*T_BASE_CAM.apply([0, 0, -0.2]), *base[0], 0.04]])
    args = (depth, 0.02) if with_depth else ()
    got = tabletop.capsules_mask(caps, T_BASE_CAM, INTR, *args)
    assert _identical(got, _capsules_mask_one_by_one(caps, T_BASE_CAM, INTR, *args))
    assert 0 < got.sum() < got.size
    assert not tabletop.capsules_mask(np.zeros((0, 7)), T_BASE_CAM, INTR).any()


# ------------------------------------------------------------------ postprocess
def test_hold_last_finite_equals_the_loop_it_replaced():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(7, 33, 3))
    ok = rng.random((7, 33)) > 0.4
    ok[:, 0] = True
    ok[3, 1:] = False
    xyz[~ok] = np.nan
    assert _identical(trace_postprocess._hold_last_finite(xyz, ok), _hold_last_finite_loop(xyz, ok))
    assert _identical(trace_postprocess._hold_last_finite(xyz[:0], ok[:0]), _hold_last_finite_loop(xyz[:0], ok[:0]))


def test_time_colors_are_the_hsv_ramp_and_callers_get_their_own_copy():
    c = time_colors(33, 0.5)
    hues = np.linspace(2.0 / 3.0, 0.0, 33)
    assert _identical(c, np.array([(*colorsys.hsv_to_rgb(h, 1.0, 1.0), 0.5) for h in hues], np.float32))
    c[:] = 0
    assert time_colors(33, 0.5)[0, 2] == 1.0 and time_colors(33, 0.5).flags.writeable


def _pipeline(camera_to_base):
    return TracePipeline(ConstantVelocityPredictor(), PipelineConfig(queries="grid", camera_to_base=camera_to_base),
                         instruction="push the block")


def _frames(n=4):
    rng = np.random.default_rng(3)
    depth, _, _ = _table_scene(rng)
    base = cv2.GaussianBlur((rng.random((INTR.height, INTR.width, 3)) * 255).astype(np.uint8), (7, 7), 0)
    return [RGBDFrame(1_000_000_000 + k * 100_000_000, "cam", np.roll(base, 2 * k, axis=1), depth, INTR)
            for k in range(n)]


def test_pipeline_output_is_unchanged_and_markers_are_built_on_demand(monkeypatch):
    """The published set (base frame) equals mapping the camera set with a freshly composed
    transform (no memo), bytes on the wire included; the markers equal trace_line_strips of it and
    are built only when asked for."""
    calls = []
    monkeypatch.setattr(runtime, "trace_line_strips", lambda *a, **k: calls.append(1) or trace_line_strips(*a, **k))
    pipe = _pipeline(T_BASE_CAM)
    for frame in _frames():
        out = pipe.process(frame)
        fresh = RigidTransform(T_BASE_CAM.rotation.copy(), T_BASE_CAM.translation.copy())
        ref = transform_trace_set(out.camera_traces, fresh, "base_link")
        assert convert.trace_set_to_cdr(out.published) == convert.trace_set_to_cdr(ref)
        assert out.camera_traces.camera_to_frame.rotation.tobytes() == np.eye(3).tobytes()
        assert out.camera_traces.camera_to_frame.translation.tobytes() == np.zeros(3).tobytes()
        assert not calls
        strips = out.markers
        assert calls == [1] and out.markers is strips                      # built once, then kept
        ref_strips = trace_line_strips(out.published, width=pipe.config.marker_width)
        assert len(strips) == len(ref_strips) > 0
        for a, b in zip(strips, ref_strips):
            assert (a.namespace, a.marker_id, a.frame_id, a.width) == (b.namespace, b.marker_id, b.frame_id, b.width)
            assert _identical(a.points, b.points) and _identical(a.colors, b.colors)
        calls.clear()


def test_the_up_axis_is_the_inverse_extrinsics_z_column(monkeypatch):
    seen = []
    pipe = _pipeline(T_BASE_CAM)
    real = pipe.tracker.update
    monkeypatch.setattr(pipe.tracker, "update", lambda *a: seen.append(a[3]) or real(*a))
    pipe.process(_frames(1)[0])
    assert _identical(seen[0], T_BASE_CAM.inverse().as_matrix()[:3, 2])


# ------------------------------------------------------------------ gripper seeder memo
def test_gripper_seeder_recomputes_only_when_joints_extrinsic_or_intrinsics_change(monkeypatch):
    from mu0_core.resources import resolve
    from mu0_policy.experts.robot_config import load_robot_config

    robot = load_robot_config(str(resolve("config/robots/sim_sawyer_joint.yaml")))
    seeder = GripperSeeder(robot)
    T = RigidTransform.from_quat_xyzw([0.736838, -0.305208, 0.230856, -0.557335], [-1.1, -0.4, 0.6])
    intr = CameraIntrinsics(320, 240, 300.0, 300.0, 159.5, 119.5)
    assert seeder.self_mask(T, intr) is None and seeder.query(T, intr) is None       # no joints yet
    q = np.array([0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0])
    seeder.update_joint_state(robot.joint_names, q)
    drawn = []
    real = runtime.robot_self_mask
    monkeypatch.setattr(runtime, "robot_self_mask", lambda *a, **k: drawn.append(1) or real(*a, **k))

    def expected(q_arm, T_, intr_):
        ee = seeder.kinematics.ee_pose(q_arm)[:3, 3]
        return real(robot, seeder.kinematics, q_arm, T_, intr_), gripper_query(ee, T_, intr_, robot.gripper_entity)

    def check(q_arm, T_, intr_):
        mask, query = seeder.self_mask(T_, intr_), seeder.query(T_, intr_)
        want_mask, want_query = expected(q_arm, RigidTransform(T_.rotation.copy(), T_.translation.copy()), intr_)
        assert _identical(mask, want_mask) and mask.any()
        assert _identical(query.pixels, want_query.pixels) and _identical(query.query_ids, want_query.query_ids)
        return mask, query

    mask, query = check(q, T, intr)
    assert len(drawn) == 1
    again = seeder.self_mask(T, intr)
    assert again is mask and seeder.query(T, intr) is query and len(drawn) == 1   # unchanged: no redraw
    with pytest.raises(ValueError):
        again[0, 0] = True                                          # shared across frames: read-only
    q2 = q + np.array([0.1, 0.05, 0, -0.1, 0, 0, 0])
    seeder.update_joint_state(robot.joint_names, q2)
    mask2, _ = check(q2, T, intr)
    assert not np.array_equal(mask2, mask)
    T2 = RigidTransform.from_quat_xyzw([0.736838, -0.305208, 0.230856, -0.557335], [-1.1, -0.45, 0.6])
    check(q2, T2, intr)
    check(q2, T2, CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5))
    # the offline twin (training data, evaluator): one FK for both, the same query and mask
    query, mask = runtime.robot_queries(robot, seeder.kinematics, q2, T2, intr)
    want_mask, want_query = expected(q2, T2, intr)
    assert _identical(mask, want_mask) and _identical(query.pixels, want_query.pixels)


# ------------------------------------------------------------------ publish
def test_trace_cdr_carries_each_sets_own_extrinsic_through_the_quaternion_memo():
    """trace_set_to_cdr remembers the last transform's quaternion: a set with another extrinsic
    (a new object, or the same values in a new object) must still carry its own, in the bytes
    rclpy's own serializer writes (padding aside)."""
    from rclpy.serialization import deserialize_message, serialize_message

    from mu0_msgs.msg import TraceArray

    pipe = _pipeline(T_BASE_CAM)
    out = pipe.process(_frames(1)[0])
    T2 = RigidTransform.from_quat_xyzw([0.0, 0.0, 0.38268343, 0.92387953], [0.1, 0.2, 0.3])
    for T in (T_BASE_CAM, T2, RigidTransform(T_BASE_CAM.rotation.copy(), T_BASE_CAM.translation.copy()), T2):
        moved = transform_trace_set(out.camera_traces, T, "base_link")
        back = convert.trace_cdr_to_set(convert.trace_set_to_cdr(moved))
        assert np.allclose(back.camera_to_frame.as_matrix(), T.as_matrix(), atol=1e-12)
        assert _identical(back.samples, moved.samples) and _identical(back.control_points, moved.control_points)
        wire = serialize_message(convert.trace_set_to_msg(moved))
        assert deserialize_message(convert.trace_set_to_cdr(moved), TraceArray) == deserialize_message(wire, TraceArray)


def test_a_transform_computes_its_inverse_and_quaternion_once_with_the_same_numbers():
    from scipy.spatial.transform import Rotation

    from mu0_core.camera import RigidTransform

    T = RigidTransform(Rotation.from_euler("xyz", [0.3, -0.2, 1.1]).as_matrix(), [0.1, -0.4, 0.9])
    inv = T.inverse()
    assert inv is T.inverse()
    assert _identical(inv.rotation, T.rotation.T) and _identical(inv.translation, -T.rotation.T @ T.translation)
    q = T.to_quat_xyzw()
    assert _identical(q, Rotation.from_matrix(T.rotation).as_quat())
    q[:] = 0.0                                     # a caller's copy: the remembered one is untouched
    assert _identical(T.to_quat_xyzw(), Rotation.from_matrix(T.rotation).as_quat())
