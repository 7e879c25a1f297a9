"""Unit behaviour of the TraceExtract stages on constructed data (numpy / OpenCV, no sim)."""
import numpy as np
import pytest

from mu0_perception import keypoints as kp
from mu0_perception.tracking import LucasKanadeTracker, make_tracker
from mu0_perception.trace_extract.lift import estimate_camera_poses
from mu0_perception.trace_extract.segment import segment_events


def test_quota_floor_for_small_entities_and_exact_sum():
    q = kp.allocate_quota({0: 10000, 1: 50, 2: 3000}, 64, min_per_entity=4)
    assert sum(q.values()) == 64 and q[1] >= 4 and q[0] > q[2] > q[1]
    with pytest.raises(ValueError, match="total"):
        kp.allocate_quota({0: 1}, -1)


def test_farthest_point_sampling_spreads_points():
    pts = np.concatenate([np.random.default_rng(0).normal(0, 0.01, (500, 2)), [[10, 10], [-10, 5]]])
    idx = kp.farthest_point_sampling(pts, 3)
    assert {500, 501} <= set(idx.tolist())


def test_movement_filter_is_the_core_rule_with_the_authors_threshold():
    from mu0_core import metrics as mt

    assert kp.movement_filter is mt.moving_points          # one filter, shared with training/metrics
    t = np.linspace(0, 1, 33)
    still = np.zeros((33, 2))
    v = np.ones(33, bool)
    size = (320, 240)                                    # diagonal 400 px -> threshold 20 px
    assert mt.moving_threshold_px(*size) == pytest.approx(20.0)
    z_flat = np.ones(33)
    assert not kp.movement_filter(still, z_flat, v, size)
    assert kp.movement_filter(np.stack([21 * t, 0 * t], -1), z_flat, v, size)
    assert not kp.movement_filter(np.stack([19 * t, 0 * t], -1), z_flat, v, size)
    # vertical motion counts like horizontal (the old rule scaled only with the width)
    assert kp.movement_filter(np.stack([0 * t, 21 * t], -1), z_flat, v, size)
    # depth in metres weighted 0.1, added to pixels as is: 2 m of depth is 0.2 px (the old rule
    # turned depth into pixels with fx and called this point moving)
    assert not kp.movement_filter(still, 1 + 2.0 * t, v, size)
    # only the first 64 steps count
    late = np.zeros((100, 2))
    late[70:, 0] = 50.0
    assert not kp.movement_filter(late, np.ones(100), np.ones(100, bool), size)
    assert kp.movement_filter(late, np.ones(100), np.ones(100, bool), size, max_steps=None)


def test_lk_tracks_a_shifting_texture_and_flags_points_that_leave():
    rng = np.random.default_rng(1)
    base = (rng.random((140, 180)) * 255).astype(np.uint8)
    import cv2
    base = cv2.GaussianBlur(base, (5, 5), 0)
    frames = np.stack([np.repeat(np.roll(base, 2 * t, axis=1)[20:120, 20:160, None], 3, -1) for t in range(10)])
    q = np.array([[40.0, 50.0], [70.0, 30.0], [136.0, 50.0]], np.float32)
    tr = make_tracker("lk").track(frames, np.zeros(3, int), q)
    assert tr.visible[:, :2].all()
    assert np.allclose(tr.uv[9, :2], q[:2] + [18, 0], atol=0.3)
    assert not tr.visible[9, 2]  # pushed out of the image
    with pytest.raises(ValueError, match="query_frames"):
        LucasKanadeTracker().track(frames, np.array([20]), q[:1])


