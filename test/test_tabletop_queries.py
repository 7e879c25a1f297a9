"""`objects` query selection: support plane, objects standing on it, the robot self filter.

Synthetic RGB-D frames with known geometry (a tilted table plane, boxes on it, a tray rim, a
"robot" bar), then the real simulated Sawyer scene with the MuJoCo segmentation as ground truth.
"""
from __future__ import annotations

import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, RigidTransform
from mu0_perception import tabletop
from mu0_perception.query_select import QueryTracker

W, H = 160, 120
INTR = CameraIntrinsics(W, H, 140.0, 140.0, (W - 1) / 2, (H - 1) / 2)


def look_at(eye, target) -> RigidTransform:
    """T_base_cam of an optical frame (x right, y down, z forward) at `eye` looking at `target`."""
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    return RigidTransform(np.stack([r, np.cross(f, r), f], axis=1), np.asarray(eye, float))


T_BASE_CAM = look_at([0.0, -0.6, 0.8], [0.0, 0.1, 0.0])    # 0.8 m above the table, pitched down


def render_scene(boxes, rim_y=None):
    """Ray-cast depth of the plane z = 0 (|x|, |y - 0.1| < 0.5) with axis-aligned boxes
    (x0, x1, y0, y1, height) on it, optionally a 5 cm rim wall along y = rim_y; far wall elsewhere."""
    v, u = np.mgrid[0:H, 0:W].astype(float)
    rays_cam = np.stack([(u - INTR.cx) / INTR.fx, (v - INTR.cy) / INTR.fy, np.ones_like(u)], -1)
    R, t = T_BASE_CAM.rotation, T_BASE_CAM.translation
    d = rays_cam @ R.T
    depth = np.full((H, W), np.nan)
    best = np.full((H, W), np.inf)

    def hit(s, ok):
        nonlocal best
        ok = ok & (s > 0) & (s < best)
        best = np.where(ok, s, best)

    s = -t[2] / d[..., 2]
    p = t + s[..., None] * d
    hit(s, (np.abs(p[..., 0]) < 0.5) & (np.abs(p[..., 1] - 0.1) < 0.5))
    for x0, x1, y0, y1, hz in boxes:             # top faces and front faces (y = y0)
        s_top = (hz - t[2]) / d[..., 2]
        p = t + s_top[..., None] * d
        hit(s_top, (p[..., 0] > x0) & (p[..., 0] < x1) & (p[..., 1] > y0) & (p[..., 1] < y1))
        s_front = (y0 - t[1]) / d[..., 1]
        p = t + s_front[..., None] * d
        hit(s_front, (p[..., 0] > x0) & (p[..., 0] < x1) & (p[..., 2] > 0) & (p[..., 2] < hz))
    if rim_y is not None:
        s_rim = (rim_y - t[1]) / d[..., 1]
        p = t + s_rim[..., None] * d
        hit(s_rim, (np.abs(p[..., 0]) < 0.5) & (p[..., 2] > 0) & (p[..., 2] < 0.05))
    z_cam = best * rays_cam[..., 2]
    depth = np.where(np.isfinite(best), z_cam, np.nan).astype(np.float32)
    color = np.full((H, W, 3), 120, np.uint8)
    return color, depth


def box_pixels(depth, box):
    pts = T_BASE_CAM.apply(tabletop.backproject(depth, INTR).reshape(-1, 3)).reshape(H, W, 3)
    x0, x1, y0, y1, hz = box
    return (pts[..., 0] > x0 - 1e-3) & (pts[..., 0] < x1 + 1e-3) & (pts[..., 1] > y0 - 1e-3) \
        & (pts[..., 1] < y1 + 1e-3) & (pts[..., 2] > 0.005)


UP = T_BASE_CAM.inverse().as_matrix()[:3, 2]
BOX = (-0.05, 0.05, 0.05, 0.12, 0.08)
SMALL = (0.2, 0.23, 0.2, 0.23, 0.02)


def test_support_plane_with_up_and_ransac_agree_with_the_true_table():
    _, depth = render_scene([BOX])
    pts = tabletop.backproject(depth, INTR)
    true_n = UP                                       # table normal, camera frame
    true_d = -float(true_n @ T_BASE_CAM.inverse().translation)
    for up in (UP, None):                              # histogram along up / scikit-learn RANSAC
        plane = tabletop.fit_support_plane(pts, up=up)
        assert plane is not None
        assert abs(plane.normal @ true_n) > 0.999, (up is None, plane.normal)
        assert abs(plane.offset - true_d) < 0.005


