"""`mu0 eval-policy`: closed-loop success of a robot config's expert with a μ_0 predictor, in the sim.

    mu0 eval-policy --robot config/robots/sim_sawyer_ee.yaml --tasks drawer-open,push \
        --seeds 100-119 --model checkpoints/mu0_small --out out/eval_ee

Lockstep and deterministic for a seed: every sim step (12.5 ms) the loop does what the live graph
does, in order, with the same code the nodes run:
- every `--trace-every` steps the camera frame goes through `TracePipeline` (mu0_node's per-frame
  work: query selection and tracking, μ_0, base-frame traces) and into `ExpertRunner.update_traces`;
- every step the joint state goes into `ExpertRunner.update_joint_state` (as /joint_states does);
- every control tick `ExpertRunner.tick` asks the expert for a chunk through the `SafetyGuard`,
  and the resulting command goes into the sim's `CommandState` (what the sim node does with a
  JointTrajectory / Float64MultiArray / gripper command);
- the episode ends at success or `--max-steps`.

`--model` picks the traces: a μ_0 checkpoint, `baseline:<name>` (constant_velocity, zero_motion),
`ground_truth` (oracle: the sim points' real future under the scripted expert, the upper bound)
or `none` (no traces at all: for the no-trace expert). `--expert` overrides the robot YAML's expert:
a trace_policy checkpoint directory, `trace_follower`, or `scripted` (Meta-World's scripted policy
acting directly: the ceiling). Writes success.json, success.md (per task, Wilson 95 % intervals) and
one MP4 per task (first seed) with the traces drawn.

`--live` runs the same episodes through the real node graph instead (separate processes over DDS,
real-time sim on /clock), reporting success from the sim node: the live graph does what the
lockstep loop does.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SCRIPTED = "scripted"
GROUND_TRUTH = "ground_truth"
NO_TRACES = "none"


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeOutcome:
    task: str
    seed: int
    success: bool
    steps: int
    final_distances: dict
    safety: dict
    expert_ms_p50: float | None = None
    wall_s: float = 0.0


def parse_seeds(text: str) -> list[int]:
    from mu0_sim.record import _parse_seeds

    return _parse_seeds(text)


# ------------------------------------------------------------------------------------ trace sources
class TraceSource:
    """What stands in for mu0_node: a TraceSet (base frame) for the current sim frame."""

    needs_frames = True

    def reset(self, instruction: str) -> None:
        pass

    def traces(self, env, obs):
        raise NotImplementedError


class PredictedTraces(TraceSource):
    """μ_0 through the runtime's TracePipeline. With `robot`, the gripper is also queried where the
    arm's forward kinematics (of the measured joints) puts it, as mu0_node does with a robot config."""

    def __init__(self, model: str, max_queries: int = 32, queries: str = "objects", backend: str = "torch",
                 robot=None):
        self.robot = robot
        self.kin = None if robot is None else robot.build_kinematics()
        self.arm = None if robot is None else list(robot.joint_names)
        from mu0_policy.predictors import make_predictor
        from mu0_policy.runtime import PipelineConfig, TracePipeline

        self.pipeline = TracePipeline(make_predictor(model, backend=backend),
                                      PipelineConfig(queries=queries, max_queries=max_queries))

    def reset(self, instruction):
        self.pipeline.reset()
        self.pipeline.set_instruction(instruction)

    def traces(self, env, obs):
        from mu0_core.frames import RGBDFrame
        from mu0_sim.record import COLOR_FRAME

        from mu0_policy.runtime import robot_queries

        self.pipeline.config.camera_to_base = obs.T_base_cam
        extra = robot_pixels = None
        if self.kin is not None:
            q = np.array([obs.joint_positions[obs.joint_names.index(n)] for n in self.arm])
            extra, robot_pixels = robot_queries(self.robot, self.kin, q, obs.T_base_cam, obs.intrinsics, obs.depth)
        out = self.pipeline.process(RGBDFrame(obs.stamp_ns, COLOR_FRAME, obs.color, obs.depth, obs.intrinsics),
                                    extra, robot_pixels, 0 if self.kin is None else self.robot.self_filter_hold_frames)
        if out is None or out.base_traces is None:
            return empty_trace_set(obs.stamp_ns, env.instruction)
        return out.base_traces


