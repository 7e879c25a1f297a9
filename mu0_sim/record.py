"""Scripted-expert demonstrations -> rosbag2 (mcap) bags + episode.json, per docs/interfaces.md.

    python -m mu0_sim.record --tasks reach,push --seeds 0-4 --embodiment sawyer_ee --out data/demos

One bag directory per episode: <out>/<task>__<embodiment>__seed<seed>/ with metadata.yaml, the
.mcap file and the sidecar episode.json. Bags are self-describing: mu0_msgs/NamedPoints is
registered from its .msg text, so readers that never saw the type can decode it.

Several viewpoints of one episode (`--cameras corner,corner2 --perturbed-views 2`): the episode
is simulated once per view (the scripted expert and the physics do not depend on the camera,
so every view shows the same motion) and each view is its own bag
<task>__<embodiment>__seed<seed>__<view>; a perturbed view is the first camera moved by a
random yaw about the table, a height change and a small shift, seeded by (task, seed, view).
<out>/record_manifest.json records every episode (done / unsuccessful / failed); `--resume`
skips what it lists, so a killed run continues where it stopped. `--engine ray` records each
episode as one Ray task (mu0_core/batch.py), locally or on the cluster at `--ray-address`.
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
                   overwrite: bool = False, noise_m: float = 0.0) -> Path:
    """Run the scripted expert for one episode and write it as a bag; returns the bag directory."""
    return record_episode_result(task, seed, out_dir, embodiment, camera, width, height, max_steps,
                                 post_success_steps, camera_motion, shadows, env, name,
                                 overwrite, noise_m).path


class HandNoise:
    """DART-style noise injection (Laskey et al. 2017): a slowly wandering offset of the hand's
    target (base frame, m; each axis drifts toward a new N(0, std^2) goal drawn every `hold` steps),
    seeded by the episode seed so a recording and its success check run the same perturbed
    episode. The demonstration executes the perturbed action and records the expert's clean one:
    the learner sees states off the expert's path with the expert's correction as the label."""

    def __init__(self, std_m: float, seed: int, hold: int = 25, smoothing: float = 0.1):
        self.std, self.hold, self.smoothing = float(std_m), int(hold), float(smoothing)
        self.rng = np.random.default_rng([int(seed), 0xDA27])
        self.offset = np.zeros(3)
        self.goal = np.zeros(3)
        self.k = 0

    def __call__(self) -> np.ndarray:
        if self.k % self.hold == 0:
            self.goal = self.rng.normal(0.0, self.std, 3)
        self.k += 1
        self.offset += self.smoothing * (self.goal - self.offset)
        return self.offset.copy()


def _executed(env, action: np.ndarray, noise: HandNoise | None) -> np.ndarray:
    """What the arm runs this step for the expert's `action`: the action itself, or with noise."""
    return action if noise is None else env.perturbed_action(action, noise())


def record_episode_result(task, seed, out_dir, embodiment="sawyer_ee", camera=DEFAULT_CAMERA,
                          width=320, height=240, max_steps=300, post_success_steps=10,
                          camera_motion=None, shadows=False, env=None, name=None,
                          overwrite=False, noise_m: float = 0.0) -> EpisodeResult:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mu0_ros.convert import (camera_info_from_intrinsics, depth_to_image, dict_to_named_points,
                                 make_header, mu0_typestore, numpy_to_image)
    from mu0_ros import convert

    task = canonical_task(task)
    if int(max_steps) <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if int(post_success_steps) < 0:
        raise ValueError(f"post_success_steps must be >= 0, got {post_success_steps}")
    if not (np.isfinite(noise_m) and noise_m >= 0):
        raise ValueError(f"noise_m must be >= 0, got {noise_m}")
    noise = HandNoise(noise_m, seed) if noise_m > 0 else None
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
            obs = env.step(_executed(env, action, noise))
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
        "hand_noise_m": float(noise_m),
        "goal_base": None if env.visible_goal() is None else [float(x) for x in env.visible_goal()],
        "joint_names": list(obs.joint_names), "command_joints": list(env.robot.command_joints),
        "command_topic": TOPICS[cmd_key], "point_names": list(obs.point_names),
        "topics": {TOPICS[k]: MSG_TYPES[k] for k in keys},
        "depth_encoding": "16UC1", "depth_scale_m": 0.001,
    }
    (bag_dir / "episode.json").write_text(json.dumps(episode, indent=2))
    if own_env:
        env.close()
    return EpisodeResult(bag_dir, task, int(seed), embodiment, bool(env.ever_succeeded), steps, wall)