def test_object_mask_finds_boxes_not_the_table_or_the_rim():
    color, depth = render_scene([BOX, SMALL], rim_y=-0.35)
    pts = tabletop.backproject(depth, INTR)
    plane = tabletop.fit_support_plane(pts, up=UP)
    mask = tabletop.object_mask(pts, plane, INTR)
    on_box, on_small = box_pixels(depth, BOX), box_pixels(depth, SMALL)
    assert on_box.sum() > 20 and on_small.sum() >= 2
    assert (mask & on_box).sum() >= 0.8 * on_box.sum()
    assert (mask & on_small).sum() >= 1
    assert (mask & ~on_box & ~on_small).sum() <= 0.05 * mask.sum()   # rim and table excluded
    segs = tabletop.object_segments(mask)
    assert len(segs) == 2


def test_objects_mode_queries_every_object_and_respects_the_robot_mask():
    color, depth = render_scene([BOX, SMALL])
    on_box, on_small = box_pixels(depth, BOX), box_pixels(depth, SMALL)
    tracker = QueryTracker("objects", max_points=16)
    qs = tracker.update(color, depth, INTR, UP)
    ui, vi = np.rint(qs.pixels[:, 0]).astype(int), np.rint(qs.pixels[:, 1]).astype(int)
    on_any = on_box[vi, ui] | on_small[vi, ui]
    assert on_any.all()
    assert on_small[vi, ui].any() and on_box[vi, ui].any()            # the small object is queried too
    assert len(set(qs.entities)) == 2
    # the "robot" covers the big box: no query may land there
    robot = tabletop.capsules_mask([[-0.1, 0.08, 0.05, 0.1, 0.08, 0.05, 0.06]], T_BASE_CAM, INTR)
    assert (robot & on_box).sum() > 0.5 * on_box.sum()
    qs = QueryTracker("objects", max_points=16).update(color, depth, INTR, UP, robot)
    ui, vi = np.rint(qs.pixels[:, 0]).astype(int), np.rint(qs.pixels[:, 1]).astype(int)
    assert not robot[vi, ui].any()
    assert on_small[vi, ui].any()


def test_without_an_extrinsic_the_ransac_plane_is_kept_while_it_explains_the_scene(monkeypatch):
    color, depth = render_scene([BOX, SMALL])
    fits = []
    real_fit = tabletop.fit_support_plane
    monkeypatch.setattr(tabletop, "fit_support_plane", lambda *a, **k: fits.append(k.get("up")) or real_fit(*a, **k))
    tracker = QueryTracker("objects", max_points=16, track=False)
    for _ in range(3):
        qs = tracker.update(color, depth, INTR, None)
        assert len(qs) and all(e.startswith("object_") for e in qs.entities)
    assert fits == [None]                      # fitted once (RANSAC), then reused
    other = depth.copy()
    other[:] = 2.0                             # the camera now sees a wall: the old plane explains nothing
    tracker.update(color, other, INTR, None)
    assert len(fits) == 2


def test_objects_mode_reparses_the_scene_every_n_frames_with_the_same_queries(monkeypatch):
    """`objects_refresh_frames`: the plane and surface are parsed every N frames (and when queries
    were lost), not every frame; the queries are those of a tracker that parses every frame,
    also when an object leaves between two parses (its queries are dropped in that very frame,
    read from that frame's depth) and when one appears elsewhere."""
    moved = (0.1, 0.2, 0.05, 0.12, 0.08)
    scenes = [render_scene([BOX, SMALL])] * 6 + [render_scene([SMALL])] * 3 + [render_scene([moved, SMALL])] * 5
    every = QueryTracker("objects", max_points=16, track=False, objects_refresh_frames=1)
    want = [every.update(color, depth, INTR, UP) for color, depth in scenes]
    parses = []
    real_region = tabletop.surface_region
    monkeypatch.setattr(tabletop, "surface_region", lambda *a, **k: parses.append(1) or real_region(*a, **k))
    tracker = QueryTracker("objects", max_points=16, track=False, objects_refresh_frames=4)
    for k, ((color, depth), expected) in enumerate(zip(scenes, want)):
        got = tracker.update(color, depth, INTR, UP)
        np.testing.assert_array_equal(got.query_ids, expected.query_ids, err_msg=f"frame {k}")
        np.testing.assert_array_equal(got.pixels, expected.pixels, err_msg=f"frame {k}")
        assert got.entities == expected.entities
    gone = box_pixels(scenes[0][1], BOX)
    ui, vi = np.rint(want[6].pixels[:, 0]).astype(int), np.rint(want[6].pixels[:, 1]).astype(int)
    assert gone[np.rint(want[5].pixels[:, 1]).astype(int), np.rint(want[5].pixels[:, 0]).astype(int)].any()
    assert not gone[vi, ui].any()                  # the box left at frame 6: none of its queries stayed
    assert len(parses) < len(scenes) // 2          # frames 0, 4 and the frames that lost queries
    with pytest.raises(ValueError, match="objects_refresh_frames"):
        QueryTracker("objects", objects_refresh_frames=0)