def trace_set_from_points(stamp_ns, names, samples, instruction, step_period=0.0125, model_id="ground_truth"):
    """A base-frame TraceSet from (K, H+1, 3) point futures (all valid)."""
    from mu0_core.bspline import paper_knots
    from mu0_core.traces import TraceSet

    K, L, _ = samples.shape
    knots = np.asarray(paper_knots(10), float)
    idx = np.linspace(0, L - 1, 10).round().astype(int)
    return TraceSet(stamp_ns=int(stamp_ns), frame_id="base_link", instruction=instruction, model_id=model_id,
                    horizon_steps=L - 1, step_period=step_period, query_ids=np.arange(K, dtype=np.uint32),
                    entities=list(names), pixels=np.zeros((K, 2), np.float32), positions=samples[:, 0].copy(),
                    knots=knots, control_points=samples[:, idx].copy(), samples=samples.astype(float),
                    validity=np.ones((K, L)), confidence=np.ones(K))


def empty_trace_set(stamp_ns, instruction):
    return trace_set_from_points(stamp_ns, [], np.zeros((0, 33, 3)), instruction, model_id="none")


class GroundTruthTraces(TraceSource):
    needs_frames = False

    def __init__(self, horizon: int = 32):
        self.horizon = horizon

    def traces(self, env, obs):
        names, fut = env.oracle_future(self.horizon)
        return trace_set_from_points(obs.stamp_ns, names, fut, env.instruction)


class NoTraces(TraceSource):
    """The trace model never runs: an empty set per frame keeps the runner's freshness checks."""
    needs_frames = False

    def traces(self, env, obs):
        return empty_trace_set(obs.stamp_ns, env.instruction)


def make_trace_source(model: str, max_queries: int = 32, queries: str = "objects", backend: str = "torch",
                      robot=None):
    if model == GROUND_TRUTH:
        return GroundTruthTraces()
    if model == NO_TRACES:
        return NoTraces()
    return PredictedTraces(model, max_queries, queries, backend, robot)


# ------------------------------------------------------------------------------------ the loop
def robot_for_eval(robot_path: str, expert: str | None):
    """The robot config with the evaluator's expert (a checkpoint dir / name) and commanding on."""
    import dataclasses

    from mu0_policy.experts.robot_config import load_robot_config

    from mu0_core.resources import resolve

    robot = load_robot_config(str(resolve(robot_path)))
    if expert and expert != SCRIPTED and resolve(expert).is_dir():
        expert = str(resolve(expert))
    if expert and expert != SCRIPTED:
        if Path(expert).is_dir():
            params = {**robot.expert_params, "checkpoint": str(Path(expert).resolve())} \
                if robot.expert_name == "trace_policy" else {"checkpoint": str(Path(expert).resolve())}
            robot = dataclasses.replace(robot, expert_name="trace_policy", expert_params=params)
        elif expert != robot.expert_name:
            robot = dataclasses.replace(robot, expert_name=expert, expert_params={})
    return dataclasses.replace(robot, safety=dataclasses.replace(robot.safety, dry_run=False))


DEFAULT_MODEL = "checkpoints/mu0_base"   # the default μ_0, for experts that do not name theirs


def paired_model(robot_path: str, expert: str | None = None) -> str:
    """The μ_0 checkpoint an expert was trained on: `checkpoints/<trace_model_id>` of its
    checkpoint's config.json (bundled in this tree or share/mu0), else the default μ_0. Serving an
    expert another μ_0's traces still runs, but measures a pairing nobody trained."""
    from mu0_core.resources import resolve, share_path

    robot = robot_for_eval(robot_path, expert)
    ckpt = robot.expert_params.get("checkpoint") if robot.expert_name == "trace_policy" else None
    cfg = resolve(ckpt) / "config.json" if ckpt else None
    if cfg is not None and cfg.is_file():
        model_id = json.loads(cfg.read_text()).get("policy", {}).get("trace_model_id") or ""
        candidate = share_path(f"checkpoints/{model_id}") if model_id else None
        if candidate is not None and (candidate / "config.json").is_file():
            return str(candidate)
    return str(share_path(DEFAULT_MODEL))


def embodiment_of(robot) -> str:
    return "sawyer_ee" if robot.command_interface == "ee_delta" else "sawyer_joint"


