"""Simulated arm: scripted experts succeed in both embodiments; rendered depth agrees with the
ground truth projected through the reported intrinsics and extrinsic. Real MuJoCo physics."""
import mujoco
import numpy as np
import pytest

from mu0_core.camera import deproject, project
from mu0_sim.config import SimConfigError, load_sim_robot
from mu0_sim.env import CameraMotion, SawyerSimEnv


def run_expert(env, seed, max_steps=300):
    env.reset(seed, render=False)
    for _ in range(max_steps):
        env.step(env.expert_action(), render=False)
        if env.success:
            return True, env.step_count
    return False, env.step_count


@pytest.mark.parametrize("task", ["reach", "push", "pick-place", "drawer-open", "button-press-topdown"])
def test_ee_expert_succeeds(task):
    env = SawyerSimEnv(task, seed=0, embodiment="sawyer_ee", render=False)
    results = [run_expert(env, seed) for seed in (0, 1)]
    assert all(ok for ok, _ in results), results


@pytest.mark.parametrize("task", ["reach", "drawer-close", "drawer-open", "button-press"])
def test_joint_expert_succeeds_through_ik(task):
    env = SawyerSimEnv(task, seed=0, embodiment="sawyer_joint", render=False)
    assert env.data.eq_active[0] == 0, "the mocap weld must be off: the joints carry the arm"
    ok, steps = run_expert(env, 1)
    assert ok, f"{task}: no success in {steps} steps"


def _joint_gripper_log(task, seed, settle, steps=300):
    env = SawyerSimEnv(task, seed=seed, embodiment="sawyer_joint", render=False)
    env.robot.ik["close_when_within_m"] = settle
    env.reset(seed, render=False)
    log = []     # (gripper command, |EE target - hand| when it was sent)
    for _ in range(steps):
        a = env.expert_action()
        log.append((float(a[-1]), float(np.linalg.norm(env._ee_target - env.data.body("hand").xpos))))
        env.step(a, render=False)
        if env.ever_succeeded:
            break
    return env.ever_succeeded, log


def test_joint_demonstrator_closes_the_gripper_only_once_the_hand_has_caught_up():
    """Meta-World's push and pick-place policies start closing while descending; a joint arm that
    lags its target then shuts its fingers above the puck. With the bundled setting the close comes
    only when the hand is within close_when_within_m of its target, and (push, seed 0) the puck is
    grasped and pushed to the goal."""
    settle = load_sim_robot("sawyer_joint").ik["close_when_within_m"]
    ok, log = _joint_gripper_log("push", 0, settle)
    closes = [lag for (prev, _), (cmd, lag) in zip(log, log[1:]) if prev <= 0.0 < cmd]
    assert ok and closes and all(lag <= settle for lag in closes), closes
    # without the gate the policy closes while the hand is still behind its target
    _, ungated = _joint_gripper_log("push", 0, 0.0, steps=80)
    assert any(lag > settle for (prev, _), (cmd, lag) in zip(ungated, ungated[1:]) if prev <= 0.0 < cmd)


def test_joint_demonstrator_keeps_a_fist_closed_from_the_first_step():
    """Door / window / drawer-close policies push with a closed gripper from step 0: that first
    command is not held back, so their demos are what they were before the gate existed."""
    settle = load_sim_robot("sawyer_joint").ik["close_when_within_m"]
    gated, ungated = (_joint_gripper_log("door-open", 0, s, steps=80)[1] for s in (settle, 0.0))
    assert gated[0][0] > 0.0 and [c for c, _ in gated] == [c for c, _ in ungated]


@pytest.mark.parametrize("task", ["push", "button-press"])
def test_ground_truth_future_carries_the_goal_the_scene_draws(task):
    """The oracle's traces include the goal marker the camera sees (μ_0's queries find it), still,
    as entity `goal`; button-press draws none, so it has none."""
    env = SawyerSimEnv(task, seed=3, embodiment="sawyer_joint", render=False)
    try:
        names, future = env.oracle_future(8)
        if task == "button-press":
            assert env.visible_goal() is None and "goal" not in names
            return
        goal = env.visible_goal()
        np.testing.assert_allclose(goal, np.asarray(env.mw._target_pos, float))   # T_world_base = I
        assert names[-1] == "goal" and future.shape == (len(names), 9, 3)
        np.testing.assert_allclose(future[-1], np.broadcast_to(goal, (9, 3)))
    finally:
        env.close()