MANIFEST = "record_manifest.json"
PERTURB_PIVOT = (0.0, 0.6, 0.0)     # the table centre the perturbed cameras keep looking at


def _rot_z_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2.0), 0.0, 0.0, np.sin(yaw / 2.0)])


def _set_view(env: SawyerSimEnv, perturbation: dict | None) -> None:
    """Puts env's (world-fixed) camera at its model pose, or at that pose perturbed: yawed about
    the vertical axis through the table centre (still looking at it), raised/lowered, shifted."""
    import mujoco

    m, cid = env.model, env._cam_id
    if not hasattr(env, "_view_home"):
        env._view_home = (m.cam_pos[cid].copy(), m.cam_quat[cid].copy())
    pos, quat = (a.copy() for a in env._view_home)
    if perturbation is not None:
        if m.cam_bodyid[cid] != 0:
            raise ValueError(f"perturbed views need a world-fixed camera; {env.camera_name!r} rides on the arm")
        yaw = np.deg2rad(perturbation["yaw_deg"])
        c, s_ = np.cos(yaw), np.sin(yaw)
        R = np.array([[c, -s_, 0.0], [s_, c, 0.0], [0.0, 0.0, 1.0]])
        pivot = np.asarray(PERTURB_PIVOT)
        pos = pivot + R @ (pos - pivot) + np.asarray(perturbation["shift_m"])
        mujoco.mju_mulQuat(quat, _rot_z_quat(yaw), env._view_home[1].copy())
    m.cam_pos[cid], m.cam_quat[cid] = pos, quat
    env._cam_pos0, env._cam_quat0 = pos.copy(), quat.copy()   # a CameraMotion orbits this pose
    mujoco.mj_kinematics(m, env.data)
    mujoco.mj_camlight(m, env.data)


def view_specs(task: str, seed: int, cameras: list[str], perturbed: int, yaw_deg: float = 20.0,
               height_m: float = 0.08, shift_m: float = 0.04) -> list[dict]:
    """The views of one episode: each fixed camera, then `perturbed` random perturbations of the
    first one. Seeded by (task, seed, k), so every re-run and every worker draws the same poses."""
    import zlib

    views = [{"name": c, "camera": c, "perturbation": None} for c in cameras]
    for k in range(int(perturbed)):
        rng = np.random.default_rng([zlib.crc32(task.encode()), int(seed), k])
        shift = rng.uniform(-shift_m, shift_m, 3)
        shift[2] += rng.uniform(-height_m, height_m)
        views.append({"name": f"{cameras[0]}-p{k}", "camera": cameras[0],
                      "perturbation": {"yaw_deg": float(rng.uniform(-yaw_deg, yaw_deg)),
                                       "shift_m": [float(x) for x in shift]}})
    return views


_ENVS: dict = {}   # per worker process: the envs of the task it last recorded, one per camera


def _env_for(job: dict, camera: str) -> SawyerSimEnv:
    key = (job["task"], job["embodiment"], camera, job["width"], job["height"], job["shadows"],
           job["motion"], job["max_steps"])
    if key not in _ENVS:
        if any(k[0] != job["task"] for k in _ENVS):   # a new task: free the previous task's envs
            for env in _ENVS.values():
                env.close()
            _ENVS.clear()
        motion = CameraMotion(*job["motion"]) if job["motion"] else None
        _ENVS[key] = SawyerSimEnv(job["task"], seed=job["seed"], embodiment=job["embodiment"], camera=camera,
                                  width=job["width"], height=job["height"], shadows=job["shadows"],
                                  camera_motion=motion, max_steps=job["max_steps"])
    return _ENVS[key]


def _expert_succeeds(env: SawyerSimEnv, seed: int, max_steps: int, noise_m: float = 0.0) -> bool:
    """Physics only (no rendering, ~0.2 s): does the scripted expert succeed within max_steps
    (with the recording's hand noise, the same perturbed episode)?"""
    env.reset(seed, render=False)
    noise = HandNoise(noise_m, seed) if noise_m > 0 else None
    for _ in range(max_steps):
        env.step(_executed(env, env.expert_action(), noise), render=False)
        if env.ever_succeeded:
            return True
    return False