def apply_command(cmd, commands, now_ns: int) -> None:
    """What the sim node does with each published command (trajectory, forward, ee delta, gripper)."""
    if cmd.values is None:
        pass                                   # a gripper-only tick
    elif cmd.interface == "joint_trajectory":
        commands.set_joint_trajectory(cmd.names, cmd.values, cmd.dt * np.arange(1, len(cmd.values) + 1), now_ns)
    elif cmd.interface == "forward_position":
        commands.set_forward_positions(cmd.values[0])
    else:
        commands.set_ee_delta(cmd.values[0])
    if getattr(cmd, "gripper", None) is not None:
        commands.set_gripper(cmd.gripper)


def final_distances(env) -> dict:
    names, pts = env.ground_truth()
    out = {}
    if len(pts) > 1:
        out["gripper_to_object_m"] = float(np.linalg.norm(pts[0] - pts[1]))
    goal = getattr(env.mw, "_target_pos", None)
    if goal is not None:
        goal = np.asarray(goal, float)
        ref = pts[1] if len(pts) > 1 and not env.task.startswith("reach") else pts[0]
        out["to_goal_m"] = float(np.linalg.norm(ref - goal))
    return out


def run_episode(env, robot, source: TraceSource, seed: int, expert_name: str, max_steps: int,
                trace_every: int = 8, video: list | None = None, expert=None) -> EpisodeOutcome:
    from mu0_app.replay import draw_traces
    from mu0_core.traces import TraceSet  # noqa: F401  (type of the sources' output)
    from mu0_policy.experts.runner import ExpertRunner
    from mu0_sim.control import CommandState
    from mu0_sim.env import STEP_PERIOD_NS

    t_start = time.perf_counter()
    obs = env.reset(seed, render=source.needs_frames or video is not None)
    scripted = expert_name == SCRIPTED
    runner = None
    if not scripted:
        runner = ExpertRunner(robot, expert=expert)
        runner.expert.reset()
    sim = env.robot
    initial = (list(env.arm_positions()) + [-1.0]) if env.embodiment == "sawyer_joint" else [0.0] * 4
    commands = CommandState(env.embodiment, sim.command_joints, initial, sim.lower, sim.upper)
    source.reset(env.instruction)
    control_every = max(1, int(round(robot.control_dt / (STEP_PERIOD_NS * 1e-9))))
    shown = None
    success = False
    step = 0
    for step in range(max_steps):
        now = obs.stamp_ns
        if step % trace_every == 0 and not scripted:
            traces = source.traces(env, obs)
            runner.update_traces(traces)
            shown = traces
        if step % trace_every == 0 and video is not None and obs.color is not None:
            import cv2

            # drawn on a 3x upscale: 1-px traces on a 160x120 frame are invisible in a player
            big = (3 * obs.color.shape[1], 3 * obs.color.shape[0])
            frame = cv2.resize(obs.color, big, interpolation=cv2.INTER_NEAREST)
            if shown is not None and len(shown):
                from mu0_policy.trace_postprocess import transform_trace_set

                cam = transform_trace_set(shown, obs.T_base_cam.inverse(), "camera")
                frame = draw_traces(frame, cam, obs.intrinsics.scaled(*big), thickness=2)
            video.append(frame)
        if scripted:
            action = env.expert_action()
        else:
            runner.update_joint_state(now, obs.joint_names, obs.joint_positions, obs.joint_velocities)
            if step % control_every == 0:
                cmd = runner.tick(now)
                if cmd is not None:
                    apply_command(cmd, commands, now)
            action = commands.action(now)
        render_next = video is not None or (source.needs_frames and (step + 1) % trace_every == 0)
        obs = env.step(action, render=render_next and not scripted or video is not None)
        if env.success:
            success = True
            break
    safety = {}
    ms = None
    if runner is not None:
        safety = {**{f"runner.{k}": int(v) for k, v in runner.counts.items()},
                  **{f"guard.{k}": int(v) for k, v in runner.guard.counts.items()}}
        ms = float(np.median(runner.act_ms)) if runner.act_ms else None
    return EpisodeOutcome(env.task, int(seed), success, step + 1, final_distances(env), safety, ms,
                          time.perf_counter() - t_start)


