"""Offline replay of a bag from a user's own camera, written the way `ros2 bag record` of
realsense-ros writes it: sqlite3 and mcap storage, /camera/camera/color/image_raw (rgb8),
/camera/camera/aligned_depth_to_color/image_raw (16UC1 millimetres), .../color/camera_info, the
raw depth stream and its camera_info, /tf_static and realsense's own
realsense2_camera_msgs/msg/Extrinsics — no robot, no extrinsic, no episode.json. It replays
through the bundled μ_0 (checkpoints/mu0_small) into traces in the camera frame, markers and an
overlay; the expert stage is skipped and the summary says why.

The images are real renders of the MuJoCo sim (a recorded episode), re-written with realsense
topic names, frame ids and encodings.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from mu0_app.replay import replay_offline
from mu0_core.camera import project
from mu0_ros import convert

ROOT = Path(__file__).resolve().parents[1]
COLOR = "/camera/camera/color/image_raw"
ALIGNED = "/camera/camera/aligned_depth_to_color/image_raw"
INFO = "/camera/camera/color/camera_info"
EXTRINSICS_MSG = """float32[9] rotation
float32[3] translation
"""
EXTRINSICS = "realsense2_camera_msgs/msg/Extrinsics"
MU0 = ["mu0_node.model=" + str(ROOT / "checkpoints" / "mu0_small"), "mu0_node.max_queries=16",
       "mu0_node.instruction=pick up the puck and place it at the goal"]


def realsense_bag(sim_bag: Path, out: Path, storage: StoragePlugin) -> dict:
    """The sim bag's camera re-written as realsense-ros records it; returns what was written."""
    src_store = convert.mu0_typestore()
    frames = {}
    with Reader(sim_bag) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in (COLOR, ALIGNED, INFO):
                msg = src_store.deserialize_cdr(raw, conn.msgtype)
                frames.setdefault(convert.stamp_to_ns(msg.header.stamp), {})[conn.topic] = msg
    store = convert.mu0_typestore()
    store.register(get_types_from_msg(EXTRINSICS_MSG, EXTRINSICS))
    written = {"stamps": [], "depth_m": {}, "intrinsics": None}
    with Writer(out, version=9, storage_plugin=storage) as w:
        conns = {t: w.add_connection(t, ty, typestore=store) for t, ty in (
            (COLOR, "sensor_msgs/msg/Image"), (ALIGNED, "sensor_msgs/msg/Image"),
            (INFO, "sensor_msgs/msg/CameraInfo"),
            ("/camera/camera/depth/image_rect_raw", "sensor_msgs/msg/Image"),
            ("/camera/camera/depth/camera_info", "sensor_msgs/msg/CameraInfo"),
            ("/camera/camera/extrinsics/depth_to_color", EXTRINSICS), ("/tf_static", "tf2_msgs/msg/TFMessage"))}
        first = min(frames)
        ext = store.types[EXTRINSICS](rotation=np.eye(3, dtype=np.float32).reshape(-1),
                                      translation=np.array([0.015, 0.0, 0.0], np.float32))
        w.write(conns["/camera/camera/extrinsics/depth_to_color"], first, store.serialize_cdr(ext, EXTRINSICS))
        tf = store.types["tf2_msgs/msg/TFMessage"](transforms=[store.types["geometry_msgs/msg/TransformStamped"](
            header=convert.make_header(first, "camera_link", store), child_frame_id="camera_color_optical_frame",
            transform=store.types["geometry_msgs/msg/Transform"](
                translation=store.types["geometry_msgs/msg/Vector3"](x=0.0, y=0.015, z=0.0),
                rotation=store.types["geometry_msgs/msg/Quaternion"](x=-0.5, y=0.5, z=-0.5, w=0.5)))])
        w.write(conns["/tf_static"], first, store.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
        for stamp in sorted(frames):
            f = frames[stamp]
            if set(f) != {COLOR, ALIGNED, INFO}:
                continue
            color = convert.color_from_image(f[COLOR])
            depth = convert.depth_from_image(f[ALIGNED])
            intr = convert.intrinsics_from_camera_info(f[INFO])
            hc = convert.make_header(stamp, "camera_color_optical_frame", store)
            hd = convert.make_header(stamp, "camera_depth_optical_frame", store)
            log = stamp + 3_000_000                       # the recorder's receive time, after the stamp
            msgs = [(COLOR, convert.numpy_to_image(color, "rgb8", hc, store)),
                    (ALIGNED, convert.depth_to_image(depth, "16UC1", hc, store)),  # aligned: colour frame
                    (INFO, convert.camera_info_from_intrinsics(intr, hc, store)),
                    ("/camera/camera/depth/image_rect_raw", convert.depth_to_image(depth, "16UC1", hd, store)),
                    ("/camera/camera/depth/camera_info", convert.camera_info_from_intrinsics(intr, hd, store))]
            for k, (topic, msg) in enumerate(msgs):
                ty = conns[topic].msgtype
                w.write(conns[topic], log + k * 1000, store.serialize_cdr(msg, ty))
            written["stamps"].append(stamp)
            written["depth_m"][stamp] = np.where(np.isfinite(depth), np.round(depth * 1000) / 1000, np.nan)
            written["intrinsics"] = intr
    assert not (out / "episode.json").exists()
    return written


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    from mu0_sim.record import record_episode

    return record_episode("pick-place", 0, tmp_path_factory.mktemp("sim"), width=160, height=120, max_steps=16,
                          post_success_steps=0)


def read_topic(bag, topic):
    store = convert.mu0_typestore()
    store.register(get_types_from_msg(EXTRINSICS_MSG, EXTRINSICS))
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, store.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP], ids=["sqlite3", "mcap"])
def test_realsense_bag_replays_offline_with_the_bundled_mu0_in_the_camera_frame(sim_bag, tmp_path, storage, capsys):
    from mu0_app.launcher import main_replay

    bag = tmp_path / "realsense_bag"
    rs = realsense_bag(sim_bag, bag, storage)
    meta = (bag / "metadata.yaml").read_text()
    assert ("sqlite3" if storage == StoragePlugin.SQLITE3 else "mcap") in meta
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    # the command line a user runs, with the default replay graph (its robot has no extrinsic)
    rc = main_replay([str(bag), "--offline", str(out), "--overlay", str(overlay), *sum((["--set", o] for o in MU0), [])])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "expert stage skipped: no camera extrinsic" in printed.out
    assert "frame camera_color_optical_frame" in printed.out
    n = len(rs["stamps"])
    assert n >= 10
    traces = read_topic(out, "/mu0/traces")
    assert [convert.stamp_to_ns(m.header.stamp) for _, m in traces] == rs["stamps"]    # one per camera frame
    for _, msg in traces:
        ts = convert.trace_msg_to_set(msg)
        assert msg.header.frame_id == "camera_color_optical_frame" == ts.frame_id
        assert ts.model_id == "mu0_small" and len(ts) > 0 and np.isfinite(ts.samples).all()
        # camera frame: each trace starts at its query pixel, at the aligned depth there (16UC1 mm -> m)
        uv, z = project(ts.positions, rs["intrinsics"])
        np.testing.assert_allclose(uv, ts.pixels, atol=0.05)
        d = rs["depth_m"][ts.stamp_ns]
        px = np.clip(np.round(ts.pixels).astype(int), 0, [d.shape[1] - 1, d.shape[0] - 1])
        assert np.nanmedian(np.abs(z - d[px[:, 1], px[:, 0]])) < 0.01
    cam = read_topic(out, "/mu0/traces_camera")
    assert len(cam) == n
    markers = read_topic(out, "/mu0/trace_markers")
    assert len(markers) == n and all(m.header.frame_id == "camera_color_optical_frame"
                                     for _, arr in markers for m in arr.markers if m.action == 0)
    assert overlay.stat().st_size > 1000
    # nothing was commanded, every input topic was copied (realsense's own Extrinsics type too)
    with Reader(out) as reader:
        topics = {c.topic: c for c in reader.connections}
    assert not any("controller" in t for t in topics)
    assert topics["/camera/camera/extrinsics/depth_to_color"].msgtype == EXTRINSICS
    assert len(read_topic(out, "/camera/camera/extrinsics/depth_to_color")) == 1
    assert len(read_topic(out, "/camera/camera/depth/image_rect_raw")) == n
    assert len(read_topic(out, "/tf_static")) == 1