def test_objects_mode_falls_back_to_corners_without_a_surface():
    rng = np.random.default_rng(0)
    color = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth = np.full((H, W), np.nan, np.float32)
    depth[:, : W // 2] = 1.0 + rng.random((H, W // 2)).astype(np.float32)    # no plane holds
    qs = QueryTracker("objects", max_points=8).update(color, depth, INTR, None)
    assert len(qs) > 0 and all(e.startswith("cluster_") for e in qs.entities)


def test_robot_config_self_filter_is_validated(tmp_path):
    import yaml

    from mu0_policy.experts.robot_config import RobotConfigError, load_robot_config
    from mu0_core.resources import resolve

    src = yaml.safe_load(resolve("config/robots/sim_sawyer_ee.yaml").read_text())
    cfg = load_robot_config(str(resolve("config/robots/sim_sawyer_ee.yaml")))
    assert cfg.self_filter_radius == pytest.approx(0.07) and len(cfg.self_filter_capsules) == 1
    src["self_filter"]["capsules"] = [[0, 0, 0, 0, 0, 1]]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(src))
    with pytest.raises(RobotConfigError, match=r"bad.yaml.*self_filter.capsules\[0\]"):
        load_robot_config(str(bad))
    src["self_filter"]["capsules"] = []
    src["self_filter"]["mode"] = "xray"
    bad.write_text(yaml.safe_dump(src))
    with pytest.raises(RobotConfigError, match=r"bad.yaml.*self_filter.mode"):
        load_robot_config(str(bad))


@pytest.mark.parametrize("task", ["drawer-open", "button-press"])
def test_sim_scene_queries_land_on_the_task_object_not_the_arm(task):
    """The simulated Sawyer, MuJoCo's segmentation as ground truth: with the robot config's self
    filter, `objects` queries sit on the task's bodies; corner features mostly do not."""
    from mu0_policy.experts.robot_config import load_robot_config
    from mu0_policy.runtime import robot_queries
    from mu0_sim.env import SawyerSimEnv

    from mu0_core.resources import resolve

    robot = load_robot_config(str(resolve("config/robots/sim_sawyer_ee.yaml")))
    kin = robot.build_kinematics()
    env = SawyerSimEnv(task, seed=100, width=W, height=H)
    try:
        obs = env.observe()
        seg = env.renderer.render_segmentation(env.data)
        q = np.array([obs.joint_positions[obs.joint_names.index(n)] for n in robot.joint_names])
        gripper, robot_px = robot_queries(robot, kin, q, obs.T_base_cam, obs.intrinsics)
        assert len(gripper) == 1
        up = obs.T_base_cam.inverse().as_matrix()[:3, 2]
        names = [env.model.body(int(env.model.geom_bodyid[g])).name if g >= 0 else "" for g in seg.ravel()]
        body = np.array(names, object).reshape(seg.shape)
        robotish = np.vectorize(lambda n: n.startswith(("right_", "hand", "rightclaw", "leftclaw", "rightpad",
                                                        "leftpad", "base", "pedestal", "head", "torso")))(body)
        static = np.vectorize(lambda n: n in ("", "world", "tablelink"))(body)

        def landed(mode, mask):
            qs = QueryTracker(mode, max_points=32).update(obs.color, obs.depth, obs.intrinsics, up, mask)
            ui, vi = np.rint(qs.pixels[:, 0]).astype(int), np.rint(qs.pixels[:, 1]).astype(int)
            return (~robotish[vi, ui] & ~static[vi, ui]).mean(), robotish[vi, ui].mean()

        on_task, on_robot = landed("objects", robot_px)
        corner_task, _ = landed("automatic", None)
        assert on_task >= 0.85 and on_robot <= 0.1
        assert corner_task < 0.5
    finally:
        env.close()