def record_job(job: dict) -> dict:
    """One episode (task, seed) in every view -> bags; returns its manifest record, never raises.

    The batch unit of both engines (a Ray task runs exactly this). With only_success the expert
    is first run without rendering and an unsuccessful episode is recorded as such, no bag
    written. With resume, views whose bag is complete (episode.json) are kept."""
    import shutil

    t0, c0 = time.perf_counter(), time.process_time()   # cpu_s: what sizes a corpus on a loaded machine
    out = Path(job["out"])
    rec = {"key": job["key"], "task": job["task"], "seed": job["seed"], "views": []}

    def finish(**fields) -> dict:
        return {**rec, **fields, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    try:
        views = job["views"]
        names = [job["key"] if v["name"] is None else f"{job['key']}__{v['name']}" for v in views]
        complete = job["resume"] and all((out / n / "episode.json").is_file() for n in names)
        if job["only_success"] and not complete and not _expert_succeeds(
                _env_for(job, views[0]["camera"]), job["seed"], job["max_steps"], job.get("noise_m", 0.0)):
            return finish(status="unsuccessful", success=False)
        steps, success = 0, True
        for v, name in zip(views, names):
            bag = out / name
            if job["resume"] and bag.exists():
                try:
                    ep = json.loads((bag / "episode.json").read_text())
                    steps, success = ep["num_steps"], success and ep["success"]
                    rec["views"].append(name)
                    continue
                except (OSError, ValueError, KeyError):  # no or a half-written episode.json
                    shutil.rmtree(bag)                   # a partial bag from an interrupted run
            env = _env_for(job, v["camera"])
            _set_view(env, v["perturbation"])   # envs are reused across views: always set the pose
            r = record_episode_result(job["task"], job["seed"], out, job["embodiment"], v["camera"],
                                      job["width"], job["height"], job["max_steps"], job["post_success_steps"],
                                      env.camera_motion, job["shadows"], env=env, name=name,
                                      overwrite=job["overwrite"], noise_m=job.get("noise_m", 0.0))
            if v["name"] is not None:   # which view this bag is: episode.json, rewritten atomically
                ep_path = r.path / "episode.json"
                ep = json.loads(ep_path.read_text())
                ep.update(view=v["name"], camera_perturbation=v["perturbation"])
                tmp = ep_path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(ep, indent=2))
                tmp.replace(ep_path)
            steps, success = r.num_steps, success and r.success
            rec["views"].append(name)
            if job["only_success"] and not r.success:   # cannot happen after the check above; kept honest
                for n in rec["views"]:
                    shutil.rmtree(out / n, ignore_errors=True)
                rec["views"] = []
                return finish(status="unsuccessful", success=False)
        return finish(status="done", success=bool(success), num_steps=int(steps))
    except Exception as exc:  # one broken episode must not stop a corpus: recorded, retried on resume
        import traceback

        return finish(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=5))


def _crashed(job: dict, exc: BaseException) -> dict:
    """The record of an episode whose Ray worker died (record_job itself never raises)."""
    return {"key": job["key"], "task": job["task"], "seed": job["seed"], "views": [], "status": "failed",
            "error": f"worker crashed: {type(exc).__name__}: {exc}"}


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)     # atomic: a kill leaves the old or the new manifest, never half