def test_camera_pose_estimation_ignores_moving_points():
    rng = np.random.default_rng(0)
    T, n_static, n_moving = 30, 80, 30
    world = rng.uniform([-1, -1, 2], [1, 1, 4], (n_static, 3))
    from scipy.spatial.transform import Rotation
    poses = []
    for t in range(T):
        M = np.eye(4)
        M[:3, :3] = Rotation.from_euler("y", 0.01 * t).as_matrix()
        M[:3, 3] = [0.01 * t, 0.0, 0.0]
        poses.append(M)
    poses = np.stack(poses)
    xyz = np.zeros((T, n_static + n_moving, 3))
    for t in range(T):
        inv = np.linalg.inv(poses[t])
        xyz[t, :n_static] = world @ inv[:3, :3].T + inv[:3, 3]
        xyz[t, n_static:] = rng.uniform([-1, -1, 2], [1, 1, 4], (n_moving, 3))  # independent motion
    est, ok, static = estimate_camera_poses(xyz, np.ones((T, n_static + n_moving), bool))
    assert ok.all()
    assert np.abs(est[:, :3, 3] - poses[:, :3, 3]).max() < 1e-6
    assert static[:n_static].all() and not static[n_static:].any()


def test_segmentation_splits_two_motions():
    # rest 0-9, motion 10-29, rest 30-39, motion 40-59, rest 60-69: one cut, at the centre of the pause
    speed = np.concatenate([np.zeros(10), np.ones(20), np.zeros(10), np.ones(20), np.zeros(10)]) * 0.01
    assert [(s.start, s.end) for s in segment_events(speed)] == [(0, 35), (35, 70)]


def test_segmentation_exact_boundaries_on_smooth_motions():
    def bell(n):                                     # a minimum-jerk speed profile, 0 at both ends
        t = np.linspace(0, 1, n)
        return 30 * t ** 2 * (1 - t) ** 2

    # motion 5-29, pause 30-41, slower motion 42-62, pause 63-68, motion 69-93, rest to 98
    speed = np.concatenate([np.zeros(5), bell(25), np.zeros(12), 0.5 * bell(21), np.zeros(6),
                            bell(25), np.zeros(5)]) * 0.01
    assert [(s.start, s.end) for s in segment_events(speed)] == [(0, 36), (36, 65), (65, 99)]
    # one motion is one segment (no cut between its start and its stop); too short: one segment
    one = np.concatenate([np.zeros(10), np.ones(30), np.zeros(10)])
    assert [(s.start, s.end) for s in segment_events(one)] == [(0, 50)]
    assert [(s.start, s.end) for s in segment_events(np.zeros(40))] == [(0, 40)]
    assert [(s.start, s.end) for s in segment_events(np.ones(10))] == [(0, 10)]
    # a pause shorter than min_length from the end is not cut
    tail = np.concatenate([np.zeros(10), np.ones(40), np.zeros(4), np.ones(4)])
    assert [(s.start, s.end) for s in segment_events(tail)] == [(0, 58)]


def test_small_entity_above_table_plane_gets_its_own_label():
    from mu0_core.camera import CameraIntrinsics, deproject
    from mu0_perception.keypoints import fit_dominant_plane, small_entity_labels

    intr = CameraIntrinsics(160, 120, 140.0, 140.0, 79.5, 59.5)
    H, W = 120, 160
    vv, uu = np.mgrid[0:H, 0:W].astype(float)
    # a table plane 0.5 y + z = 1.2 (camera looks down on it): depth grows towards the image top
    depth = (1.2 / (1.0 + 0.5 * (vv - 59.5) / 140.0)).astype(np.float32)
    depth[60:66, 70:76] -= 0.03                     # a 6x6 px puck 3 cm nearer (above the table)
    depth[:, :20] -= 0.4                            # a big box: above the table but not small
    depth[5, 5] = np.nan
    pts = deproject(np.stack([uu, vv], -1)[::3, ::3].reshape(-1, 2), np.nan_to_num(depth[::3, ::3]).reshape(-1), intr)
    normal, offset, frac = fit_dominant_plane(pts, seed=1)
    assert frac > 0.7 and offset > 0  # the camera is on the positive side
    lab = small_entity_labels(depth, intr, (normal, offset), max_area_px=100, depth_edge_m=0.05)
    assert lab.max() == 1
    assert (lab[61:65, 71:75] == 1).all() and (lab[:, :20] == 0).all() and (lab[:50] == 0).all()
    with pytest.raises(ValueError, match="xyz"):
        fit_dominant_plane(np.zeros((2, 3)))