def test_depth_self_filter_keeps_the_arm_and_frees_what_is_seen_behind_it():
    """drawer-open, seed 118: the handle sits beside the gripper in the image, 15 cm behind it.
    The silhouette filter hides most of the handle (no query can land on what the expert has to
    grasp); the depth filter (`self_filter.mode: depth`) frees it and still covers the arm as the
    silhouette does (MuJoCo's segmentation as ground truth)."""
    from mu0_policy.experts.robot_config import load_robot_config
    from mu0_sim.env import SawyerSimEnv

    from mu0_core.resources import resolve

    robot = load_robot_config(str(resolve("config/robots/sim_sawyer_ee.yaml")))
    kin = robot.build_kinematics()
    env = SawyerSimEnv("drawer-open", seed=118, width=W, height=H)
    try:
        obs = env.observe()
        seg = env.renderer.render_segmentation(env.data)
        body = np.array([env.model.body(int(env.model.geom_bodyid[g])).name if g >= 0 else "" for g in seg.ravel()],
                        object).reshape(seg.shape)
        geom = np.array([env.model.geom(int(g)).name if g >= 0 else "" for g in seg.ravel()], object).reshape(seg.shape)
        robot_px = np.vectorize(lambda n: n.startswith(("right_", "hand", "rightpad", "leftpad", "pedestal", "head",
                                                        "torso")))(body)
        handle = geom == "objGeom"
        q = np.array([obs.joint_positions[obs.joint_names.index(n)] for n in robot.joint_names])
        caps = tabletop.robot_capsules(kin.link_points(q), robot.self_filter_radius, robot.self_filter_capsules)
        silhouette = tabletop.capsules_mask(caps, obs.T_base_cam, obs.intrinsics)
        depth_aware = tabletop.capsules_mask(caps, obs.T_base_cam, obs.intrinsics, obs.depth, 0.02)
        assert handle.sum() >= 10
        assert silhouette[handle].mean() >= 0.5 and depth_aware[handle].mean() <= 0.2
        assert not (depth_aware & ~silhouette).any()                        # it only ever frees pixels
        assert depth_aware[robot_px].mean() >= 0.97 * silhouette[robot_px].mean()
        assert (depth_aware & ~robot_px).sum() < 0.75 * (silhouette & ~robot_px).sum()
    finally:
        env.close()


def test_kinematic_gripper_depth_puts_the_gripper_trace_on_the_hand(tmp_path):
    """gripper_point.depth: kinematic. At 160x120 the fingers high above the table are a pixel or
    two wide and the image depth at the gripper's pixel is the table behind them: the gripper's
    trace started 20-40 cm from the hand (pick-place, seed 100, reset pose). With the kinematic
    depth it starts at the forward-kinematics point; the YAML field is validated."""
    import os

    import yaml

    from mu0_app.eval_policy import PredictedTraces
    from mu0_core.resources import resolve
    from mu0_policy.experts.robot_config import RobotConfigError, load_robot_config
    from mu0_sim.env import SawyerSimEnv

    base = os.path.abspath(str(resolve("config/robots/sim_sawyer_joint.yaml")))
    kin_yaml = tmp_path / "kin.yaml"
    kin_yaml.write_text(yaml.safe_dump({"extends": base, "gripper_point": {"depth": "kinematic"}}))
    env = SawyerSimEnv("pick-place", seed=100, embodiment="sawyer_joint", width=160, height=120)
    try:
        obs = env.reset(100, render=True)
        hand = {}
        for name, path in (("image", base), ("kinematic", str(kin_yaml))):
            robot = load_robot_config(path)
            assert robot.gripper_depth == name
            src = PredictedTraces("checkpoints/mu0_small", robot=robot)
            src.reset(env.instruction)
            tr = src.traces(env, obs)
            q = np.array([obs.joint_positions[obs.joint_names.index(n)] for n in robot.joint_names])
            fk = robot.build_kinematics().ee_pose(q)[:3, 3]
            hand[name] = np.linalg.norm(tr.samples[tr.entities.index(robot.gripper_entity), 0] - fk)
        assert hand["image"] > 0.1            # the table behind the fingers
        assert hand["kinematic"] < 0.005      # the hand itself
    finally:
        env.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": base, "gripper_point": {"depth": "sonar"}}))
    with pytest.raises(RobotConfigError, match=r"bad.yaml.*gripper_point.depth"):
        load_robot_config(str(bad))


