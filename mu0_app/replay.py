"""Offline replay (bag in -> bag out, no DDS) and the overlay renderer (the demo is mu0_app.demo).

`replay_offline` runs the same core objects the nodes run — `RGBDAssembler` (rgbd_sync),
`TracePipeline` (mu0_node) and, when the graph has an action expert, its expert + safety guard —
in-process, message by message in log-time order. The output bag holds every input message
unchanged plus /mu0/traces (base frame when an extrinsic is known, else the camera frame),
/mu0/traces_camera, /mu0/trace_markers and the expert's commands, each written at the log time of
the message that completed its camera frame. Same bag + same config -> byte-identical added
messages.

Any rosbag2 is an input: sqlite3 or mcap storage, our sim bags or a bag of a user's own camera
(`ros2 bag record` of realsense-ros: rgb8 colour, aligned 16UC1 depth, camera_info, plus whatever
else was recorded — topics of message types we do not know are copied with the bag's own message
definition). The expert stage runs only when the graph lists an `action_expert`, a camera
extrinsic is known (mu0_node.camera_to_base, the bag's episode.json, or the robot config's
camera_to_base) and the bag has the robot (its joint-state topic); otherwise it is skipped and the
summary says why (`ReplaySummary.expert`). A camera-only bag thus gives traces in the camera
frame, markers and the overlay.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mu0_app.graph_config import load_graph_config
from mu0_core.camera import project
from mu0_perception.sync import RGBDAssembler
from mu0_policy.runtime import PipelineConfig, TracePipeline, extrinsic_from_list
from mu0_policy.predictors import make_predictor
from mu0_policy.trace_postprocess import time_colors, valid_length
from mu0_ros import convert

RGBD_PARAMS = {"color_topic": "/camera/camera/color/image_raw",
               "depth_topic": "/camera/camera/aligned_depth_to_color/image_raw",
               "camera_info_topic": "/camera/camera/color/camera_info",
               "slop": 0.02, "queue_size": 10, "min_valid_depth_fraction": 0.05}
PIPELINE_KEYS = ("queries", "max_queries", "grid_rows", "grid_cols", "num_entities", "track_queries",
                 "num_samples", "seed", "base_frame_id", "objects_refresh_frames")


def pipeline_from_params(params: dict) -> TracePipeline:
    """The mu0_node parameters (as in the graph YAML) -> a ready TracePipeline."""
    config = PipelineConfig(**{k: params[k] for k in PIPELINE_KEYS if k in params},
                            camera_to_base=extrinsic_from_list(params.get("camera_to_base"), "mu0_node.camera_to_base"))
    predictor = make_predictor(params.get("model", "baseline:constant_velocity"), params.get("backend", "torch"),
                               params.get("device", "cpu"), params.get("dtype", "float32"))
    return TracePipeline(predictor, config, instruction=params.get("instruction") or "")


@dataclass
class ReplaySummary:
    bag_in: str
    bag_out: str
    frames: int = 0
    trace_sets: int = 0
    traces: int = 0
    commands: int = 0
    faults: dict = field(default_factory=dict)
    overlay: str | None = None
    frame_id: str = ""            # frame of /mu0/traces
    expert: str = ""              # "ran: ..." or "skipped: <why>"
    not_copied: list = field(default_factory=list)   # input topics of unknown type without a definition

    def describe(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in self.faults.items() if v) or "none"
        return (f"replayed {self.bag_in} -> {self.bag_out}: {self.frames} frames, {self.trace_sets} trace sets "
                f"({self.traces} traces, frame {self.frame_id or '-'}), {self.commands} commands; "
                f"expert stage {self.expert}; dropped: {faults}"
                + (f"; not copied (unknown type, no definition in the bag): {', '.join(self.not_copied)}"
                   if self.not_copied else "")
                + (f"; overlay {self.overlay}" if self.overlay else "")
                + ("; no instruction, so no traces: the bag has no /mu0/instruction — give one with "
                   "--set mu0_node.instruction='...'" if self.faults.get("no_instruction") else ""))


def _graph_params(config, overrides=()) -> dict:
    """node -> parameters from a graph YAML path (or an already-loaded dict of node params).

    Only the nodes the graph lists (`mu0_graph.nodes`) are part of it: an `action_expert` section
    of a graph whose nodes are [rgbd_sync, mu0_node] is not a robot."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return config
    graph = load_graph_config(config, overrides)
    listed = set(graph.nodes) | {"mu0_graph"}
    return {node: graph.node_params(node) for node in graph.params if node in listed}


