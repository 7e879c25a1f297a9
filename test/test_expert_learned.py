"""The learned action expert (`trace_policy`) and the closed-loop evaluator (`mu0 eval-policy`).

Real parts throughout: the MuJoCo sim, the bundled μ_0 through the runtime TracePipeline, the
ExpertRunner + SafetyGuard the action_expert node runs, onnxruntime, and (last test) the live node
graph over DDS. Success rates are asserted on fixed seeds that the expert never saw in training
(demos used seeds 0-19).
"""
import dataclasses
import json

import numpy as np
import pytest

from mu0_app import eval_policy
from mu0_app.eval_policy import evaluate, live_episode, wilson_interval
from mu0_policy.experts import load_robot_config, make_expert
from mu0_policy.experts.base import ExpertObservation
from mu0_policy.experts.robot_config import RobotConfigError
from mu0_policy.experts.trace_policy import (TRACE_FEATURES, Normalization, PolicyRunner, TracePolicyConfig,
                                             build_net, export_expert_onnx, onnx_parity, save_expert_checkpoint,
                                             trace_features)

EE_ROBOT = "config/robots/sim_sawyer_ee.yaml"
JOINT_ROBOT = "config/robots/sim_sawyer_joint.yaml"
EE_CKPT = "checkpoints/expert_sawyer_ee"
JOINT_CKPT = "checkpoints/expert_sawyer_joint"
EE_MU0BASE_CKPT = "checkpoints/expert_sawyer_ee_mu0base"   # the EE expert on mu0_base's traces
JOINT_MU0BASE_CKPT = "checkpoints/expert_sawyer_joint_mu0base"


def test_wilson_interval_matches_the_closed_form():
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-3) and hi == pytest.approx(0.7007, abs=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-3)


def test_trace_features_read_the_trace_from_now_and_keep_the_most_moving():
    ee = np.array([0.0, 0.6, 0.2])
    steps = np.arange(33)[:, None]
    moving = np.array([0.1, 0.6, 0.1]) + steps * np.array([0.01, 0.0, 0.0])
    still = np.repeat(np.array([[0.3, 0.7, 0.0]]), 33, axis=0)
    xyz = np.stack([still, moving])
    f, m = trace_features(xyz, np.ones((2, 33)), ["obj", "gripper"], ee, age_steps=4.0, max_traces=1)
    assert m.tolist() == [True] and f.shape == (1, TRACE_FEATURES)
    np.testing.assert_allclose(f[0, 3:6], moving[4], atol=1e-6)            # "now" is 4 samples in
    np.testing.assert_allclose(f[0, 0:3], moving[4] - ee, atol=1e-6)
    np.testing.assert_allclose(f[0, 6:9], [0.04, 0, 0], atol=1e-6)          # 4 steps ahead of now
    assert f[0, -1] == 1.0                                                   # labelled gripper


def test_trace_features_keep_the_gripper_trace_even_when_it_moves_least():
    ee = np.array([0.0, 0.6, 0.2])
    steps = np.arange(33)[:, None]
    objs = [np.array([0.1 * k, 0.6, 0.0]) + steps * np.array([0.0, 0.01 * (k + 1), 0.0]) for k in range(3)]
    grip = np.repeat(ee[None], 33, axis=0)                                   # the gripper holds still
    xyz = np.stack([*objs, grip])
    f, m = trace_features(xyz, np.ones((4, 33)), ["o0", "o1", "o2", "gripper"], ee, age_steps=0.0, max_traces=2)
    assert m.tolist() == [True, True]
    assert f[0, -1] == 1.0 and f[1, -1] == 0.0                               # gripper, then the most moving
    np.testing.assert_allclose(f[1, 3:6], objs[2][0], atol=1e-6)


