"""Training data for the learned action expert, from recorded demo bags (`mu0 record`).

One bag = one scripted demonstration, every sim step holding the camera frame, /joint_states, the
sim's ground-truth points and the command the demonstrator sent. From it:
1. `read_demo_bag` -> `DemoEpisode` (numpy arrays);
2. `cache_traces` runs the FROZEN μ_0 over the frames the runtime would see (every `trace_every`
   steps, through the same `TracePipeline` mu0_node runs, queries tracked frame to frame) and caches
   the base-frame traces beside the bag (npz, no pickle), keyed by the model; or `ground_truth_traces`
   builds the oracle traces (the sim points' real futures) for the upper-bound baseline;
3. `episode_samples` turns every step into one (state, instruction, trace tokens, action chunk)
   sample with the same feature functions the runtime expert calls (`trace_policy.state_features`,
   `trace_policy.trace_features`), the traces being the newest ones at that step, `age` steps old.
Action targets are in the robot's command space: ee_delta robots (H, 4) metres per tick + gripper;
joint robots (H, J + 1) offsets from the current arm position at each control tick + gripper.
"""
from __future__ import annotations

import hashlib
import sys
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mu0_policy.experts.trace_policy import state_features, trace_features, TRACE_FEATURES

GT_MODEL = "ground_truth"


@dataclass
class DemoEpisode:
    path: Path
    task: str
    seed: int
    embodiment: str
    instruction: str
    stamps_ns: np.ndarray          # (S,)
    joint_names: list
    joint_positions: np.ndarray    # (S, Jall) every joint the sim reports (arm, fingers, `gripper`)
    joint_velocities: np.ndarray   # (S, Jall) as reported (NaN where a message carried none)
    gt_names: list
    gt_points: np.ndarray          # (S, K, 3) base frame
    commands: np.ndarray           # (S, C) command sent at each step (last row repeats the previous)
    command_names: list
    color: np.ndarray              # (S, h, w, 3)
    depth: np.ndarray              # (S, h, w) metres
    intrinsics: object
    T_base_cam: object             # RigidTransform
    step_period: float
    success: bool
    recorded_goal: np.ndarray | None = None   # episode.json goal_base (base frame); None: no goal drawn
    goal_recorded: bool = True     # False: a bag from before goal_base; `goal` asks the sim, once

    @property
    def goal(self) -> np.ndarray | None:
        """The goal the scene shows (base frame), None where it draws none. Only the ground-truth
        traces need it, so an old bag's goal is looked up in the sim on first use, not on every read."""
        if not self.goal_recorded:
            self.recorded_goal, self.goal_recorded = _sim_goal(self.task, self.seed, self.embodiment), True
        return self.recorded_goal

    @property
    def num_steps(self) -> int:
        return len(self.stamps_ns)

    def column(self, name: str) -> np.ndarray:
        return self.joint_positions[:, self.joint_names.index(name)]


