"""Action-expert latency on this machine: FK, IK, trace_follower.act() per robot config, the safety
guard and one ExpertRunner re-plan tick. Prints numbers (ms); asserts nothing.

    python bench/bench_expert.py [--repeats 200]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mu0_policy.experts import ExpertObservation, load_robot_config, make_expert
from mu0_policy.experts.runner import ExpertRunner
from mu0_policy.experts.safety import SafetyGuard
from mu0_core.traces import TraceSet

SAWYER_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])
UR5E_Q = np.array([0.0, -1.57, 1.57, -1.57, -1.57, 0.0])
SEC = 1_000_000_000


def timed(fn, repeats):
    fn()  # warm-up
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        fn()
        t.append((time.perf_counter() - s) * 1e3)
    t = np.asarray(t)
    return f"p50 {np.percentile(t, 50):7.3f} ms   p99 {np.percentile(t, 99):7.3f} ms   max {t.max():7.3f} ms"


def observation(robot, q, ee, n_traces=16):
    rng = np.random.default_rng(0)
    traces = ee + rng.normal(0, 0.1, (n_traces, 1, 3)) + np.linspace(0, 1, 33)[None, :, None] * rng.normal(0, 0.1, (n_traces, 1, 3))
    traces[0] = ee + np.linspace(0, 1, 33)[:, None] * np.array([0.1, 0.05, -0.05])
    ents = ["gripper"] + ["object"] * (n_traces - 1)
    return ExpertObservation(10 * SEC, robot.joint_names, q, None, traces, np.ones((n_traces, 33)), ents,
                             np.arange(n_traces), 10 * SEC - 100_000_000, 0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    n = args.repeats
    for cfg, q in (("config/robots/sim_sawyer_joint.yaml", SAWYER_Q),
                   ("config/robots/sim_sawyer_ee.yaml", SAWYER_Q),
                   ("config/robots/ur5e.yaml", UR5E_Q)):
        robot = load_robot_config(cfg)
        expert = make_expert(robot)
        chain, kin = expert.kinematics.chain, expert.kinematics
        qc = kin.chain_q(q)
        T0 = chain.fk(qc)
        obs = observation(robot, q, T0[:3, 3])
        print(f"== {robot.robot}: {robot.command_interface}, {chain.dof}-dof chain, chunk {robot.chunk_horizon} "
              f"ticks at {robot.control_rate_hz:g} Hz (tick budget {1e3 / robot.control_rate_hz:.1f} ms)")
        print(f"  fk                      {timed(lambda: chain.fk(qc), n)}")
        print(f"  ik (5 cm, pos+orient)   {timed(lambda: chain.ik(T0[:3, 3] + 0.05, qc, target_rotation=T0[:3, :3]), n)}")
        print(f"  act() (16 traces)       {timed(lambda: expert.act(obs), n)}")
        guard = SafetyGuard.from_robot(robot)
        chunk = expert.act(obs)
        if robot.command_interface == "ee_delta":
            ee = T0[:3, 3]
            print(f"  guard.ee_command        {timed(lambda: guard.ee_command(10 * SEC, chunk.ee_deltas, ee, 10 * SEC, 10 * SEC), n)}")
        else:
            print(f"  guard.joint_command     {timed(lambda: guard.joint_command(10 * SEC, chunk.joint_positions, q, 10 * SEC, 10 * SEC), n)}")
        runner = ExpertRunner(robot)
        runner.update_joint_state(10 * SEC, robot.joint_names, q)
        runner.update_traces(TraceSet(10 * SEC, robot.base_frame, "", "bench", 32, 0.05, np.arange(16, dtype=np.uint32),
                                      obs.entities, np.zeros((16, 2), np.float32), obs.traces_xyz[:, 0],
                                      np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), obs.traces_xyz[:, :4], obs.traces_xyz,
                                      obs.validity, np.ones(16, np.float32)))

        def replan():
            runner._plan = None
            runner.tick(10 * SEC)
        print(f"  runner re-plan tick     {timed(replan, n)}")
    bench_learned(n)
    return 0


def bench_learned(n: int) -> None:
    """The learned expert (trace_policy): act() = features + network (+ IK for a joint expert in the
    "ee" action space), per backend, 32 traces."""
    import dataclasses
    import json
    from pathlib import Path

    for cfg, ckpt in (("config/robots/sim_sawyer_ee.yaml", "checkpoints/expert_sawyer_ee"),
                      ("config/robots/sim_sawyer_joint.yaml", "checkpoints/expert_sawyer_joint"),
                      ("config/robots/sim_sawyer_ee_mu0base.yaml", "checkpoints/expert_sawyer_ee_mu0base"),
                      ("config/robots/sim_sawyer_joint_mu0base.yaml", "checkpoints/expert_sawyer_joint_mu0base")):
        if not (Path(ckpt) / "model.onnx").is_file():
            print(f"== {ckpt}: missing (bash scripts/train_experts.sh)")
            continue
        base = load_robot_config(cfg)
        space = json.loads((Path(ckpt) / "config.json").read_text())["policy"].get("action_space", "joint")
        print(f"== trace_policy {ckpt} on {base.robot} (chunk of {base.chunk_horizon} ticks"
              + (", hand offsets -> IK" if space == "ee" and base.command_interface != "ee_delta" else "") + ")")
        for backend in ("onnxruntime", "torch"):
            robot = dataclasses.replace(base, expert_name="trace_policy",
                                        expert_params={"checkpoint": ckpt, "backend": backend})
            expert = make_expert(robot)
            q = SAWYER_Q
            obs = observation(robot, q, expert.kinematics.ee_pose(q)[:3, 3], n_traces=32)
            obs.instruction = "open the drawer"
            print(f"  act() {backend:<12} {timed(lambda: expert.act(obs), n)}")


if __name__ == "__main__":
    raise SystemExit(main())