def _tiny_checkpoint(tmp_path, use_traces, seed=0):
    import torch

    torch.manual_seed(seed)
    robot = load_robot_config(EE_ROBOT)
    cfg = TracePolicyConfig(robot=robot.robot, interface="ee_delta", joint_names=list(robot.joint_names), action_dim=4,
                            state_dim=11, horizon=16, control_dt=robot.control_dt, use_traces=use_traces, dim=32, layers=1)
    net = build_net(cfg)
    norm = Normalization(np.zeros(11), np.ones(11), np.zeros(TRACE_FEATURES), np.ones(TRACE_FEATURES),
                         np.zeros(4), np.ones(4))
    out = tmp_path / ("with" if use_traces else "without")
    save_expert_checkpoint(out, net, cfg, norm)
    return out, net


def test_no_trace_ablation_is_the_same_network_and_ignores_traces(tmp_path):
    with_dir, net_a = _tiny_checkpoint(tmp_path, True)
    without_dir, net_b = _tiny_checkpoint(tmp_path, False)
    shapes_a = {k: tuple(v.shape) for k, v in net_a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in net_b.state_dict().items()}
    assert shapes_a == shapes_b                      # same architecture, same parameter count
    rng = np.random.default_rng(0)
    state, text = rng.normal(size=(1, 11)), rng.normal(size=(1, 384))
    tr1, tr2 = rng.normal(size=(2, 1, 64, TRACE_FEATURES))
    mask = np.ones((1, 64), bool)
    a, b = PolicyRunner(with_dir), PolicyRunner(without_dir)
    assert not np.allclose(a.predict(state, text, tr1, mask), a.predict(state, text, tr2, mask))
    np.testing.assert_array_equal(b.predict(state, text, tr1, mask), b.predict(state, text, tr2, mask))


@pytest.mark.parametrize("ckpt", [EE_CKPT, JOINT_CKPT, EE_MU0BASE_CKPT, JOINT_MU0BASE_CKPT])
def test_bundled_expert_torch_and_onnxruntime_agree(ckpt):
    assert onnx_parity(ckpt, samples=16) < 1e-4


def test_exported_onnx_of_a_fresh_checkpoint_matches_torch(tmp_path):
    d, _ = _tiny_checkpoint(tmp_path, True)
    export_expert_onnx(d)
    assert onnx_parity(d) < 1e-4


def test_ensemble_expert_is_the_mean_of_its_members_and_refuses_a_mismatched_one(tmp_path):
    """`checkpoint: [A, B]` in a robot YAML: each member normalises with its own statistics and the
    chunk is their mean; a member trained on another μ_0's traces is refused, naming its config.json."""
    a_dir, _ = _tiny_checkpoint(tmp_path / "a", True, seed=0)
    b_dir, _ = _tiny_checkpoint(tmp_path / "b", True, seed=1)
    robot = dataclasses.replace(load_robot_config(EE_ROBOT), expert_name="trace_policy",
                                expert_params={"checkpoint": [str(a_dir), str(b_dir)], "backend": "torch"})
    expert = make_expert(robot)
    rng = np.random.default_rng(0)
    state, text = rng.normal(size=(1, 11)), rng.normal(size=(1, 384))
    traces, mask = rng.normal(size=(1, 64, TRACE_FEATURES)), np.ones((1, 64), bool)
    ya, yb = PolicyRunner(a_dir).predict(state, text, traces, mask), PolicyRunner(b_dir).predict(state, text, traces, mask)
    assert not np.allclose(ya, yb)                                      # two different members ...
    np.testing.assert_allclose(expert.runner.predict(state, text, traces, mask), (ya + yb) / 2, atol=1e-6)
    cfg = json.loads((b_dir / "config.json").read_text())
    cfg["policy"]["trace_model_id"] = "another_mu0"
    (b_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RobotConfigError) as err:
        make_expert(robot)
    assert "policy.trace_model_id" in str(err.value) and str(b_dir / "config.json") in str(err.value)