def test_expert_stage_runs_only_with_a_robot_and_an_extrinsic_and_says_why_when_skipped(sim_bag, tmp_path):
    bag = tmp_path / "rs"
    realsense_bag(sim_bag, bag, StoragePlugin.SQLITE3)
    node = {"model": "baseline:constant_velocity", "max_queries": 8, "instruction": "pick up the puck"}
    # no /mu0/instruction in a camera bag and none given: no traces, and the summary says how to give one
    s = replay_offline(bag, tmp_path / "none", {"rgbd_sync": {}, "mu0_node": {"max_queries": 8}}, progress=False)
    assert s.trace_sets == 0 and s.faults["no_instruction"] == s.frames > 0
    assert "--set mu0_node.instruction=" in s.describe()
    # a graph of only sync + μ_0
    s = replay_offline(bag, tmp_path / "a", {"rgbd_sync": {}, "mu0_node": node}, progress=False)
    assert s.expert.startswith("skipped: the graph has no action_expert") and s.trace_sets > 0
    assert s.frame_id == "camera_color_optical_frame" and "expert stage skipped" in s.describe()
    # a YAML graph whose nodes are [rgbd_sync, mu0_node]: its action_expert section is not a robot
    cfg = tmp_path / "graph.yaml"
    cfg.write_text((ROOT / "config" / "mu0_replay.yaml").read_text().replace(
        "nodes: [rgbd_sync, mu0_node, action_expert]", "nodes: [rgbd_sync, mu0_node]"))
    s = replay_offline(bag, tmp_path / "b", cfg, ["mu0_node.model=baseline:constant_velocity",
                                                  "mu0_node.instruction=pick up the puck"], progress=False)
    assert s.expert.startswith("skipped: the graph has no action_expert") and s.commands == 0
    # a robot in the graph but no extrinsic anywhere
    robot = {"robot_config": str(ROOT / "config" / "robots" / "sim_sawyer_joint.yaml"), "dry_run": False}
    s = replay_offline(bag, tmp_path / "c", {"mu0_node": node, "action_expert": robot}, progress=False)
    assert s.expert.startswith("skipped: no camera extrinsic") and s.commands == 0 and s.trace_sets > 0
    # an extrinsic, but the bag has no robot: traces go to base_link, still no commands
    with_ext = {**node, "camera_to_base": [0.0, 0.5, 0.6, 0.0, 0.0, 0.0, 1.0]}
    s = replay_offline(bag, tmp_path / "d", {"mu0_node": with_ext, "action_expert": robot}, progress=False)
    assert s.expert == "skipped: the bag has no robot (no /joint_states messages)" and s.commands == 0
    assert s.frame_id == "base_link"
    # the sim bag (robot + episode.json extrinsic): the expert runs and commands are written
    s = replay_offline(sim_bag, tmp_path / "e", {"mu0_node": node, "action_expert": robot}, progress=False)
    assert s.expert.startswith("ran: ") and s.commands > 0
    assert json.loads((tmp_path / "e" / "episode.json").read_text())["T_base_cam"]


def test_trace_extract_reads_the_realsense_sqlite3_bag(sim_bag, tmp_path):
    from mu0_perception.trace_extract.episode import read_bag

    bag = tmp_path / "rs"
    rs = realsense_bag(sim_bag, bag, StoragePlugin.SQLITE3)
    ep = read_bag(bag)
    assert ep.num_frames == len(rs["stamps"]) and ep.image_size == (160, 120)
    assert ep.T_world_cam is None                    # no pose, no episode.json: TraceExtract estimates it
    assert ep.intrinsics.fx == rs["intrinsics"].fx
    np.testing.assert_allclose(ep.depth[0], rs["depth_m"][rs["stamps"][0]], atol=1e-6, equal_nan=True)