@dataclass
class EvalReport:
    robot: str
    model: str
    expert: str
    outcomes: list = field(default_factory=list)

    def per_task(self) -> dict:
        out = {}
        for task in dict.fromkeys(o.task for o in self.outcomes):
            rs = [o for o in self.outcomes if o.task == task]
            k = sum(o.success for o in rs)
            lo, hi = wilson_interval(k, len(rs))
            out[task] = {"episodes": len(rs), "successes": k, "rate": k / len(rs), "ci95": [lo, hi],
                         "mean_steps": float(np.mean([o.steps for o in rs]))}
        return out

    def mean_rate(self) -> float:
        pt = self.per_task()
        return float(np.mean([v["rate"] for v in pt.values()])) if pt else 0.0

    def to_json(self) -> dict:
        return {"robot": self.robot, "model": self.model, "expert": self.expert,
                "mean_success": self.mean_rate(), "per_task": self.per_task(),
                "episodes": [asdict(o) for o in self.outcomes]}

    def markdown(self) -> str:
        lines = [f"# Closed-loop success: {self.robot}, traces {self.model}, expert {self.expert}", "",
                 "| task | success | rate | Wilson 95 % | mean steps |", "|---|---|---|---|---|"]
        for task, v in self.per_task().items():
            lines.append(f"| {task} | {v['successes']}/{v['episodes']} | {v['rate']:.0%} | "
                         f"[{v['ci95'][0]:.0%}, {v['ci95'][1]:.0%}] | {v['mean_steps']:.0f} |")
        lines.append(f"| **mean over tasks** | | **{self.mean_rate():.1%}** | | |")
        return "\n".join(lines) + "\n"


def evaluate(robot_path: str, tasks: list, seeds: list, model: str, out_dir=None, expert: str | None = None,
             max_steps: int = 300, trace_every: int = 8, width: int = 160, height: int = 120,
             camera: str = "corner", max_queries: int = 32, queries: str | None = None,
             videos: bool = True, progress: bool = True, backend: str = "torch",
             gripper_query: bool = True) -> EvalReport:
    from tqdm import tqdm

    from mu0_policy.experts.base import make_expert
    from mu0_sim.env import SawyerSimEnv, canonical_task

    from mu0_core.resources import resolve

    if model not in (GROUND_TRUTH, NO_TRACES) and not model.startswith("baseline:"):
        model = str(resolve(model))       # a checkpoint: the working directory, else the source tree / share/mu0
    robot = robot_for_eval(robot_path, expert)
    expert_name = SCRIPTED if expert == SCRIPTED else robot.expert_name
    expert_label = expert or f"{robot.expert_name} ({robot.expert_params.get('checkpoint', '')})"
    the_expert = None if expert_name == SCRIPTED else make_expert(robot)
    if queries is None:     # μ_0 selects queries as it did for the expert's training traces
        queries = getattr(getattr(the_expert, "cfg", None), "query_mode", "objects")
    source = (make_trace_source(model, max_queries, queries, backend, robot if gripper_query else None)
              if expert_name != SCRIPTED else NoTraces())
    if getattr(the_expert, "cfg", None) is not None and not the_expert.cfg.use_traces and model != NO_TRACES:
        source = NoTraces()     # the no-trace expert never looks at traces: do not pay for μ_0
        model = NO_TRACES
    report = EvalReport(robot.robot, model, str(expert_label))
    out = Path(out_dir) if out_dir else None
    bar = tqdm(total=len(tasks) * len(seeds), desc=f"eval {robot.robot}", unit="ep", disable=not progress,
               mininterval=1 if sys.stderr.isatty() else 30)
    for task in tasks:
        task = canonical_task(task)
        env = SawyerSimEnv(task, seed=seeds[0], embodiment=embodiment_of(robot), camera=camera, width=width,
                           height=height, max_steps=max_steps + 1)
        for i, seed in enumerate(seeds):
            frames = [] if (videos and out is not None and i == 0) else None
            o = run_episode(env, robot, source, seed, expert_name, max_steps, trace_every, frames, the_expert)
            report.outcomes.append(o)
            if frames:
                from mu0_app.replay import write_overlay

                write_overlay(frames, out / f"{task}__seed{seed}.mp4", fps=10.0)
            bar.set_postfix(task=task, ok=sum(x.success for x in report.outcomes), refresh=False)
            bar.update(1)
        env.close()
    bar.close()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "success.json").write_text(json.dumps(report.to_json(), indent=1))
        (out / "success.md").write_text(report.markdown())
    return report