def read_demo_bag(path) -> DemoEpisode:
    """Read one `mu0 record` bag (+ episode.json); ValueError naming the bag when it is not one."""
    from rosbags.highlevel import AnyReader

    from mu0_core.camera import RigidTransform
    from mu0_ros import convert

    path = Path(path)
    meta_path = path / "episode.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path}: cannot read the episode sidecar ({err})") from None
    for k in ("task", "seed", "embodiment", "command_topic", "T_base_cam", "step_period"):
        if k not in meta:
            raise ValueError(f"{meta_path}: field '{k}' is required")
    topics = {"/camera/camera/color/image_raw": "color", "/camera/camera/aligned_depth_to_color/image_raw": "depth",
              "/camera/camera/color/camera_info": "info", "/joint_states": "joints",
              "/mu0/sim/ground_truth": "gt", meta["command_topic"]: "cmd"}
    rows = {k: {} for k in topics.values()}
    intr = None
    with AnyReader([path], default_typestore=convert.mu0_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, t_ns, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            kind = topics[conn.topic]
            if kind == "cmd":
                if meta["embodiment"] == "sawyer_ee":
                    rows["cmd"][t_ns] = (None, convert.float64_array_to_numpy(msg))
                else:
                    names, pos, _ = convert.joint_trajectory_to_points(msg)
                    rows["cmd"][t_ns] = (list(names), np.asarray(pos, float)[0])
                continue
            stamp = convert.stamp_to_ns(msg.header.stamp)
            if kind == "color":
                rows["color"][stamp] = convert.color_from_image(msg)
            elif kind == "depth":
                rows["depth"][stamp] = convert.depth_from_image(msg)
            elif kind == "info" and intr is None:
                intr = convert.intrinsics_from_camera_info(msg)
            elif kind == "joints":
                vel = np.asarray(msg.velocity, float)
                rows["joints"][stamp] = (list(msg.name), np.asarray(msg.position, float),
                                         vel if len(vel) == len(msg.name) else np.full(len(msg.name), np.nan))
            elif kind == "gt":
                rows["gt"][stamp] = convert.named_points_to_dict(msg)
    stamps = np.array(sorted(rows["color"]), np.int64)
    missing = [k for k in ("depth", "joints", "gt", "cmd") if not rows[k]]
    if len(stamps) < 2 or missing or intr is None:
        raise ValueError(f"{path}: not a demo bag (frames {len(stamps)}, missing {missing or 'camera_info'})")
    joint_names = rows["joints"][stamps[0]][0]
    gt_names = list(rows["gt"][stamps[0]])
    cmd_names = rows["cmd"][next(iter(rows["cmd"]))][0] or ["dx", "dy", "dz", "gripper"]
    cmds = []
    last = None
    for s in stamps:
        if s in rows["cmd"]:
            last = rows["cmd"][s][1]
        cmds.append(last if last is not None else np.zeros(len(cmd_names)))
    return DemoEpisode(
        path=path, task=str(meta["task"]), seed=int(meta["seed"]), embodiment=str(meta["embodiment"]),
        instruction=str(meta.get("instruction", "")), stamps_ns=stamps, joint_names=joint_names,
        joint_positions=np.stack([rows["joints"][s][1] for s in stamps]),
        joint_velocities=np.stack([rows["joints"][s][2] for s in stamps]), gt_names=gt_names,
        gt_points=np.stack([[rows["gt"][s][n] for n in gt_names] for s in stamps]).astype(float),
        commands=np.stack(cmds).astype(float), command_names=list(cmd_names),
        color=np.stack([rows["color"][s] for s in stamps]),
        depth=np.stack([rows["depth"][s] for s in stamps]).astype(np.float32), intrinsics=intr,
        T_base_cam=RigidTransform.from_quat_xyzw(meta["T_base_cam"]["quat_xyzw"], meta["T_base_cam"]["translation"]),
        step_period=float(meta["step_period"]), success=bool(meta.get("success", True)),
        recorded_goal=_recorded_goal(meta, meta_path), goal_recorded="goal_base" in meta)


def _recorded_goal(meta: dict, meta_path: Path) -> np.ndarray | None:
    """episode.json's `goal_base` (None when absent or null), validated."""
    goal = meta.get("goal_base")
    if goal is None:
        return None
    goal = np.asarray(goal, float)
    if goal.shape != (3,) or not np.all(np.isfinite(goal)):
        raise ValueError(f"{meta_path}: field 'goal_base' must be 3 finite numbers or null, got {meta['goal_base']!r}")
    return goal


def _sim_goal(task: str, seed: int, embodiment: str) -> np.ndarray | None:
    """The goal of a task and seed from the sim (Meta-World places it by the seed alone)."""
    from mu0_sim.env import SawyerSimEnv

    env = SawyerSimEnv(task, seed=seed, embodiment=embodiment, render=False)
    try:
        return env.visible_goal()
    finally:
        env.close()


# ------------------------------------------------------------------------------------------ traces
@dataclass
class CachedTraces:
    """Traces at the trace steps of one episode, base frame, padded to the largest set."""
    steps: np.ndarray              # (F,) sim step of each trace set
    counts: np.ndarray             # (F,) traces in each set
    samples: np.ndarray            # (F, N, H+1, 3)
    validity: np.ndarray           # (F, N, H+1)
    entities: np.ndarray           # (F, N) str
    step_period: float

    def at(self, k: int):
        n = int(self.counts[k])
        return self.samples[k, :n], self.validity[k, :n], [str(e) for e in self.entities[k, :n]]


def _pad(sets, horizon):
    n = max([len(s[0]) for s in sets] + [1])
    F = len(sets)
    samples = np.zeros((F, n, horizon + 1, 3), np.float32)
    validity = np.zeros((F, n, horizon + 1), np.float32)
    entities = np.full((F, n), "", dtype="<U32")
    counts = np.zeros(F, np.int32)
    for k, (x, v, e) in enumerate(sets):
        counts[k] = len(x)
        samples[k, : len(x)] = x
        validity[k, : len(x)] = v
        entities[k, : len(e)] = e
    return counts, samples, validity, entities


def ground_truth_traces(ep: DemoEpisode, trace_every: int, horizon: int = 32) -> CachedTraces:
    """Oracle traces: each ground-truth point's real future over the next `horizon` steps, and the
    goal the scene shows (still; entity `goal`), as `SawyerSimEnv.oracle_future` gives them."""
    steps = np.arange(0, ep.num_steps, trace_every)
    names = list(ep.gt_names) + ([] if ep.goal is None else ["goal"])
    sets = []
    for s in steps:
        idx = np.minimum(s + np.arange(horizon + 1), ep.num_steps - 1)
        x = np.transpose(ep.gt_points[idx], (1, 0, 2))           # (K, H+1, 3)
        if ep.goal is not None:
            x = np.concatenate([x, np.broadcast_to(ep.goal, (1, horizon + 1, 3))], axis=0)
        sets.append((x, np.ones(x.shape[:2], np.float32), names))
    counts, samples, validity, entities = _pad(sets, horizon)
    return CachedTraces(steps, counts, samples, validity, entities, ep.step_period)


def model_key(model: str) -> str:
    """Cache key of a μ_0 checkpoint (its weights' hash) or a baseline name."""
    p = Path(model)
    if p.is_dir() and (p / "model.safetensors").is_file():
        h = hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()[:12]
        return f"{p.name}-{h}"
    return model.replace(":", "_").replace("/", "_")


def predicted_traces(ep: DemoEpisode, pipeline, trace_every: int, robot=None) -> CachedTraces:
    """Run the frozen μ_0 (a fresh `TracePipeline`) over the frames the runtime would process.

    With `robot` (a RobotConfig), the gripper is also queried where the arm's forward kinematics
    puts it in each frame (`runtime.gripper_query`), as the runtime does with a robot config."""
    from mu0_core.frames import RGBDFrame
    from mu0_policy.runtime import robot_queries
    from mu0_sim.record import COLOR_FRAME

    kin = None if robot is None else robot.build_kinematics()
    arm = None if robot is None else [ep.joint_names.index(n) for n in robot.joint_names]

    pipeline.reset()
    pipeline.set_instruction(ep.instruction or ep.task)
    pipeline.config.camera_to_base = ep.T_base_cam      # the bag's camera pose: base-frame traces
    steps, sets = [], []
    horizon = None
    for s in range(0, ep.num_steps, trace_every):
        frame = RGBDFrame(int(ep.stamps_ns[s]), COLOR_FRAME, ep.color[s], ep.depth[s], ep.intrinsics)
        extra = robot_pixels = None
        if kin is not None:
            extra, robot_pixels = robot_queries(robot, kin, ep.joint_positions[s, arm], ep.T_base_cam, ep.intrinsics,
                                                ep.depth[s])
        out = pipeline.process(frame, extra, robot_pixels, 0 if robot is None else robot.self_filter_hold_frames)
        steps.append(s)
        if out is None or out.base_traces is None:
            sets.append((np.zeros((0, 1, 3)), np.zeros((0, 1)), []))
            continue
        tr = out.base_traces
        horizon = tr.horizon_steps
        sets.append((np.asarray(tr.samples, np.float32), np.asarray(tr.validity, np.float32), list(tr.entities)))
    horizon = horizon or 32
    sets = [(x, v, e) if len(x) else (np.zeros((0, horizon + 1, 3)), np.zeros((0, horizon + 1)), e) for x, v, e in sets]
    counts, samples, validity, entities = _pad(sets, horizon)
    return CachedTraces(np.array(steps), counts, samples, validity, entities, float(pipeline.predictor.step_period))


def cache_path(bag: Path, key: str, trace_every: int, cache_dir: Path | None) -> Path:
    root = Path(cache_dir) if cache_dir else bag
    return root / f"{bag.name}__traces__{key}__every{trace_every}.npz"


def load_or_make_traces(ep: DemoEpisode, model: str, trace_every: int, cache_dir=None,
                        pipeline_factory=None, gripper_robot=None, query_mode: str = "objects") -> CachedTraces:
    """Cached traces for one episode (computed and written atomically when missing). With
    `gripper_robot`, μ_0 is also asked about the gripper (kinematics-seeded query) and the robot's
    own pixels are kept free of queries. `query_mode` (the pipeline's) and the robot's self-filter
    mode are part of the cache key."""
    key = model_key(model)
    if model == GT_MODEL:
        key += "-goal"        # oracle sets with the drawn goal (earlier caches lack it)
    else:
        key += ("-gq" if gripper_robot is not None else "") + ("" if query_mode == "automatic" else f"-{query_mode}")
        if gripper_robot is not None and gripper_robot.self_filter_mode != "projection":
            key += f"-sf{gripper_robot.self_filter_mode}"
        if gripper_robot is not None and gripper_robot.gripper_depth != "image":
            key += f"-gd{gripper_robot.gripper_depth}"
        if gripper_robot is not None and gripper_robot.self_filter_hold_frames:
            key += f"-ho{gripper_robot.self_filter_hold_frames}"
    path = cache_path(ep.path, key, trace_every, cache_dir)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return CachedTraces(z["steps"], z["counts"], z["samples"], z["validity"], z["entities"], float(z["step_period"]))
    if model == GT_MODEL:
        ct = ground_truth_traces(ep, trace_every)
    else:
        ct = predicted_traces(ep, pipeline_factory(), trace_every, gripper_robot)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, steps=ct.steps, counts=ct.counts, samples=ct.samples, validity=ct.validity,
                        entities=ct.entities, step_period=np.float64(ct.step_period))
    tmp.replace(path)
    return ct