def _expert_plan(params: dict, node_params: dict, topics: set):
    """(ExpertStage or None, 'ran: ...' / 'skipped: <why>') for this graph and bag."""
    expert_params = params.get("action_expert")
    if not expert_params:
        return None, "skipped: the graph has no action_expert (no robot)"
    stage = ExpertStage(expert_params)
    robot = stage.robot
    if not node_params.get("camera_to_base") and robot.camera_to_base is None:
        return None, ("skipped: no camera extrinsic (T_base_cam) — set mu0_node.camera_to_base or the robot "
                      "config's camera_to_base (sim bags carry it in episode.json)")
    if robot.joint_state_topic not in topics:
        return None, f"skipped: the bag has no robot (no {robot.joint_state_topic} messages)"
    return stage, f"ran: {robot.robot} -> {robot.command_topic}"


def replay_offline(bag_in, bag_out, config=None, overrides=(), overlay_path=None, progress: bool = True,
                   only_stamps=None) -> ReplaySummary:
    """Run the graph's core in-process over `bag_in`, write `bag_out` (see module docstring).

    config: a graph YAML path or {node: params}. With an `action_expert` entry (robot_config), its
    commands are added on the robot's command topic; command topics already in the input bag
    (`mu0_graph.exclude_topics`, e.g. the recorder's commands) are kept under /recorded<topic>.
    only_stamps: process only frames with these colour stamps (the others count as skipped), e.g.
    to reproduce exactly the frames a live run processed.
    """
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    bag_in, bag_out = Path(bag_in), Path(bag_out)
    if not (bag_in / "metadata.yaml").is_file():
        raise ValueError(f"bag_in: {bag_in} is not a rosbag2 directory (no metadata.yaml)")
    if bag_out.exists():
        shutil.rmtree(bag_out)
    bag_out.parent.mkdir(parents=True, exist_ok=True)
    params = _graph_params(config, overrides)
    sync_params = {**RGBD_PARAMS, **params.get("rgbd_sync", {})}
    node_params = dict(params.get("mu0_node", {}))
    episode = _episode_json(bag_in)
    if not node_params.get("camera_to_base") and episode is not None and "T_base_cam" in episode:
        tf = episode["T_base_cam"]
        node_params["camera_to_base"] = list(tf["translation"]) + list(tf["quat_xyzw"])
    pipeline = pipeline_from_params(node_params)
    period = float(node_params.get("expected_period", 0.1))
    assembler = RGBDAssembler(float(sync_params["slop"]), int(sync_params["queue_size"]),
                              float(sync_params["min_valid_depth_fraction"]))
    streams = {sync_params["color_topic"]: "color", sync_params["depth_topic"]: "depth",
               sync_params["camera_info_topic"]: "info"}
    renamed = {t: f"/recorded{t}" for t in params.get("mu0_graph", {}).get("exclude_topics", [])}
    store = convert.mu0_typestore()
    summary = ReplaySummary(str(bag_in), str(bag_out))
    summary.frame_id = pipeline.config.base_frame_id if pipeline.config.camera_to_base is not None else ""
    overlay_frames = []
    entities: list[str] = []
    with Reader(bag_in) as reader, Writer(bag_out, version=8, storage_plugin=StoragePlugin.MCAP) as writer:  # v8: Humble reads it too (v9 writes QoS as a YAML list)
        topics_in = {c.topic for c in reader.connections if c.msgcount > 0}
        expert, summary.expert = _expert_plan(params, node_params, topics_in)
        joint_topic = expert.robot.joint_state_topic if expert is not None else None
        out_conns = {}

        def connection(topic, msgtype):
            if topic not in out_conns:
                out_conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            return out_conns[topic]

        def write(topic, msgtype, log_time, msg):
            writer.write(connection(topic, msgtype), log_time, store.serialize_cdr(msg, msgtype))

        def copy_connection(c):
            """The input connection in the output bag: our typestore's definition when it knows
            the type, else the bag's own (e.g. realsense2_camera_msgs/msg/Extrinsics)."""
            topic = renamed.get(c.topic, c.topic)
            if topic in out_conns:
                return
            if c.msgtype in store.fielddefs:
                connection(topic, c.msgtype)
                return
            msgdef = getattr(c.msgdef, "data", c.msgdef) if c.msgdef is not None else None
            if msgdef and c.digest:
                out_conns[topic] = writer.add_connection(topic, c.msgtype, msgdef=msgdef, rihs01=c.digest)
            else:
                summary.not_copied.append(c.topic)

        for c in reader.connections:
            copy_connection(c)
        total = sum(c.msgcount for c in reader.connections)
        for conn, log_time, raw in tqdm(reader.messages(), total=total, desc="offline replay", unit="msg",
                                        disable=not progress):
            out_conn = out_conns.get(renamed.get(conn.topic, conn.topic))
            if out_conn is not None:
                writer.write(out_conn, log_time, raw)
            if expert is not None:
                for tick_ns, msg in expert.advance(log_time, store):
                    write(expert.topic, expert.msgtype, tick_ns, msg)
                    summary.commands += 1
            if conn.topic == "/mu0/instruction":
                pipeline.set_instruction(store.deserialize_cdr(raw, conn.msgtype).data)
                continue
            if conn.topic == joint_topic:
                if expert is not None:
                    expert.on_joint_state(store.deserialize_cdr(raw, conn.msgtype))
                continue
            stream = streams.get(conn.topic)
            if stream is None:
                continue
            for frame in assembler.add(stream, store.deserialize_cdr(raw, conn.msgtype)):
                summary.frames += 1
                if only_stamps is not None and frame.stamp_ns not in only_stamps:
                    summary.faults["skipped"] = summary.faults.get("skipped", 0) + 1
                    continue
                out = pipeline.process(frame)
                if out is None:
                    if not pipeline.instruction:
                        summary.faults["no_instruction"] = summary.faults.get("no_instruction", 0) + 1
                    continue
                summary.trace_sets += 1
                summary.traces += len(out.published)
                summary.frame_id = out.published.frame_id
                write("/mu0/traces", "mu0_msgs/msg/TraceArray", log_time, convert.trace_set_to_msg(out.published, store))
                write("/mu0/traces_camera", "mu0_msgs/msg/TraceArray", log_time,
                      convert.trace_set_to_msg(out.camera_traces, store))
                current = {s.namespace for s in out.markers}
                write("/mu0/trace_markers", "visualization_msgs/msg/MarkerArray", log_time,
                      convert.marker_array_msg(out.markers, 2.0 * period, set(entities) - current, frame.stamp_ns,
                                       out.published.frame_id, typestore=store))
                entities = sorted(current)
                if expert is not None:
                    expert.on_traces(out.published)
                if overlay_path is not None:
                    overlay_frames.append(draw_traces(frame.color, out.camera_traces, frame.intrinsics))
    summary.faults = {**summary.faults, **assembler.faults, "unmatched": sum(assembler.matcher.stats.dropped_unmatched.values())}
    if episode is not None:
        (bag_out / "episode.json").write_text(json.dumps(episode, indent=2))
    if overlay_path is not None and overlay_frames:
        summary.overlay = str(write_overlay(overlay_frames, overlay_path))
    return summary