def test_robot_whose_joints_do_not_match_the_checkpoint_is_refused():
    robot = load_robot_config(JOINT_ROBOT)
    # the EE checkpoint commands ee_delta; the joint robot a trajectory controller
    bad = dataclasses.replace(robot, expert_name="trace_policy", expert_params={"checkpoint": EE_CKPT})
    with pytest.raises(RobotConfigError) as err:
        make_expert(bad)
    assert JOINT_ROBOT in str(err.value) and "expert_sawyer_ee/config.json" in str(err.value)
    # same interface, other joint names: refused naming both the YAML and the checkpoint
    renamed = dataclasses.replace(robot, expert_name="trace_policy", expert_params={"checkpoint": JOINT_CKPT},
                                  joints=dataclasses.replace(robot.joints, names=tuple(f"j{i}" for i in range(7))))
    with pytest.raises(RobotConfigError) as err:
        make_expert(renamed)
    msg = str(err.value)
    assert "joint_names" in msg and "expert_sawyer_joint/config.json" in msg and "right_j0" in msg and "j0" in msg


def test_robot_whose_self_filter_differs_from_the_checkpoints_is_refused(tmp_path):
    """The self filter decides which objects next to the arm get queries: an expert trained on
    traces of one filter is refused by a robot YAML that sets the other, naming both files."""
    d, _ = _tiny_checkpoint(tmp_path, True)
    robot = dataclasses.replace(load_robot_config(EE_ROBOT), expert_name="trace_policy",
                                expert_params={"checkpoint": str(d), "backend": "torch"})
    make_expert(robot)                                    # trained with the default (projection): fits
    depth_robot = dataclasses.replace(robot, self_filter_mode="depth")
    with pytest.raises(RobotConfigError) as err:
        make_expert(depth_robot)
    msg = str(err.value)
    assert "policy.self_filter" in msg and "'projection'" in msg and "'depth'" in msg and EE_ROBOT in msg


def test_robot_whose_gripper_depth_differs_from_the_checkpoints_is_refused():
    """gripper_point.depth decides where the gripper's trace starts: the bundled mu0_small joint
    expert, trained on image-depth gripper queries, is refused by a robot YAML asking for kinematic
    depth, naming both."""
    robot = load_robot_config(JOINT_ROBOT)
    make_expert(robot)
    with pytest.raises(RobotConfigError) as err:
        make_expert(dataclasses.replace(robot, gripper_depth="kinematic"))
    msg = str(err.value)
    assert "policy.gripper_depth" in msg and "'image'" in msg and "'kinematic'" in msg and JOINT_ROBOT in msg


def test_robot_whose_occlusion_hold_differs_from_the_checkpoints_is_refused():
    """self_filter.hold_occluded_frames decides which queries exist while the hand covers an object:
    the bundled joint expert (trained without the hold) is refused by a robot YAML that holds them,
    naming the field, both values and the YAML."""
    robot = load_robot_config(JOINT_ROBOT)
    with pytest.raises(RobotConfigError) as err:
        make_expert(dataclasses.replace(robot, self_filter_hold_frames=10))
    msg = str(err.value)
    assert "policy.hold_occluded" in msg and "held 0 frames" in msg and "hold_occluded_frames 10" in msg
    assert JOINT_ROBOT in msg


def test_bad_expert_checkpoint_fails_naming_file_and_field(tmp_path):
    d, _ = _tiny_checkpoint(tmp_path, True)
    doc = json.loads((d / "config.json").read_text())
    del doc["policy"]["horizon"]
    (d / "config.json").write_text(json.dumps(doc))
    robot = dataclasses.replace(load_robot_config(EE_ROBOT), expert_name="trace_policy", expert_params={"checkpoint": str(d)})
    with pytest.raises(RobotConfigError, match=r"config.json: field 'policy.horizon': is required"):
        make_expert(robot)


def _ee_space_checkpoint(tmp_path, offset, ee_rotation):
    """A joint-robot checkpoint in the "ee" action space whose every output is `offset` (metres) +
    a closed gripper: the normalisation's std is ~0, so the network's output is the mean."""
    import torch

    torch.manual_seed(0)
    robot = load_robot_config(JOINT_ROBOT)
    cfg = TracePolicyConfig(robot=robot.robot, interface="joint", joint_names=list(robot.joint_names), action_dim=4,
                            state_dim=11, horizon=16, control_dt=robot.control_dt, dim=32, layers=1,
                            action_space="ee", ee_rotation=ee_rotation)
    norm = Normalization(np.zeros(11), np.ones(11), np.zeros(TRACE_FEATURES), np.ones(TRACE_FEATURES),
                         np.array([*offset, 1.0]), np.full(4, 1e-9))
    out = tmp_path / "ee_space"
    save_expert_checkpoint(out, build_net(cfg), cfg, norm)
    return out, robot


