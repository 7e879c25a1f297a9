"""Humble compatibility of what the project writes and runs (the README says Humble or Jazzy):

* bags: rosbag2 metadata version 8, whose `offered_qos_profiles` is a YAML *string* (what Humble's
  rosbag2 decodes; version 9, Jazzy's default, writes a YAML list that Humble cannot read), mcap
  storage (rosbag2_storage_mcap is released for both);
* replay: Humble's `ros2 bag play` has no `--exclude-topics`: replay.launch.py passes the bag's
  other topics to `--topics` there (mu0_app.launcher.bag_play_command).
"""
from __future__ import annotations

import yaml

from mu0_app.launcher import bag_play_command

EXCLUDE = ["/joint_trajectory_controller/joint_trajectory", "/mu0/sim/ee_delta"]


def test_recorded_bag_metadata_is_humble_readable(tmp_path):
    from mu0_sim.record import record_episode

    bag = record_episode("reach", 0, tmp_path, embodiment="sawyer_joint", width=64, height=48, max_steps=3,
                         post_success_steps=0)
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8 and info["storage_identifier"] == "mcap"
    for entry in info["topics_with_message_count"]:
        qos = entry["topic_metadata"]["offered_qos_profiles"]
        assert isinstance(qos, str), entry                   # Humble: node.as<std::string>()
        assert isinstance(yaml.safe_load(qos) or [], list)   # ... holding the YAML list of profiles


def _bag(tmp_path, topics):
    (tmp_path / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {
        "version": 8, "topics_with_message_count": [
            {"topic_metadata": {"name": t, "type": "x/msg/Y"}, "message_count": 1} for t in topics]}}))
    return tmp_path


def test_replay_command_branches_on_the_distro(tmp_path):
    bag = _bag(tmp_path, ["/camera/camera/color/image_raw", "/joint_states", *EXCLUDE])
    jazzy = bag_play_command(bag, 1.0, EXCLUDE, distro="jazzy")
    assert jazzy[:4] == ["ros2", "bag", "play", str(bag)] and "--clock" in jazzy
    assert jazzy[jazzy.index("--exclude-topics") + 1:] == EXCLUDE
    humble = bag_play_command(bag, 0.5, EXCLUDE, distro="humble")
    assert "--exclude-topics" not in humble and humble[humble.index("--rate") + 1] == "0.5"
    assert humble[humble.index("--topics") + 1:] == ["/camera/camera/color/image_raw", "/joint_states"]
    assert "--topics" not in bag_play_command(bag, 1.0, [], distro="humble")