# ------------------------------------------------------------------------------------------ samples
@dataclass
class ExpertSamples:
    state: np.ndarray              # (B, S)
    text_index: np.ndarray         # (B,) into `texts`
    traces: np.ndarray             # (B, M, F)
    mask: np.ndarray               # (B, M)
    actions: np.ndarray            # (B, H, A)
    episode: np.ndarray            # (B,) episode index
    texts: list
    ee_rotation: list = None       # action_space "ee": the chordal mean of the hand orientation at the
                                   # commanded joint targets (3x3), what the expert's IK holds

    def __len__(self):
        return len(self.state)


def episode_samples(ep: DemoEpisode, traces: CachedTraces, robot, kinematics, horizon: int,
                    max_traces: int, gripper_entities, stride: int = 1, action_space: str = "joint",
                    state_velocity: bool = False):
    """(state, traces, mask, actions) for every `stride`-th step of one episode. A joint robot's
    actions are its commanded joint targets as offsets from the current joints (`action_space`
    "joint"), or where those targets put the end effector, as offsets from where it is now ("ee"),
    + the gripper command."""
    arm = list(robot.joint_names)
    q_all = np.stack([ep.column(n) for n in arm], axis=1)
    qd_all = None
    if state_velocity:
        qd_all = np.stack([ep.joint_velocities[:, ep.joint_names.index(n)] for n in arm], axis=1)
        if not np.all(np.isfinite(qd_all)):
            raise ValueError(f"{ep.path}: --state-velocity needs joint velocities in /joint_states; this bag has none")
    grip_state = ep.column("gripper") if "gripper" in ep.joint_names else np.full(ep.num_steps, -1.0)
    S = ep.num_steps
    last = S - 1
    states, feats, masks, acts = [], [], [], []
    if robot.command_interface == "ee_delta":
        every = 1
        scale = robot.ee_delta.metres_per_unit
    else:
        every = max(1, int(round(robot.control_dt / ep.step_period)))
        cmd_idx = [ep.command_names.index(n) for n in arm]
        g_idx = ep.command_names.index("gripper")
    for s in range(0, last, stride):
        k = int(np.searchsorted(traces.steps, s, side="right") - 1)
        ee = kinematics.ee_pose(q_all[s])[:3, 3]
        states.append(state_features(ee, grip_state[s], q_all[s], None if qd_all is None else qd_all[s]))
        x, v, e = traces.at(k)
        age = (s - traces.steps[k]) * ep.step_period / traces.step_period
        f, m = trace_features(x, v, e, ee, age, gripper_entities, max_traces=max_traces)
        feats.append(f)
        masks.append(m)
        if robot.command_interface == "ee_delta":
            idx = s + np.arange(horizon)
            rows = ep.commands[np.minimum(idx, last - 1)].copy()
            rows[idx >= last, :3] = 0.0                      # after the demo: stay
            rows[:, :3] *= scale
        else:
            idx = np.minimum(s + every * (np.arange(horizon) + 1) - 1, last - 1)
            if action_space == "ee":
                ee_cmd = np.array([kinematics.ee_pose(q)[:3, 3] for q in ep.commands[idx][:, cmd_idx]])
                rows = np.concatenate([ee_cmd - ee[None], ep.commands[idx][:, [g_idx]]], axis=1)
            else:
                rows = np.concatenate([ep.commands[idx][:, cmd_idx] - q_all[s][None], ep.commands[idx][:, [g_idx]]],
                                      axis=1)
        acts.append(rows)
    return (np.asarray(states, np.float32), np.asarray(feats, np.float32), np.asarray(masks, bool),
            np.asarray(acts, np.float32))