def test_ee_action_space_expert_commands_joints_that_put_the_hand_on_its_targets(tmp_path):
    """A joint robot's expert trained in the "ee" action space predicts hand offsets; the arm's IK
    turns them into joint targets. Each target's forward kinematics must land on the predicted
    point (within 2 mm) with the hand at the checkpoint's orientation, from a pose where it is not."""
    from mu0_policy.experts.kinematics import rotation_error

    robot = load_robot_config(JOINT_ROBOT)
    kin = robot.build_kinematics()
    q0 = np.array([0.0, -1.2, 0.0, 2.0, 0.0, 0.8, 1.6])
    held = kin.ee_pose(np.array([0.0, -1.1, 0.0, 1.9, 0.0, 0.85, 1.57]))[:3, :3]
    offset = (0.03, -0.02, 0.01)
    ckpt, robot = _ee_space_checkpoint(tmp_path, offset, held.tolist())
    expert = make_expert(dataclasses.replace(robot, expert_name="trace_policy",
                                             expert_params={"checkpoint": str(ckpt), "backend": "torch"}))
    obs = ExpertObservation(stamp_ns=10**9, joint_names=list(robot.joint_names), joint_positions=q0,
                            joint_velocities=None, traces_xyz=np.zeros((0, 33, 3)), validity=np.zeros((0, 33)),
                            entities=[], query_ids=np.zeros(0, int), trace_stamp_ns=10**9, step_period=0.0125)
    chunk = expert.act(obs)
    ee0 = kin.ee_pose(q0)[:3, 3]
    assert chunk.joint_positions.shape == (robot.chunk_horizon, 7) and np.all(chunk.gripper == 1.0)
    assert np.linalg.norm(chunk.joint_positions[0] - q0) > 1e-3                        # it moved the arm
    for q in chunk.joint_positions[1:]:       # every tick after the first has had its iterations to converge
        pose = kin.ee_pose(q)
        np.testing.assert_allclose(pose[:3, 3], ee0 + np.array(offset), atol=2e-3)
        assert np.linalg.norm(rotation_error(pose[:3, :3], held)) < 0.02
    assert np.all(chunk.joint_positions >= kin.chain.lower - 1e-9) and np.all(chunk.joint_positions <= kin.chain.upper + 1e-9)


def test_ee_action_space_is_refused_on_an_ee_delta_checkpoint(tmp_path):
    d, _ = _tiny_checkpoint(tmp_path, True)
    doc = json.loads((d / "config.json").read_text())
    doc["policy"]["action_space"] = "ee"
    (d / "config.json").write_text(json.dumps(doc))
    robot = dataclasses.replace(load_robot_config(EE_ROBOT), expert_name="trace_policy", expert_params={"checkpoint": str(d)})
    with pytest.raises(RobotConfigError, match=r"config.json: field 'policy.action_space': applies to the joint"):
        make_expert(robot)


def test_eval_policy_serves_each_expert_the_mu0_it_was_trained_on():
    """`mu0 eval-policy` without --model picks the μ_0 named by the expert's trace_model_id: the
    *_mu0base robot configs get mu0_base, the others mu0_small; an expert with no μ_0 of its own
    (trace_follower) gets the default μ_0."""
    from mu0_core.resources import share_path

    assert eval_policy.paired_model(EE_ROBOT) == str(share_path("checkpoints/mu0_small"))
    assert eval_policy.paired_model("config/robots/sim_sawyer_ee_mu0base.yaml") == str(share_path("checkpoints/mu0_base"))
    assert eval_policy.paired_model("config/robots/sim_sawyer_joint_mu0base.yaml") == str(share_path("checkpoints/mu0_base"))
    assert eval_policy.paired_model(JOINT_ROBOT, expert=EE_MU0BASE_CKPT) == str(share_path("checkpoints/mu0_base"))
    assert eval_policy.paired_model(EE_ROBOT, expert="trace_follower") == str(share_path(eval_policy.DEFAULT_MODEL))