def _episode_json(bag: Path) -> dict | None:
    path = bag / "episode.json"
    return json.loads(path.read_text()) if path.is_file() else None


class ExpertStage:
    """The action_expert node's work, in bag time: the same ExpertRunner, ticked at the robot's
    control rate between bag messages (the node's timer), fed the traces and joint states the
    node would have received. Only commands the guard marks `send` (not dry-run) are written,
    exactly as the node publishes only those."""

    def __init__(self, expert_params: dict):
        from mu0_policy.experts import load_robot_config
        from mu0_policy.experts.runner import ExpertRunner

        path = expert_params.get("robot_config")
        if not path:
            raise ValueError("action_expert.robot_config: required (path of config/robots/<robot>.yaml)")
        self.robot = load_robot_config(path)
        self.runner = ExpertRunner(self.robot)
        if "dry_run" in expert_params:
            self.runner.guard.dry_run = bool(expert_params["dry_run"])
        self.topic = self.robot.command_topic
        self.msgtype = ("trajectory_msgs/msg/JointTrajectory" if self.robot.command_interface == "joint_trajectory"
                        else "std_msgs/msg/Float64MultiArray")
        self.period_ns = int(round(self.robot.control_dt * 1e9))
        self.next_tick_ns = None
        self.dry_run_ticks = 0

    def on_traces(self, traces) -> None:
        self.runner.update_traces(traces)

    def on_joint_state(self, msg) -> None:
        names = [str(n) for n in msg.name]
        vel = np.asarray(msg.velocity, float) if len(msg.velocity) else None
        self.runner.update_joint_state(convert.stamp_to_ns(msg.header.stamp), names,
                                       np.asarray(msg.position, float), vel)

    def advance(self, now_ns: int, typestore) -> list:
        """Run every control tick due up to `now_ns`; [(tick_ns, message)] to write."""
        if self.next_tick_ns is None:
            self.next_tick_ns = now_ns
        out = []
        while self.next_tick_ns <= now_ns:
            cmd = self.runner.tick(self.next_tick_ns)
            if cmd is not None and cmd.send and cmd.values is not None:   # the bag records arm commands
                out.append((self.next_tick_ns, command_msg(cmd, typestore)))
            elif cmd is not None:
                self.dry_run_ticks += 1
            self.next_tick_ns += self.period_ns
        return out


