"""Robot configs, the expert registry and the trace_follower (through real kinematics; the closed
loop uses the real MuJoCo Sawyer of mu0_sim where that module is importable)."""
import glob

import numpy as np
import pytest
import yaml

from mu0_policy.experts import (ActionChunk, ActionExpert, ExpertObservation, RobotConfigError,
                                available_experts, load_robot_config, make_expert, register_expert)
from robot_configs import follower_config

RESET_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])
SEC = 1_000_000_000


@pytest.mark.parametrize("path", sorted(glob.glob("config/robots/*.yaml")))
def test_every_shipped_robot_config_loads_and_builds_its_expert(path):
    robot = load_robot_config(path)
    # real-robot configs never start live; simulated arms command by default (the sim is the robot)
    assert robot.safety.dry_run is (not robot.robot.startswith("sim_"))
    expert = make_expert(robot)
    assert isinstance(expert, ActionExpert) and expert.kinematics.chain.dof >= 6
    assert robot.chunk_execute <= robot.chunk_horizon


def write_cfg(tmp_path, mutate):
    data = yaml.safe_load(open(follower_config("sim_sawyer_joint")))
    mutate(data)
    p = tmp_path / "robot.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["command"].update(interface="velocity"), "command.interface"),
    (lambda d: d["joints"].update(position_lower=[0.0] * 3), "joints.position_lower"),
    (lambda d: d["joints"].update(max_velocity=-1.0), "joints.max_velocity"),
    (lambda d: d["joints"].update(names=["a", "a"]), "joints.names"),
    (lambda d: d["control"].update(chunk_execute=50), "control.chunk_execute"),
    (lambda d: d["control"].pop("rate_hz"), "control.rate_hz"),
    (lambda d: d["safety"].update(dry_run="yes"), "safety.dry_run"),
    (lambda d: d["kinematics"].update(path="missing.xml"), "kinematics.path"),
    (lambda d: d["kinematics"].update(source="none"), "kinematics.source"),
    (lambda d: d.update(camera_to_base={"translation": [0, 0, 0], "quat_xyzw": [0, 0, 0, 0]}), "camera_to_base.quat_xyzw"),
    (lambda d: d["command"].update(topic="relative/topic"), "command.topic"),
])
def test_bad_config_names_file_and_field(tmp_path, mutate, field):
    path = write_cfg(tmp_path, mutate)
    with pytest.raises(RobotConfigError) as err:
        load_robot_config(path)
    assert path in str(err.value) and f"'{field}'" in str(err.value)


def test_unknown_expert_and_bad_params_name_the_field(tmp_path):
    robot = load_robot_config(write_cfg(tmp_path, lambda d: d["expert"].update(name="nope")))
    with pytest.raises(RobotConfigError, match="'expert.name'.*trace_follower"):
        make_expert(robot)
    robot = load_robot_config(write_cfg(tmp_path, lambda d: d["expert"].update(params={"mode": "sideways"})))
    with pytest.raises(RobotConfigError, match="'expert.params'.*mode"):
        make_expert(robot)


def test_registry_registers_by_name_and_refuses_a_taken_name():
    assert "trace_follower" in available_experts()

    @register_expert("test_hold_still")
    class HoldStill(ActionExpert):
        def act(self, obs):
            return ActionChunk(np.repeat(obs.joint_positions[None], 3, axis=0), 0.05)

    assert "test_hold_still" in available_experts() and HoldStill.name == "test_hold_still"
    with pytest.raises(ValueError, match="already taken"):
        register_expert("test_hold_still")(type("Other", (HoldStill,), {}))
    with pytest.raises(TypeError):
        register_expert("not_an_expert")(object)


def test_action_chunk_validates():
    with pytest.raises(ValueError, match="exactly one"):
        ActionChunk(None, 0.1)
    with pytest.raises(ValueError, match="ee_deltas"):
        ActionChunk(None, 0.1, ee_deltas=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="dt"):
        ActionChunk(np.zeros((2, 7)), 0.0)


# ------------------------------------------------------------------------------ trace follower
def observation(robot, q, traces, entities, trace_age_s=0.0, step_period=0.05, validity=None):
    traces = np.asarray(traces, float)
    return ExpertObservation(
        stamp_ns=10 * SEC, joint_names=robot.joint_names, joint_positions=np.asarray(q, float),
        joint_velocities=None, traces_xyz=traces,
        validity=np.ones(traces.shape[:2]) if validity is None else validity,
        entities=list(entities), query_ids=np.arange(len(traces)),
        trace_stamp_ns=10 * SEC - int(trace_age_s * SEC), step_period=step_period)


@pytest.fixture(scope="module")
def joint_robot():
    return load_robot_config(follower_config("sim_sawyer_joint", hold_orientation=True))


def line(start, direction, n=33):
    return np.asarray(start) + np.linspace(0, 1, n)[:, None] * np.asarray(direction)


def test_follower_moves_the_ee_along_the_gripper_trace(joint_robot):
    expert = make_expert(joint_robot)
    q = RESET_Q.copy()
    ee = expert.kinematics.ee_pose(q)[:3, 3]
    d = np.array([0.08, -0.04, -0.06])
    # a decoy object trace starts nearer the hand than the labelled one: the label wins
    traces = [line(ee + 0.01, [0.0, 0.3, 0.0]), line(ee + [0.0, 0.0, 0.05], d)]
    chunk = expert.act(observation(joint_robot, q, traces, ["object", "gripper"]))
    assert chunk.kind == "joint_positions" and chunk.joint_positions.shape == (joint_robot.chunk_horizon, 7)
    assert chunk.info["trace_index"] == 1
    ee_path = np.array([expert.kinematics.ee_pose(r)[:3, 3] for r in chunk.joint_positions])
    # relative mode: the hand moves along the trace's displacement (16 ticks of 0.05 s on a 1.6 s trace)
    expected = ee + d * (np.arange(1, joint_robot.chunk_horizon + 1) * joint_robot.control_dt / (32 * 0.05))[:, None]
    assert np.abs(ee_path - expected).max() < 1e-3
    assert np.all(np.diff(np.linalg.norm(ee_path - ee, axis=1)) > 0)       # monotone progress
    assert chunk.gripper is None      # the follower leaves the gripper (its own interface) alone