def test_evaluator_is_deterministic_for_a_seed():
    runs = [evaluate(EE_ROBOT, ["reach"], [105], "ground_truth", expert="trace_follower", max_steps=120,
                     videos=False, progress=False).outcomes[0] for _ in range(2)]
    assert runs[0].steps == runs[1].steps and runs[0].success == runs[1].success
    assert runs[0].final_distances == runs[1].final_distances


def test_bundled_ee_expert_finishes_drawer_close_with_mu0_traces(tmp_path):
    report = evaluate(EE_ROBOT, ["drawer-close"], [100, 101, 102], "checkpoints/mu0_small", out_dir=tmp_path,
                      max_steps=250, progress=False)
    ok = sum(o.success for o in report.outcomes)
    assert ok >= 2, report.markdown()
    doc = json.loads((tmp_path / "success.json").read_text())
    assert doc["per_task"]["drawer-close-v3"]["successes"] == ok
    assert (tmp_path / "drawer-close-v3__seed100.mp4").stat().st_size > 1000
    for o in report.outcomes:     # nothing the guard had to stop, and every plan was sent
        assert o.safety.get("guard.sent_commands", 0) > 0 and o.safety.get("guard.hold_non_finite_command", 0) == 0


def test_bundled_joint_expert_finishes_drawer_close_with_mu0_traces():
    report = evaluate(JOINT_ROBOT, ["drawer-close"], [100, 101, 102], "checkpoints/mu0_small", max_steps=250,
                      videos=False, progress=False)
    assert sum(o.success for o in report.outcomes) >= 2, report.markdown()


def test_mu0_base_ee_pair_finishes_door_open():
    """The EE expert on mu0_base's traces with its robot config: door-open, which no expert finished
    while the guard capped an end-effector step below the sim arm's own diagonal step."""
    report = evaluate("config/robots/sim_sawyer_ee_mu0base.yaml", ["door-open"], [100, 101, 102],
                      "checkpoints/mu0_base", max_steps=250, videos=False, progress=False)
    assert sum(o.success for o in report.outcomes) >= 2, report.markdown()


def test_default_joint_pair_finishes_window_open():
    """What `mu0 sim` runs: mu0_base's traces into the joint expert trained on them, through its
    robot config (guard, gripper interface), on seeds no demo used."""
    report = evaluate("config/robots/sim_sawyer_joint_mu0base.yaml", ["window-open"], [100, 101, 102],
                      "checkpoints/mu0_base", max_steps=250, videos=False, progress=False)
    assert sum(o.success for o in report.outcomes) >= 2, report.markdown()


def test_bundled_expert_finishes_through_the_live_graph_over_dds(tmp_path):
    o = live_episode(EE_ROBOT, "drawer-close", 100, "checkpoints/mu0_small", max_steps=800,
                     wall_timeout_s=200, log_dir=tmp_path, real_time_factor=0.5)
    assert o.success, f"not finished after {o.steps} sim steps; logs in {tmp_path}"
    assert eval_policy.embodiment_of(load_robot_config(EE_ROBOT)) == "sawyer_ee"


def _runner_counts_for_traces_of(model_id):
    from trace_fixtures import gripper_trace
    from mu0_policy.experts.runner import ExpertRunner

    robot = load_robot_config(EE_ROBOT)
    runner = ExpertRunner(robot)
    q = (np.asarray(robot.joints.lower) + np.asarray(robot.joints.upper)) / 2
    ee = runner.kinematics.ee_pose(q)[:3, 3]
    samples = (ee + np.linspace(0, 1, 33)[:, None] * np.array([0.05, 0.0, -0.02]))[None]
    stamp = 10_000_000_000
    traces = gripper_trace(samples, stamp, robot.base_frame, "open the drawer", model_id, step_period=0.0125)
    runner.update_joint_state(stamp + 10_000_000, robot.joint_names, q)
    runner.update_traces(traces)
    runner.tick(stamp + 20_000_000)
    return runner