# ------------------------------------------------------------------------------------ over DDS
def live_episode(robot_path: str, task: str, seed: int, model: str, max_steps: int = 300,
                 width: int = 160, height: int = 120, camera_rate_hz: float = 10.0,
                 wall_timeout_s: float = 240.0, log_dir=None, overrides=(),
                 real_time_factor: float = 0.5) -> EpisodeOutcome:
    """One episode through the LIVE graph (sim_arm, rgbd_sync, mu0_node, action_expert as separate
    processes over DDS, config/mu0_sim.yaml), success read from the sim node's /mu0/sim/success.

    The sim runs at `real_time_factor` on sim time (/clock); the episode ends at the first success or after
    `max_steps` sim steps (or the wall-clock timeout on a machine too slow to get there)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Bool

    from mu0_app.graph_config import load_graph_config, resolve_config
    from mu0_app.launcher import ProcessGraph
    from mu0_policy.experts.robot_config import load_robot_config
    from mu0_sim.env import STEP_PERIOD_NS, canonical_task

    robot = load_robot_config(robot_path)
    emb = embodiment_of(robot)
    config = load_graph_config(resolve_config("sim"), [
        f"sim_arm.task={canonical_task(task)}", f"sim_arm.seed={int(seed)}", f"sim_arm.embodiment={emb}",
        f"sim_arm.width={width}", f"sim_arm.height={height}", f"sim_arm.camera_rate_hz={camera_rate_hz}",
        f"action_expert.robot_config={robot_path}", "action_expert.dry_run=false", f"mu0_node.model={model}",
        f"mu0_node.robot_config={robot_path}",
        # a real arm does not wait for the model; on a shared 2-core machine the sim runs at half
        # speed so that four processes and μ_0 keep up with it (sim time, not wall time, is measured)
        f"sim_arm.real_time_factor={real_time_factor}",
        "mu0_node.max_queries=32", *overrides])
    # the sim (and its /clock) starts only once mu0_node and the expert are up: the episode must not
    # run while mu0_node is still loading its model (and a sim reset would rewind /clock)
    from mu0_app.graph_config import GraphConfig

    logs = Path(log_dir) if log_dir else None
    graph = ProcessGraph(GraphConfig(config.path, config.params, [n for n in config.nodes if n != "sim_arm"]), log_dir=logs)
    sim_graph = ProcessGraph(GraphConfig(config.path, config.params, ["sim_arm"]), log_dir=logs)
    t0 = time.perf_counter()
    state = {"success": False, "clock": None, "start": None}
    context = rclpy.Context()      # a context of its own: nothing leaks into the caller's rclpy
    rclpy.init(context=context)
    node = rclpy.create_node(f"eval_policy_probe_{int(seed)}", context=context)
    node.create_subscription(Bool, "/mu0/sim/success", lambda m: state.__setitem__("success", state["success"] or bool(m.data)), 10)

    def on_clock(m):
        ns = m.clock.sec * 1_000_000_000 + m.clock.nanosec
        state["clock"] = ns
        if state["start"] is None:
            state["start"] = ns

    node.create_subscription(Clock, "/clock", on_clock, 10)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(node)
    graph.start()
    steps = 0
    try:
        # ready: mu0_node configured (its /mu0/traces publisher exists after the model's warm-up)
        # and the expert built (its command publisher exists after the checkpoint loaded)
        while time.perf_counter() - t0 < wall_timeout_s and not (
                node.count_publishers("/mu0/traces") > 0 and node.count_publishers(robot.command_topic) > 0):
            ex.spin_once(timeout_sec=0.1)
            dead = {n: p.poll() for n, p in graph.children.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"live graph: node(s) exited {dead} (logs: {log_dir})")
        sim_graph.start()
        graph.children.update(sim_graph.children)
        t_episode = time.perf_counter()
        while time.perf_counter() - t_episode < wall_timeout_s and not state["success"]:
            ex.spin_once(timeout_sec=0.05)
            if any(p.poll() not in (None, 0) for p in graph.children.values()):
                dead = {n: p.poll() for n, p in graph.children.items() if p.poll() is not None}
                raise RuntimeError(f"live graph: node(s) exited {dead} (logs: {log_dir})")
            if state["clock"] is not None:
                steps = int((state["clock"] - state["start"]) // STEP_PERIOD_NS)
                if steps >= max_steps:
                    break
    finally:
        codes = {**sim_graph.stop(), **graph.stop()}
        ex.remove_node(node)
        node.destroy_node()
        ex.shutdown()
        rclpy.try_shutdown(context=context)
    return EpisodeOutcome(canonical_task(task), int(seed), bool(state["success"]), steps, {},
                          {"exit_codes": {k: v for k, v in codes.items()}}, None, time.perf_counter() - t0)


def evaluate_live(robot_path: str, tasks: list, seeds: list, model: str, out_dir=None, max_steps: int = 300,
                  width: int = 160, height: int = 120, progress: bool = True) -> EvalReport:
    from tqdm import tqdm

    from mu0_policy.experts.robot_config import load_robot_config

    robot = load_robot_config(robot_path)
    report = EvalReport(robot.robot, model, f"{robot.expert_name} (live graph over DDS)")
    out = Path(out_dir) if out_dir else None
    bar = tqdm(total=len(tasks) * len(seeds), desc=f"live {robot.robot}", unit="ep", disable=not progress)
    for task in tasks:
        for seed in seeds:
            logs = None if out is None else out / "logs" / f"{task}__seed{seed}"
            report.outcomes.append(live_episode(robot_path, task, seed, model, max_steps, width, height, log_dir=logs))
            bar.update(1)
    bar.close()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "success.json").write_text(json.dumps(report.to_json(), indent=1))
        (out / "success.md").write_text(report.markdown())
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mu0 eval-policy", description=(
        "Closed-loop success of a robot config's action expert with a μ_0 predictor, lockstep in the "
        "MuJoCo sim (deterministic per seed): success.json, success.md, one MP4 per task."))
    p.add_argument("--robot", required=True, help="robot config YAML (expert, limits, safety)")
    p.add_argument("--tasks", default="reach,push,pick-place,drawer-open,drawer-close,button-press,door-open,window-open")
    p.add_argument("--seeds", default="100-119", help="seed list/ranges, e.g. 100-119")
    p.add_argument("--model", default=None,
                   help="μ_0 checkpoint, baseline:<name>, 'ground_truth' (oracle traces) or 'none' (default: the "
                        "μ_0 the expert checkpoint was trained on, its trace_model_id; else checkpoints/mu0_base)")
    p.add_argument("--expert", default=None,
                   help="override the YAML's expert: a trace_policy checkpoint dir, trace_follower, or scripted")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--trace-every", type=int, default=8, help="sim steps between camera frames (8 = 10 Hz)")
    p.add_argument("--resolution", default="160x120")
    p.add_argument("--max-queries", type=int, default=32)
    p.add_argument("--queries", default=None, choices=("objects", "automatic", "grid"),
                   help="μ_0's query selection (default: the one the expert checkpoint was trained with)")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-gripper-query", action="store_true",
                   help="do not ask μ_0 about the gripper at its kinematic position (automatic queries only)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--live", action="store_true",
                   help="run each episode through the live node graph over DDS (config/mu0_sim.yaml, "
                        "the robot YAML's own expert), success from the sim node")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    try:
        seeds = parse_seeds(args.seeds)
        w, h = (int(x) for x in args.resolution.lower().split("x"))
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if args.model is None:
            args.model = paired_model(args.robot, args.expert)
            print(f"μ_0: {args.model} (the one the expert was trained on)", file=sys.stderr)
        if args.live:
            if args.expert or args.model in (GROUND_TRUTH, NO_TRACES):
                raise ValueError("--live runs the robot YAML's expert with a μ_0 checkpoint or baseline:<name>")
            report = evaluate_live(args.robot, tasks, seeds, args.model, args.out, args.max_steps, w, h,
                                   progress=not args.no_progress)
            print(report.markdown())
            return 0
        report = evaluate(args.robot, tasks, seeds, args.model, args.out, args.expert, args.max_steps,
                          args.trace_every, w, h, max_queries=args.max_queries, queries=args.queries,
                          videos=not args.no_video,
                          progress=not args.no_progress, gripper_query=not args.no_gripper_query)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown())
    print(f"wrote {args.out}/success.json, success.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