def _mean_steps(records: list[dict]) -> str:
    steps = [r["num_steps"] for r in records if "num_steps" in r]   # unsuccessful ones were not recorded
    return f"{np.mean(steps):.0f}" if steps else "-"


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
    p.add_argument("--cameras", default=None,
                   help="comma-separated cameras, each a view (its own bag) of every episode; overrides --camera")
    p.add_argument("--perturbed-views", type=int, default=0,
                   help="extra views per episode: the first camera at a random perturbed pose (seeded)")
    p.add_argument("--resolution", default="320x240", help="WxH, e.g. 320x240 or 640x480")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--post-success-steps", type=int, default=10,
                   help="steps recorded after the task first succeeds")
    p.add_argument("--moving-camera", action="store_true",
                   help="the camera orbits the table smoothly during the episode")
    p.add_argument("--camera-amplitude-deg", type=float, default=12.0)
    p.add_argument("--camera-period-s", type=float, default=4.0)
    p.add_argument("--shadows", action="store_true", help="render shadows (slower)")
    p.add_argument("--hand-noise", type=float, default=0.0, metavar="M",
                   help="DART-style noise injection: the hand's target wanders by about M metres (std) "
                        "while the bag records the expert's clean commands (default 0: plain demos)")
    p.add_argument("--only-success", action="store_true",
                   help="record only episodes whose scripted expert succeeds (checked first without rendering)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help=f"skip episodes {MANIFEST} lists as done/unsuccessful and bags that are complete "
                        "(episode.json); re-record partial ones")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: episodes in this process; ray: one Ray task per episode")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: the cluster to submit to (e.g. auto); default: a local Ray")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: local Ray slots (default: all cores)")
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
        cameras = [c.strip() for c in args.cameras.split(",") if c.strip()] if args.cameras else [args.camera]
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras:
            raise ValueError(f"--cameras: {bad or 'none given'} (choose from {CAMERAS})")
        if args.perturbed_views < 0:
            raise ValueError("--perturbed-views must be >= 0")
        if not (np.isfinite(args.hand_noise) and args.hand_noise >= 0):
            raise ValueError(f"--hand-noise must be >= 0 metres, got {args.hand_noise}")
        if args.ray_address and args.engine != "ray":
            raise ValueError("--ray-address needs --engine ray")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        from mu0_core.batch import ray_available

        if not ray_available():
            print("error: --engine ray: the `ray` package is not installed (pip install -r requirements.txt)",
                  file=sys.stderr)
            return 2
    motion = ((args.camera_amplitude_deg, args.camera_period_s) if args.moving_camera else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"episodes": {}}
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text())
    eps = manifest.setdefault("episodes", {})
    single = len(cameras) == 1 and args.perturbed_views == 0   # one view: the plain bag name, as before
    jobs, skipped = [], 0
    for task in tasks:
        for seed in seeds:
            key = f"{task}__{args.embodiment}__seed{int(seed)}"
            if args.resume and eps.get(key, {}).get("status") in ("done", "unsuccessful"):
                skipped += 1          # failed ones (an exception) are tried again
                continue
            views = view_specs(task, seed, cameras, args.perturbed_views)
            if single:
                views[0]["name"] = None
            jobs.append(dict(key=key, task=task, seed=int(seed), embodiment=args.embodiment, views=views,
                             width=w, height=h, max_steps=args.max_steps,
                             post_success_steps=args.post_success_steps, motion=motion, shadows=args.shadows,
                             only_success=args.only_success, resume=args.resume, overwrite=args.overwrite,
                             noise_m=float(args.hand_noise),
                             out=str(out)))
    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc="episodes", unit="ep")

    def finished(rec: dict) -> None:
        eps[rec["key"]] = rec
        _write_manifest(out, manifest)         # after every episode: a kill loses at most those in flight
        results.append(rec)
        bar.set_postfix(task=rec["task"], ok=sum(r.get("success", False) for r in results), refresh=False)
        bar.update(1)

    if args.engine == "ray":
        from mu0_core.batch import ray_imap_unordered

        for _, rec in ray_imap_unordered(record_job, jobs, address=args.ray_address, num_cpus=args.workers,
                                         on_error=_crashed):
            finished(rec)
    else:
        try:
            for job in jobs:
                finished(record_job(job))
        finally:
            for env in _ENVS.values():
                env.close()
            _ENVS.clear()
    bar.close()
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['key']}: {r['error']}", file=sys.stderr)

    if not results:
        print(f"nothing to record: every episode is already in {args.out} ({skipped} in its manifest)")
        return 0
    table = Table(title=f"recorded {len(results)} episodes x {len(jobs[0]['views'])} views -> {args.out} "
                        f"({args.embodiment}, {','.join(cameras)} + {args.perturbed_views} perturbed, {w}x{h}, "
                        f"engine {args.engine})")
    for col in ("task", "episodes", "success", "mean steps", "s/episode"):
        table.add_column(col, justify="right" if col != "task" else "left")
    ran = [r for r in results if r["status"] != "failed"]
    for task in tasks:
        rs = [r for r in ran if r["task"] == task]
        if rs:
            table.add_row(task, str(len(rs)), f"{np.mean([r['success'] for r in rs]):.0%}",
                          _mean_steps(rs), f"{np.mean([r['wall_s'] for r in rs]):.2f}")
    if ran:
        table.add_row("all", str(len(ran)), f"{np.mean([r['success'] for r in ran]):.0%}",
                      _mean_steps(ran), f"{np.mean([r['wall_s'] for r in ran]):.2f}", style="bold")
    Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