def command_msg(cmd, typestore=None):
    """A TickCommand -> JointTrajectory (joint_trajectory) or Float64MultiArray (first row)."""
    if cmd.interface == "joint_trajectory":
        values = np.asarray(cmd.values, float)
        return convert.joint_trajectory_msg(cmd.names, values, cmd.dt * np.arange(1, len(values) + 1),
                                            typestore=typestore)
    return convert.float64_array_msg(np.asarray(cmd.values, np.float64)[0], typestore)


def make_expert_stage(expert_params: dict):
    return ExpertStage(expert_params)


# ---------------------------------------------------------------------------------------------- overlay
def draw_traces(color: np.ndarray, camera_traces, intrinsics, thickness: int = 2) -> np.ndarray:
    """Colour image (RGB) with each camera-frame trace projected and drawn, colour by time."""
    import cv2

    canvas = np.ascontiguousarray(color.copy())
    if len(camera_traces) == 0:
        return canvas
    colors = (time_colors(camera_traces.horizon_steps + 1)[:, :3] * 255).astype(int)
    lengths = valid_length(camera_traces.validity)
    uv, depth = project(camera_traces.samples.reshape(-1, 3), intrinsics)
    uv = uv.reshape(len(camera_traces), -1, 2)
    depth = depth.reshape(len(camera_traces), -1)
    for i in range(len(camera_traces)):
        pts = uv[i, :max(int(lengths[i]), 1)]
        ok = np.isfinite(pts).all(axis=1) & (depth[i, :len(pts)] > 0)
        for t in range(1, len(pts)):
            if ok[t] and ok[t - 1]:
                cv2.line(canvas, tuple(np.round(pts[t - 1]).astype(int)), tuple(np.round(pts[t]).astype(int)),
                         tuple(int(c) for c in colors[t]), thickness, cv2.LINE_AA)
        if ok[0]:
            cv2.circle(canvas, tuple(np.round(pts[0]).astype(int)), thickness + 1, (255, 255, 255), -1, cv2.LINE_AA)
    return canvas


def write_overlay(frames: list, path, fps: float = 10.0) -> Path:
    """MP4 (or PNG for a single frame / a .png path: a 2x2 contact sheet of evenly spaced frames)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        picks = [frames[int(round(k))] for k in np.linspace(0, len(frames) - 1, min(4, len(frames)))]
        while len(picks) < 4:
            picks.append(np.zeros_like(picks[0]))
        sheet = np.concatenate([np.concatenate(picks[:2], axis=1), np.concatenate(picks[2:], axis=1)], axis=0)
        imageio.imwrite(path, sheet)
        return path
    even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # yuv420p needs even sizes
    imageio.mimwrite(path, even, fps=fps, codec="libx264", macro_block_size=1)
    return path


def render_overlay_from_bag(bag, out_path, fps: float = 10.0) -> Path:
    """Overlay of the /mu0/traces_camera of a replayed bag over its colour images."""
    from rosbags.rosbag2 import Reader

    store = convert.mu0_typestore()
    images, infos, traces = {}, {}, []
    with Reader(Path(bag)) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic == RGBD_PARAMS["color_topic"]:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                images[convert.stamp_to_ns(msg.header.stamp)] = convert.color_from_image(msg)
            elif conn.topic == RGBD_PARAMS["camera_info_topic"]:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                infos[convert.stamp_to_ns(msg.header.stamp)] = convert.intrinsics_from_camera_info(msg)
            elif conn.topic == "/mu0/traces_camera":
                traces.append(convert.trace_msg_to_set(store.deserialize_cdr(raw, conn.msgtype)))
    frames = [draw_traces(images[t.stamp_ns], t, infos[t.stamp_ns]) for t in traces
              if t.stamp_ns in images and t.stamp_ns in infos]
    if not frames:
        raise ValueError(f"bag: {bag} has no /mu0/traces_camera matching its colour images")
    return write_overlay(frames, out_path, fps)
