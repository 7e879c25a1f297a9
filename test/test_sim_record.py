"""A recorded bag is read back by two independent readers (rosbags AnyReader, mcap_ros2) with
all contract topics and the custom mu0_msgs/NamedPoints type; episode.json matches."""
import json

import numpy as np
import pytest

from mu0_sim.record import MSG_TYPES, TOPICS, main, record_episode


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("bags")
    return record_episode("reach", 2, out, embodiment="sawyer_joint", camera="corner",
                          width=160, height=120, max_steps=80, post_success_steps=3)


def test_bag_read_by_rosbags_anyreader(bag):
    from rosbags.highlevel import AnyReader
    from mu0_ros.convert import depth_from_image, named_points_to_dict

    meta = json.loads((bag / "episode.json").read_text())
    want = {TOPICS[k] for k in ("color", "depth", "color_info", "depth_info", "joint_states",
                                "instruction", "camera_pose", "ground_truth", "success",
                                "joint_trajectory")}
    with AnyReader([bag]) as reader:   # no typestore given: types come from the bag itself
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert set(counts) == want
        frames = meta["num_frames"]
        assert counts[TOPICS["color"]] == counts[TOPICS["ground_truth"]] == frames
        assert counts[TOPICS["joint_trajectory"]] == meta["num_steps"] == frames - 1
        conns = [c for c in reader.connections if c.topic in (TOPICS["ground_truth"], TOPICS["depth"])]
        truth, depth = [], []
        for conn, stamp, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            (truth if conn.topic == TOPICS["ground_truth"] else depth).append(msg)
    assert truth[0].header.frame_id == "base_link"
    first, last = named_points_to_dict(truth[0]), named_points_to_dict(truth[-1])
    assert list(first) == meta["point_names"] == ["gripper", "obj_0"]
    assert np.linalg.norm(last["gripper"] - first["gripper"]) > 0.05, "the expert moved the gripper"
    d = depth_from_image(depth[0])
    assert d.shape == (120, 160) and 0.3 < np.nanmedian(d) < 5.0
    assert meta["success"] is True and meta["embodiment"] == "sawyer_joint"
    assert len(meta["T_base_cam"]["quat_xyzw"]) == 4 and meta["step_period"] == 0.0125


def test_ground_truth_traces_carry_the_recorded_goal_also_for_bags_recorded_before_it(bag, tmp_path):
    """episode.json records the goal the scene draws; the oracle traces a ground-truth expert trains
    on carry it (still, entity `goal`), and a bag recorded before the field existed gets the same
    goal from the sim's task and seed."""
    import shutil

    from mu0_policy.training.expert_data import ground_truth_traces, read_demo_bag
    from mu0_sim.env import SawyerSimEnv

    meta = json.loads((bag / "episode.json").read_text())
    env = SawyerSimEnv("reach", seed=2, embodiment="sawyer_joint", render=False)
    np.testing.assert_allclose(meta["goal_base"], env.visible_goal())
    env.close()
    ep = read_demo_bag(bag)
    traces = ground_truth_traces(ep, trace_every=8)
    x, v, names = traces.at(1)
    assert names == ["gripper", "obj_0", "goal"]
    np.testing.assert_allclose(x[2], np.broadcast_to(meta["goal_base"], x[2].shape), atol=1e-6)
    old = tmp_path / bag.name
    shutil.copytree(bag, old)
    del meta["goal_base"]
    (old / "episode.json").write_text(json.dumps(meta))
    np.testing.assert_allclose(read_demo_bag(old).goal, ep.goal)


def test_bag_read_by_mcap_ros2(bag):
    from mcap_ros2.reader import read_ros2_messages

    mcap_file = next(bag.glob("*.mcap"))
    counts, names, joint_names = {}, None, None
    for m in read_ros2_messages(str(mcap_file)):
        counts[m.channel.topic] = counts.get(m.channel.topic, 0) + 1
        if m.channel.topic == TOPICS["ground_truth"] and names is None:
            assert m.schema.name == "mu0_msgs/msg/NamedPoints"
            names = list(m.ros_msg.names)
        if m.channel.topic == TOPICS["joint_trajectory"] and joint_names is None:
            joint_names = list(m.ros_msg.joint_names)
        if m.channel.topic == TOPICS["instruction"]:
            assert "reach" in m.ros_msg.data
    assert names == ["gripper", "obj_0"]
    assert joint_names == [f"right_j{i}" for i in range(7)] + ["gripper"]
    assert len(counts) == 10 and counts[TOPICS["instruction"]] == 1


def test_cli_records_episodes_with_summary(tmp_path, capsys):
    rc = main(["--tasks", "reach", "--seeds", "0-1", "--resolution", "96x72", "--max-steps", "60",
               "--moving-camera", "--out", str(tmp_path)])
    assert rc == 0
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [d.name for d in dirs] == ["reach-v3__sawyer_ee__seed0", "reach-v3__sawyer_ee__seed1"]
    meta = json.loads((dirs[0] / "episode.json").read_text())
    assert meta["camera_moving"] and meta["width"] == 96
    assert "success" in capsys.readouterr().out
    assert main(["--tasks", "nope", "--out", str(tmp_path)]) == 2
    assert MSG_TYPES["ground_truth"] == "mu0_msgs/msg/NamedPoints"


def test_hand_noise_records_the_experts_clean_commands_on_a_perturbed_path(tmp_path, bag):
    """mu0 record --hand-noise (DART-style): the arm executes the expert's action with its hand target
    shifted by a wandering offset; the bag's commands are the expert's own clean actions in the states
    the perturbed arm reached (replayed here step by step with the same seed)."""
    from mu0_policy.training.expert_data import read_demo_bag
    from mu0_sim.env import SawyerSimEnv
    from mu0_sim.record import HandNoise

    noisy = read_demo_bag(record_episode("reach", 2, tmp_path, embodiment="sawyer_joint", camera="corner",
                                         width=160, height=120, max_steps=80, post_success_steps=3, noise_m=0.03))
    clean = read_demo_bag(bag)
    assert json.loads((noisy.path / "episode.json").read_text())["hand_noise_m"] == 0.03
    n = min(noisy.num_steps, clean.num_steps)
    assert np.max(np.abs(noisy.joint_positions[:n] - clean.joint_positions[:n])) > 0.02   # another path
    env = SawyerSimEnv("reach", seed=2, embodiment="sawyer_joint", camera="corner", width=160, height=120,
                       max_steps=200)
    env.reset(2, render=False)
    noise = HandNoise(0.03, 2)
    offsets = []
    for k in range(noisy.num_steps - 1):
        label = env.expert_action()
        np.testing.assert_allclose(noisy.commands[k], label, atol=1e-9)          # the clean label ...
        off = noise()
        executed = env.perturbed_action(label, off)
        offsets.append(np.linalg.norm(off))
        env.step(executed, render=False)
    arm = np.stack([noisy.column(j) for j in env.robot.command_joints[:-1]], axis=1)
    np.testing.assert_allclose(env.arm_positions(), arm[-1], atol=1e-6)       # the same perturbed episode
    assert max(offsets) > 0.01                                                    # ... on a perturbed arm
    env.close()