def test_traces_of_another_mu0_than_the_expert_was_trained_on_are_counted_and_named():
    """An expert is trained on one μ_0's traces (policy.trace_model_id); swapping μ_0 under it changes
    its input distribution, so the runner counts it and says which models (the node warns)."""
    same = _runner_counts_for_traces_of("mu0_small")
    assert same.counts["plans"] == 1 and same.counts["trace_model_mismatch"] == 0
    other = _runner_counts_for_traces_of("mu0_base")
    assert other.counts["plans"] == 1 and other.counts["trace_model_mismatch"] == 1
    assert "'mu0_base'" in other.last_trace_model_mismatch and "'mu0_small'" in other.last_trace_model_mismatch


def test_task_balanced_sampling_draws_every_task_equally_often():
    """train-expert --balance tasks: a task with 4x the demo steps of another is drawn as often."""
    from mu0_policy.training.train_expert import task_balanced_probabilities
    tasks = np.array(["push-v3"] * 400 + ["door-open-v3"] * 100 + ["reach-v3"] * 50)
    p = task_balanced_probabilities(tasks)
    assert p.sum() == pytest.approx(1.0)
    draws = tasks[np.random.default_rng(0).choice(len(tasks), 30000, p=p)]
    share = {t: float(np.mean(draws == t)) for t in np.unique(tasks)}
    assert all(abs(v - 1 / 3) < 0.02 for v in share.values()), share
    uniform = tasks[np.random.default_rng(0).choice(len(tasks), 30000)]
    assert np.mean(uniform == "push-v3") > 0.65          # what plain sampling gives the big task


def test_expert_with_joint_velocities_reads_them_and_refuses_a_state_without_them(tmp_path):
    """policy.state_velocity: the state carries the measured joint velocities (train-expert
    --state-velocity), so the same positions moving differently get different chunks; a joint state
    without velocities is an error naming the checkpoint (the runner holds), never zeros."""
    import torch

    torch.manual_seed(0)
    robot = load_robot_config(JOINT_ROBOT)
    J = len(robot.joint_names)
    S = 3 + 1 + 2 * J
    cfg = TracePolicyConfig(robot=robot.robot, interface="joint", joint_names=list(robot.joint_names),
                            action_dim=J + 1, state_dim=S, horizon=16, control_dt=robot.control_dt,
                            dim=32, layers=1, state_velocity=True)
    out = tmp_path / "vel"
    save_expert_checkpoint(out, build_net(cfg), cfg, Normalization(np.zeros(S), np.ones(S), np.zeros(TRACE_FEATURES),
                                                                    np.ones(TRACE_FEATURES), np.zeros(J + 1), np.ones(J + 1)))
    expert = make_expert(dataclasses.replace(robot, expert_name="trace_policy",
                                             expert_params={"checkpoint": str(out), "backend": "torch"}))
    q = np.array([0.0, -1.2, 0.0, 2.0, 0.0, 0.8, 1.6])

    def obs(qd):
        return ExpertObservation(stamp_ns=10**9, joint_names=list(robot.joint_names), joint_positions=q,
                                 joint_velocities=qd, traces_xyz=np.zeros((0, 33, 3)), validity=np.zeros((0, 33)),
                                 entities=[], query_ids=np.zeros(0, int), trace_stamp_ns=10**9, step_period=0.0125)
    still, moving = expert.act(obs(np.zeros(J))), expert.act(obs(np.full(J, 0.8)))
    state, *_ = expert.inputs(obs(np.full(J, 0.8)))
    assert state.shape == (S,) and np.allclose(state[-J:], 0.8)
    assert not np.allclose(still.joint_positions, moving.joint_positions)
    with pytest.raises(ValueError, match="joint velocities"):
        expert.act(obs(None))
