"""Scripted-expert demonstrations -> rosbag2 (mcap) bags + episode.json, per docs/interfaces.md.

    python -m mu0_sim.record --tasks reach,push --seeds 0-4 --embodiment sawyer_ee --out data/demos

One bag directory per episode: <out>/<task>__<embodiment>__seed<seed>/ with metadata.yaml, the
.mcap file and the sidecar episode.json. Bags are self-describing: mu0_msgs/NamedPoints is
registered from its .msg text, so readers that never saw the type can decode it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mu0_sim.env import (CAMERAS, DEFAULT_CAMERA, SIM_START_NS, STEP_PERIOD_NS, CameraMotion,
                         SawyerSimEnv, canonical_task)

FORMAT_VERSION = 1
BASE_FRAME = "base_link"
COLOR_FRAME = "camera_color_optical_frame"   # realsense-ros default; depth is aligned to colour
TOPICS = {
    "color": "/camera/camera/color/image_raw",
    "depth": "/camera/camera/aligned_depth_to_color/image_raw",
    "color_info": "/camera/camera/color/camera_info",
    "depth_info": "/camera/camera/aligned_depth_to_color/camera_info",
    "joint_states": "/joint_states",
    "instruction": "/mu0/instruction",
    "camera_pose": "/mu0/sim/camera_pose",
    "ground_truth": "/mu0/sim/ground_truth",
    "success": "/mu0/sim/success",
    "ee_delta": "/mu0/sim/ee_delta",
    "joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
}
MSG_TYPES = {
    "color": "sensor_msgs/msg/Image",
    "depth": "sensor_msgs/msg/Image",
    "color_info": "sensor_msgs/msg/CameraInfo",
    "depth_info": "sensor_msgs/msg/CameraInfo",
    "joint_states": "sensor_msgs/msg/JointState",
    "instruction": "std_msgs/msg/String",
    "camera_pose": "geometry_msgs/msg/PoseStamped",
    "ground_truth": "mu0_msgs/msg/NamedPoints",
    "success": "std_msgs/msg/Bool",
    "ee_delta": "std_msgs/msg/Float64MultiArray",
    "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
}
COMMAND_KEY = {"sawyer_ee": "ee_delta", "sawyer_joint": "joint_trajectory"}


def _transient_local_qos():
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


def _pose_json(tf) -> dict:
    return {"translation": tf.translation.tolist(), "quat_xyzw": tf.to_quat_xyzw().tolist(),
            "matrix": tf.as_matrix().tolist()}


@dataclass
class EpisodeResult:
    path: Path
    task: str
    seed: int
    embodiment: str
    success: bool
    num_steps: int
    wall_s: float


def record_episode(task: str, seed: int, out_dir, embodiment: str = "sawyer_ee",
                   camera: str = DEFAULT_CAMERA, width: int = 320, height: int = 240,
                   max_steps: int = 300, post_success_steps: int = 10,
                   camera_motion: CameraMotion | None = None, shadows: bool = False,
                   env: SawyerSimEnv | None = None, name: str | None = None,
                   overwrite: bool = False) -> Path:
    """Run the scripted expert for one episode and write it as a bag; returns the bag directory."""
    return record_episode_result(task, seed, out_dir, embodiment, camera, width, height, max_steps,
                                 post_success_steps, camera_motion, shadows, env, name,
                                 overwrite).path


def record_episode_result(task, seed, out_dir, embodiment="sawyer_ee", camera=DEFAULT_CAMERA,
                          width=320, height=240, max_steps=300, post_success_steps=10,
                          camera_motion=None, shadows=False, env=None, name=None,
                          overwrite=False) -> EpisodeResult:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mu0_ros.convert import (camera_info_from_intrinsics, depth_to_image, dict_to_named_points,
                                 make_header, mu0_typestore, numpy_to_image)
    from mu0_ros import convert

    task = canonical_task(task)
    if int(max_steps) <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if int(post_success_steps) < 0:
        raise ValueError(f"post_success_steps must be >= 0, got {post_success_steps}")
    own_env = env is None
    if own_env:
        env = SawyerSimEnv(task, seed=seed, embodiment=embodiment, camera=camera, width=width,
                           height=height, shadows=shadows, camera_motion=camera_motion,
                           max_steps=max_steps)
    elif (env.task, env.embodiment, env.camera_name, env.width, env.height) != (
            task, embodiment, camera, width, height):
        raise ValueError("env: the given env does not match task/embodiment/camera/width/height")
    env.max_steps = max(env.max_steps, int(max_steps))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_dir = out_dir / (name or f"{task}__{embodiment}__seed{int(seed)}")
    if bag_dir.exists():
        if not overwrite:
            raise ValueError(f"out_dir: {bag_dir} already exists (pass overwrite=True to replace it)")
        import shutil

        shutil.rmtree(bag_dir)

    store = mu0_typestore()
    cmd_key = COMMAND_KEY[embodiment]
    keys = ["color", "depth", "color_info", "depth_info", "joint_states", "instruction",
            "camera_pose", "ground_truth", "success", cmd_key]
    t_start = time.perf_counter()
    obs = env.reset(seed)
    cam_pose0 = obs.T_base_cam
    success_steps = 0
    steps = 0
    with Writer(bag_dir, version=8, storage_plugin=StoragePlugin.MCAP) as writer:  # v8: Humble reads it too (v9 writes QoS as a YAML list)
        conns = {}
        for k in keys:
            qos = [_transient_local_qos()] if k == "instruction" else ()
            conns[k] = writer.add_connection(TOPICS[k], MSG_TYPES[k], typestore=store,
                                             offered_qos_profiles=qos)

        def put(key, msg, stamp):
            writer.write(conns[key], stamp, store.serialize_cdr(msg, MSG_TYPES[key]))

        put("instruction", convert.string_msg(env.instruction, store), obs.stamp_ns)
        color_info = depth_info = None
        while True:
            t = obs.stamp_ns
            hdr = make_header(t, COLOR_FRAME, store)
            if color_info is None or env.camera_motion is not None:
                color_info = camera_info_from_intrinsics(obs.intrinsics, hdr, store)
                depth_info = camera_info_from_intrinsics(obs.intrinsics, hdr, store)
            color_info.header = hdr
            depth_info.header = hdr
            put("color", numpy_to_image(obs.color, "rgb8", hdr, store), t)
            put("depth", depth_to_image(obs.depth, "16UC1", hdr, store), t)
            put("color_info", color_info, t)
            put("depth_info", depth_info, t)
            put("joint_states", convert.joint_state_msg(t, obs.joint_names, obs.joint_positions,
                                                     obs.joint_velocities, store), t)
            put("camera_pose", convert.pose_stamped_msg(t, BASE_FRAME, obs.T_base_cam, store), t)
            put("ground_truth", dict_to_named_points(dict(zip(obs.point_names, obs.points)), t,
                                                     BASE_FRAME, store), t)
            put("success", convert.bool_msg(obs.success, store), t)
            success_steps = success_steps + 1 if env.ever_succeeded else 0
            if steps >= max_steps or success_steps > post_success_steps:
                break
            action = env.expert_action()
            if embodiment == "sawyer_ee":
                put(cmd_key, convert.float64_array_msg(action, store), t)
            else:
                put(cmd_key, convert.joint_trajectory_msg(env.robot.command_joints, action,
                                                          STEP_PERIOD_NS * 1e-9, t, store), t)
            obs = env.step(action)
            steps += 1
    wall = time.perf_counter() - t_start
    episode = {
        "format_version": FORMAT_VERSION,
        "task": task, "seed": int(seed), "embodiment": embodiment,
        "instruction": env.instruction,
        "camera": camera, "width": int(env.width), "height": int(env.height),
        "intrinsics": {"fx": obs.intrinsics.fx, "fy": obs.intrinsics.fy,
                       "cx": obs.intrinsics.cx, "cy": obs.intrinsics.cy},
        "T_base_cam": _pose_json(cam_pose0),
        "camera_moving": env.camera_motion is not None,
        "camera_motion": (None if env.camera_motion is None else {
            "amplitude_deg": env.camera_motion.amplitude_deg, "period_s": env.camera_motion.period_s,
            "pivot": list(env.camera_motion.pivot),
            "height_amplitude_m": env.camera_motion.height_amplitude_m}),
        "base_frame": BASE_FRAME, "camera_frame": COLOR_FRAME,
        "step_period": STEP_PERIOD_NS * 1e-9, "start_ns": SIM_START_NS,
        "success": bool(env.ever_succeeded), "num_steps": steps, "num_frames": steps + 1,
        "joint_names": list(obs.joint_names), "command_joints": list(env.robot.command_joints),
        "command_topic": TOPICS[cmd_key], "point_names": list(obs.point_names),
        "topics": {TOPICS[k]: MSG_TYPES[k] for k in keys},
        "depth_encoding": "16UC1", "depth_scale_m": 0.001,
    }
    (bag_dir / "episode.json").write_text(json.dumps(episode, indent=2))
    if own_env:
        env.close()
    return EpisodeResult(bag_dir, task, int(seed), embodiment, bool(env.ever_succeeded), steps, wall)


def _parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
                seeds.extend(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds: cannot parse {part!r} (use e.g. 0-9 or 1,4,7)") from None
    if not seeds:
        raise ValueError("--seeds: no seeds given")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mu0 record", description=(
        "Record scripted-expert demonstrations of Meta-World tasks as rosbag2 (mcap) bags "
        "with episode.json sidecars (docs/sim.md)."))
    p.add_argument("--tasks", default="reach,push,pick-place,drawer-open",
                   help="comma-separated Meta-World v3 tasks, or 'all'")
    p.add_argument("--seeds", default="0-4", help="seed list/ranges, e.g. 0-9 or 1,4,7")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes per task (seeds 0..N-1); overrides --seeds")
    p.add_argument("--embodiment", choices=("sawyer_ee", "sawyer_joint"), default="sawyer_ee")
    p.add_argument("--camera", choices=CAMERAS, default=DEFAULT_CAMERA)
    p.add_argument("--resolution", default="320x240", help="WxH, e.g. 320x240 or 640x480")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--post-success-steps", type=int, default=10,
                   help="steps recorded after the task first succeeds")
    p.add_argument("--moving-camera", action="store_true",
                   help="the camera orbits the table smoothly during the episode")
    p.add_argument("--camera-amplitude-deg", type=float, default=12.0)
    p.add_argument("--camera-period-s", type=float, default=4.0)
    p.add_argument("--shadows", action="store_true", help="render shadows (slower)")
    p.add_argument("--only-success", action="store_true", help="delete failed episodes")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="skip episodes whose bag is complete (has episode.json); re-record partial ones")
    p.add_argument("--out", required=True, help="output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from mu0_sim.env import task_names

    try:
        tasks = task_names() if args.tasks == "all" else [canonical_task(t) for t in args.tasks.split(",") if t.strip()]
        seeds = list(range(args.episodes)) if args.episodes is not None else _parse_seeds(args.seeds)
        w, h = (int(x) for x in args.resolution.lower().split("x"))
        motion = (CameraMotion(args.camera_amplitude_deg, args.camera_period_s)
                  if args.moving_camera else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results: list[EpisodeResult] = []
    bar = tqdm(total=len(tasks) * len(seeds), desc="episodes", unit="ep")
    for task in tasks:
        env = SawyerSimEnv(task, seed=seeds[0], embodiment=args.embodiment, camera=args.camera,
                           width=w, height=h, shadows=args.shadows, camera_motion=motion,
                           max_steps=args.max_steps)
        for seed in seeds:
            bag = Path(args.out) / f"{task}__{args.embodiment}__seed{int(seed)}"
            if args.resume and bag.exists():
                if (bag / "episode.json").is_file():
                    bar.update(1)
                    continue
                import shutil

                shutil.rmtree(bag)   # a partial bag from an interrupted run
            r = record_episode_result(task, seed, args.out, args.embodiment, args.camera, w, h,
                                      args.max_steps, args.post_success_steps, motion, args.shadows,
                                      env=env, overwrite=args.overwrite)
            if args.only_success and not r.success:
                import shutil

                shutil.rmtree(r.path)
            results.append(r)
            bar.set_postfix(task=task, ok=sum(x.success for x in results), refresh=False)
            bar.update(1)
        env.close()
    bar.close()

    if not results:
        print(f"nothing to record: every episode is already in {args.out}")
        return 0
    table = Table(title=f"recorded {len(results)} episodes -> {args.out} "
                        f"({args.embodiment}, {args.camera}, {w}x{h})")
    for col in ("task", "episodes", "success", "mean steps", "frames/s", "s/episode"):
        table.add_column(col, justify="right" if col != "task" else "left")
    for task in tasks:
        rs = [r for r in results if r.task == task]
        frames = sum(r.num_steps + 1 for r in rs)
        wall = sum(r.wall_s for r in rs)
        table.add_row(task, str(len(rs)), f"{np.mean([r.success for r in rs]):.0%}",
                      f"{np.mean([r.num_steps for r in rs]):.0f}", f"{frames / wall:.1f}",
                      f"{wall / len(rs):.2f}")
    total_wall = sum(r.wall_s for r in results)
    table.add_row("all", str(len(results)), f"{np.mean([r.success for r in results]):.0%}",
                  f"{np.mean([r.num_steps for r in results]):.0f}",
                  f"{sum(r.num_steps + 1 for r in results) / total_wall:.1f}",
                  f"{total_wall / len(results):.2f}", style="bold")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