def test_a_query_the_robot_covers_is_held_with_its_last_depth_then_dropped():
    """`hold_occluded`: the robot's silhouette comes over a small object that has queries. Without
    the hold they are dropped (and no new query may sit under the robot); with it they keep their
    ids, pixels and entity for N frames, their depth the last one measured (not the hand's, now in
    front of it), and are dropped after N frames."""
    color, depth = render_scene([SMALL])
    on_small = box_pixels(depth, SMALL)
    centre, eye = np.array([0.215, 0.215, 0.01]), T_BASE_CAM.translation    # a hand on the line of sight
    near, far = centre + 0.5 * (eye - centre), centre + 0.2 * (eye - centre)
    robot = tabletop.capsules_mask([[*near, *far, 0.05]], T_BASE_CAM, INTR)
    assert robot[on_small].all() and robot.mean() < 0.2
    hand_in_front = np.where(robot, np.float32(0.4), depth)          # what the depth camera sees now
    for hold in (0, 2):
        tracker = QueryTracker("objects", max_points=8)
        first = tracker.update(color, depth, INTR, UP, None, hold)
        ui, vi = np.rint(first.pixels[:, 0]).astype(int), np.rint(first.pixels[:, 1]).astype(int)
        assert on_small[vi, ui].all() and len(first) >= 1
        seen = {q: float(depth[v, u]) for q, u, v in zip(first.query_ids.tolist(), ui, vi)}
        covered = [tracker.update(color, hand_in_front, INTR, UP, robot, hold) for _ in range(3)]
        if hold == 0:
            assert len(covered[0]) == 0
            continue
        for qs in covered[:2]:
            assert sorted(qs.query_ids.tolist()) == sorted(seen)
            assert set(qs.entities) == set(first.entities)
            np.testing.assert_allclose(qs.pixels, first.pixels, atol=1e-4)
            for q, z in zip(qs.query_ids.tolist(), qs.depth):
                assert abs(z - seen[q]) < 0.01 and abs(z - 0.4) > 0.1
        assert len(covered[2]) == 0


def test_holding_occluded_queries_keeps_the_puck_traced_as_the_hand_comes_down():
    """The simulated joint Sawyer, pick-place seed 100, the scripted expert approaching the puck:
    the self filter's silhouette covers the puck from 6 cm out (sim step 16), so without the hold
    the nearest trace at the grasp (step 32) starts 20+ cm from it (the goal, the bin); holding
    occluded queries (robot config `self_filter.hold_occluded_frames`) keeps the puck's trace as
    close as it was while the puck was in view (its query sits on the puck's top, 2-3 cm from the
    centre the sim reports)."""
    import dataclasses

    from mu0_app.eval_policy import PredictedTraces
    from mu0_core.resources import resolve
    from mu0_policy.experts.robot_config import load_robot_config
    from mu0_sim.env import SawyerSimEnv

    base = load_robot_config(str(resolve("config/robots/sim_sawyer_joint.yaml")))
    nearest = {}
    for hold in (0, 10):
        robot = dataclasses.replace(base, self_filter_hold_frames=hold)
        env = SawyerSimEnv("pick-place", seed=100, embodiment="sawyer_joint", width=160, height=120, max_steps=300)
        try:
            obs = env.reset(100, render=True)
            src = PredictedTraces("checkpoints/mu0_small", robot=robot)
            src.reset(env.instruction)
            for step in range(0, 40, 8):               # trace sets at sim steps 0, 8, ..., 32
                tr = src.traces(env, obs)
                names, points = env.ground_truth()
                puck = points[names.index("obj_0")]
                objects = [i for i, e in enumerate(tr.entities) if e != robot.gripper_entity]
                nearest[hold, step] = min(np.linalg.norm(tr.samples[i, 0] - puck) for i in objects)
                for _ in range(8):
                    obs = env.step(env.expert_action(), render=True)
        finally:
            env.close()
    in_view = nearest[0, 0]
    assert in_view < 0.04 and nearest[10, 0] == pytest.approx(in_view)
    assert nearest[0, 32] > 0.15                      # no trace on the puck at the grasp
    assert nearest[10, 32] < in_view + 0.015