@pytest.mark.parametrize("dq", [[0.0, 0.3, 0.0, -0.3, 0.0, 0.0, 0.0], [0.2, 0.3, 0.0, -0.3, 0.0, 0.0, 0.0]])
def test_ground_truth_future_starts_from_where_another_controller_left_the_arm(dq):
    """The ground-truth-trace baseline: a learned expert drives the arm, then the oracle rolls the
    scripted expert forward from that state. Its first steps head for the reach goal (the scripted
    controller re-anchored on the hand); with the controller's stale state (IK target, seed and
    gripper of the reset pose) they first swung back toward the reset pose (cos 0.14 / 0.22)."""
    env = SawyerSimEnv("reach", seed=0, embodiment="sawyer_joint", render=False)
    goal = np.asarray(env.mw._target_pos, float)
    target = np.concatenate([env.arm_positions() + np.array(dq), [-1.0]])
    for _ in range(60):
        env.step(target, render=False)
    before = env.snapshot()
    names, future = env.oracle_future(32)
    hand = future[names.index("gripper")]
    first = hand[4] - hand[0]
    cos = first @ (goal - hand[0]) / (np.linalg.norm(first) * np.linalg.norm(goal - hand[0]))
    assert cos > 0.8, cos
    assert np.linalg.norm(hand[-1] - goal) < 0.5 * np.linalg.norm(hand[0] - goal)
    # the env is left exactly as it was
    after = env.snapshot()
    assert all(np.array_equal(before[k], after[k]) for k in ("qpos", "qvel", "ctrl"))
    assert np.array_equal(after["attr:_ee_target"], before["attr:_ee_target"])


def test_joint_targets_are_tracked_by_physics():
    env = SawyerSimEnv("reach", seed=0, embodiment="sawyer_joint", render=False)
    q0 = env.arm_positions()
    target = q0 + np.array([0.3, -0.2, 0.0, 0.2, 0.0, 0.0, 0.0])
    first = env.step(np.concatenate([target, [-1.0]]), render=False)
    # rate limits: right_j0 moves at most 1.74 rad/s * 12.5 ms in one step (plus tracking lag)
    assert abs(first.joint_positions[0] - q0[0]) <= 1.74 * 0.0125 + 1e-3
    for _ in range(120):
        obs = env.step(np.concatenate([target, [-1.0]]), render=False)
    np.testing.assert_allclose(obs.joint_positions[:7], target, atol=0.02)
    # out-of-limit targets are clamped to the YAML limits
    for _ in range(5):
        obs = env.step(np.concatenate([target * 0 + 10.0, [1.0]]), render=False)
    assert np.all(obs.joint_positions[:7] <= env.robot.upper + 0.05)


def test_bad_action_is_rejected():
    env = SawyerSimEnv("reach", seed=0, embodiment="sawyer_joint", render=False)
    with pytest.raises(ValueError, match="8 values"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(8, np.nan))
    with pytest.raises(ValueError, match="task"):
        SawyerSimEnv("fly-to-moon", render=False)


def test_yaml_limits_match_the_model():
    cfg = load_sim_robot("sawyer_joint")
    env = SawyerSimEnv("reach", seed=0, embodiment="sawyer_joint", render=False)
    for j in cfg.arm_joints:
        lo, hi = env.model.jnt_range[env.model.joint(j.name).id]
        assert (lo, hi) == pytest.approx((j.lower, j.upper), abs=1e-4), j.name
    assert cfg.command_joints == (*[f"right_j{i}" for i in range(7)], "gripper")


def test_bad_yaml_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: x\nembodiment: sawyer_joint\nbase_frame: base_link\nrates: {camera_hz: 30}\n")
    with pytest.raises(SimConfigError, match=r"bad\.yaml: missing field 'arm_joints'"):
        load_sim_robot(bad)
    bad.write_text(bad.read_text() + "arm_joints: [{name: j, lower: 1, upper: 0, velocity: 1}]\n")
    with pytest.raises(SimConfigError, match=r"bad\.yaml: field 'arm_joints\[0\]\.lower'"):
        load_sim_robot(bad)