def build_samples(bags, robot, model: str, horizon: int, max_traces: int, trace_every: int,
                  gripper_entities, cache_dir=None, pipeline_factory=None, progress: bool = True,
                  gripper_query: bool = True, query_mode: str = "objects", action_space: str = "joint",
                  state_velocity: bool = False) -> ExpertSamples:
    """Samples from many demo bags (failed demos are skipped)."""
    from tqdm import tqdm

    kin = robot.build_kinematics()
    out = {k: [] for k in ("state", "traces", "mask", "actions", "episode", "text_index")}
    texts: list = []
    rotation_sum = np.zeros((3, 3))
    for i, bag in enumerate(tqdm(list(bags), desc=f"samples ({model_key(model)})", unit="bag", disable=not progress,
                          mininterval=1 if sys.stderr.isatty() else 30)):
        ep = read_demo_bag(bag)
        if not ep.success:
            continue
        ct = load_or_make_traces(ep, model, trace_every, cache_dir, pipeline_factory,
                                 robot if gripper_query else None, query_mode)
        st, tr, m, a = episode_samples(ep, ct, robot, kin, horizon, max_traces, gripper_entities,
                                       action_space=action_space, state_velocity=state_velocity)
        if action_space == "ee":      # only an "ee" action-space expert holds an orientation
            cmd = ep.commands[:, [ep.command_names.index(n) for n in robot.joint_names]]
            rotation_sum += sum(kin.ee_pose(q)[:3, :3] for q in cmd[::10])
        text = ep.instruction or ep.task
        if text not in texts:
            texts.append(text)
        out["state"].append(st)
        out["traces"].append(tr)
        out["mask"].append(m)
        out["actions"].append(a)
        out["episode"].append(np.full(len(st), i))
        out["text_index"].append(np.full(len(st), texts.index(text)))
    if not out["state"]:
        raise ValueError(f"no successful demo bags among {len(list(bags))} given")
    return ExpertSamples(*(np.concatenate(out[k]) for k in ("state", "text_index", "traces", "mask", "actions", "episode")),
                         texts, _nearest_rotation(rotation_sum) if rotation_sum.any() else None)


def _nearest_rotation(m: np.ndarray) -> list:
    """The rotation matrix nearest `m` (a sum of rotations: their chordal mean), as nested lists."""
    u, _, vt = np.linalg.svd(m)
    rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    return [[float(x) for x in row] for row in rotation]


__all__ = ["DemoEpisode", "read_demo_bag", "CachedTraces", "ground_truth_traces", "predicted_traces",
           "load_or_make_traces", "episode_samples", "build_samples", "ExpertSamples", "GT_MODEL", "TRACE_FEATURES"]