def test_follower_picks_nearest_anchor_without_labels_and_holds_when_far(joint_robot):
    expert = make_expert(joint_robot)
    q = RESET_Q.copy()
    ee = expert.kinematics.ee_pose(q)[:3, 3]
    traces = [line(ee + [0.3, 0, 0], [0, 0, 0.1]), line(ee + [0.02, 0, 0], [0, 0, -0.1])]
    chunk = expert.act(observation(joint_robot, q, traces, ["cluster_0", "cluster_1"]))
    assert chunk.info["trace_index"] == 1
    assert expert.kinematics.ee_pose(chunk.joint_positions[-1])[2, 3] < ee[2] - 0.01
    far = expert.act(observation(joint_robot, q, [traces[0]], ["cluster_0"]))
    assert "hold" in far.info and np.allclose(far.joint_positions, q)


def test_follower_follows_from_now_on_an_old_trace_and_stops_at_invalid_samples(joint_robot):
    expert = make_expert(joint_robot)
    q = RESET_Q.copy()
    ee = expert.kinematics.ee_pose(q)[:3, 3]
    # a trace that first goes +x then comes back; 0.8 s old, so "now" is at its turning point
    out_and_back = np.vstack([line(ee, [0.1, 0, 0], 17), line(ee + [0.1, 0, 0], [-0.1, 0, 0], 17)[1:]])
    chunk = expert.act(observation(joint_robot, q, [out_and_back], ["gripper"], trace_age_s=0.8))
    x = np.array([expert.kinematics.ee_pose(r)[0, 3] for r in chunk.joint_positions])
    assert x[-1] < ee[0] - 0.01                                               # moving back, not out
    validity = np.ones((1, 33))
    validity[0, 3:] = 0.0                                                     # only 3 valid samples
    chunk = expert.act(observation(joint_robot, q, [line(ee, [0.3, 0, 0])], ["gripper"], validity=validity))
    reach = expert.kinematics.ee_pose(chunk.joint_positions[-1])[0, 3] - ee[0]
    assert reach == pytest.approx(0.3 * 2 / 32, abs=1e-3)                     # ends at sample 2


def test_follower_speed_limit(joint_robot):
    expert = make_expert(joint_robot)
    q = RESET_Q.copy()
    ee = expert.kinematics.ee_pose(q)[:3, 3]
    chunk = expert.act(observation(joint_robot, q, [line(ee, [0, 0.5, 0])], ["gripper"], step_period=0.01))
    ee_path = np.array([expert.kinematics.ee_pose(r)[:3, 3] for r in chunk.joint_positions])
    steps = np.linalg.norm(np.diff(np.vstack([ee, ee_path]), axis=0), axis=1)
    assert steps.max() <= expert.max_ee_speed * joint_robot.control_dt + 1e-3


def test_follower_ee_delta_interface_produces_deltas():
    robot = load_robot_config(follower_config("sim_sawyer_ee", max_ee_speed=0.4))
    expert = make_expert(robot)
    ee = expert.kinematics.ee_pose(RESET_Q)[:3, 3]
    d = np.array([0.0, 0.1, -0.05])
    chunk = expert.act(observation(robot, RESET_Q, [line(ee, d)], ["gripper"], step_period=0.0125))
    assert chunk.kind == "ee_deltas" and chunk.ee_deltas.shape == (robot.chunk_horizon, 4)
    assert np.allclose(chunk.ee_deltas.sum(axis=0)[:3], d * robot.chunk_horizon / 32, atol=1e-9)
    assert np.all(chunk.ee_deltas[:, 3] == robot.ee_delta.gripper)
    hold = expert.act(observation(robot, RESET_Q, np.zeros((0, 33, 3)), []))
    assert "hold" in hold.info and np.allclose(hold.ee_deltas[:, :3], 0.0)


def test_runner_commands_carry_the_camera_stamp_of_their_traces(joint_robot):
    """End-to-end latency is measured from this stamp: a plan carries it, a hold carries none."""
    from mu0_policy.experts.runner import ExpertRunner
    from trace_fixtures import gripper_trace

    robot = load_robot_config(follower_config("sim_sawyer_forward", hold_orientation=True))
    runner = ExpertRunner(robot, guard=None)
    runner.guard.dry_run = False
    q = RESET_Q.copy()
    ee = runner.kinematics.ee_pose(q)[:3, 3]
    samples = line(ee, [0.05, 0.0, -0.03])[None]
    camera_stamp = 10 * SEC
    traces = gripper_trace(samples, camera_stamp, robot.base_frame)
    runner.update_joint_state(camera_stamp + 20_000_000, robot.joint_names, q)
    runner.update_traces(traces)
    cmd = runner.tick(camera_stamp + 30_000_000)
    assert cmd is not None and not cmd.hold and cmd.trace_stamp_ns == camera_stamp
    following = runner.tick(camera_stamp + 30_000_000 + int(robot.control_dt * SEC))
    assert following is not None and following.trace_stamp_ns == camera_stamp   # same plan, same source frame
    stale = runner.tick(camera_stamp + 60 * SEC)                                 # traces far too old -> hold
    assert stale is not None and stale.hold and stale.trace_stamp_ns is None