def _raycast_depth(env, obs, uv):
    """Optical-axis depth of the first visible geom along the pixel's ray, by MuJoCo's ray caster
    (independent of the renderer): the ray is built from the reported intrinsics + extrinsic."""
    K = obs.intrinsics.K
    ray_cam = np.linalg.solve(K, [uv[0], uv[1], 1.0])
    ray_base = obs.T_base_cam.rotation @ ray_cam
    norm = np.linalg.norm(ray_base)
    geomid = np.zeros(1, np.int32)
    dist = mujoco.mj_ray(env.model, env.data, obs.T_base_cam.translation, ray_base / norm,
                         np.array([1, 1, 1, 0, 0, 0], np.uint8), 1, -1, geomid)
    return dist / norm if dist >= 0 else np.nan


def _gripper_pixel_checks(env, obs):
    T_cam_base = obs.T_base_cam.inverse()
    uv, z = project(T_cam_base.apply(obs.gripper_point[None]), obs.intrinsics)
    u, v = np.round(uv[0]).astype(int)
    h, w = obs.depth.shape
    assert 0 <= u < w and 0 <= v < h, "gripper projects outside the image"
    raycast_err = abs(_raycast_depth(env, obs, (u, v)) - obs.depth[v, u])
    # nearest rendered surface (deprojected into base_link) to the ground-truth gripper point
    r = int(np.ceil(0.06 * obs.intrinsics.fx / z[0]))
    vs, us = np.mgrid[max(v - r, 0):min(v + r + 1, h), max(u - r, 0):min(u + r + 1, w)]
    d = obs.depth[vs, us]
    ok = np.isfinite(d)
    pts_cam = deproject(np.stack([us[ok], vs[ok]], -1).astype(float), d[ok], obs.intrinsics)
    nearest = np.min(np.linalg.norm(obs.T_base_cam.apply(pts_cam) - obs.gripper_point, axis=1))
    return raycast_err, nearest


@pytest.mark.parametrize("camera,size", [("corner", (320, 240)), ("corner3", (640, 480)),
                                         ("corner2", (320, 240))])
def test_depth_agrees_with_projected_ground_truth(camera, size):
    env = SawyerSimEnv("pick-place", seed=3, embodiment="sawyer_ee", camera=camera,
                       width=size[0], height=size[1])
    obs = env.reset(3)
    raycast_errs, nearest_closed = [], []
    for _ in range(45):                       # reach down, grasp the puck, lift
        obs = env.step(env.expert_action())
        err, nearest = _gripper_pixel_checks(env, obs)
        raycast_errs.append(err)
        if env.gripper_closure() > 0.5:       # fingers (and puck) close around the gripper point
            nearest_closed.append(nearest)
    assert obs.depth.dtype == np.float32 and obs.color.shape == (size[1], size[0], 3)
    assert max(raycast_errs) < 0.02, f"{camera}: depth vs ray cast up to {max(raycast_errs):.3f} m"
    # the gripper point is the finger midpoint (empty space): the nearest surface, fingertip
    # or grasped puck, lies 1.5-2.5 cm from it; the ray-cast check above is the 2 cm one
    assert nearest_closed and max(nearest_closed) < 0.03, (
        f"{camera}: rendered surface {max(nearest_closed):.3f} m from the ground-truth gripper point")
    # upside-down cameras are turned upright: world up points up in the image
    T_cam_base = obs.T_base_cam.inverse()
    uv_hi, _ = project(T_cam_base.apply(obs.gripper_point[None] + [0, 0, 0.2]), obs.intrinsics)
    uv_lo, _ = project(T_cam_base.apply(obs.gripper_point[None]), obs.intrinsics)
    assert uv_hi[0, 1] < uv_lo[0, 1], "world up must point up in the image"
    env.close()


def test_moving_camera_pose_and_depth_stay_consistent():
    motion = CameraMotion(amplitude_deg=15.0, period_s=1.0)
    env = SawyerSimEnv("reach", seed=0, camera="corner", camera_motion=motion)
    obs0 = env.reset(0)
    poses = [obs0.T_base_cam.translation]
    for i in range(20):
        obs = env.step(np.array([0, 0, 0, -1.0]))
        poses.append(obs.T_base_cam.translation)
        if i % 5 == 4:
            assert _gripper_pixel_checks(env, obs)[0] < 0.02
    steps = np.linalg.norm(np.diff(poses, axis=0), axis=1)
    assert np.linalg.norm(poses[-1] - poses[0]) > 0.05, "camera should have moved"
    assert steps.max() < 0.05, "camera path should be smooth"
    with pytest.raises(ValueError, match="world-fixed"):
        SawyerSimEnv("reach", camera="gripperPOV", camera_motion=motion)
