"""How much does a learned expert's plan follow the object it is shown? (docs/results/experts.md)

For demo bags (`mu0 record`), at a few sim steps: build the expert's inputs exactly as training
does (`episode_samples`, cached traces), then shift the trace nearest the task object (the sim's
`obj_0`) by `--shift` metres along one axis and compare the plan's end-effector target `--tick`
control ticks ahead (forward kinematics of a joint plan, or the end-effector offset) with and
without the shift. An expert that aims at the object moves its target by up to the shift; one
that ignores the object, by ~0. Prints one line per (bag, step).

    python bench/probe_expert_object_sensitivity.py --expert runs/x/hold \
        --robot config/robots/sim_sawyer_joint_mu0base.yaml --model checkpoints/mu0_base \
        data/expert/bags_joint/pick-place-v3__sawyer_joint__seed{0,1,2}
"""
from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bags", nargs="+")
    p.add_argument("--expert", required=True, help="trace_policy checkpoint directory")
    p.add_argument("--robot", required=True, help="robot YAML the expert's traces were made with")
    p.add_argument("--model", required=True, help="μ_0 checkpoint or ground_truth (the expert's traces)")
    p.add_argument("--steps", default="0,8", help="sim steps to probe (comma-separated)")
    p.add_argument("--tick", type=int, default=3, help="plan row (control tick) whose target is compared")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="base-frame axis of the shift")
    p.add_argument("--shift", type=float, default=0.05, help="metres")
    p.add_argument("--without-gripper-trace", action="store_true", help="also remove the gripper's own trace")
    args = p.parse_args(argv)

    from mu0_policy.experts import load_robot_config
    from mu0_policy.experts.trace_policy import PolicyRunner, trace_features
    from mu0_policy.model.text import shared_embedder
    from mu0_policy.training.expert_data import GT_MODEL, episode_samples, load_or_make_traces, read_demo_bag
    from mu0_policy.training.train_expert import make_pipeline_factory

    robot = load_robot_config(args.robot)
    kin = robot.build_kinematics()
    policy = PolicyRunner(args.expert)
    cfg = policy.cfg
    gt = args.model == GT_MODEL
    factory = None if gt else make_pipeline_factory(args.model, 32, cfg.query_mode)
    responses = []
    for bag in args.bags:
        ep = read_demo_bag(bag)
        traces = load_or_make_traces(ep, args.model, 8, None, factory, None if gt else robot, cfg.query_mode)
        state, _, _, _ = episode_samples(ep, traces, robot, kin, cfg.horizon, cfg.max_traces, cfg.gripper_entities)
        text = np.asarray(shared_embedder().embed([ep.instruction or ep.task]), np.float32)
        arm = [ep.joint_names.index(n) for n in robot.joint_names]
        obj = ep.gt_names.index("obj_0")
        for s in (int(x) for x in args.steps.split(",")):
            k = int(np.searchsorted(traces.steps, s, side="right") - 1)
            x, v, e = traces.at(k)
            if args.without_gripper_trace:
                keep = [j for j, name in enumerate(e) if name not in cfg.gripper_entities]
                x, v, e = x[keep], v[keep], [e[j] for j in keep]
            q = ep.joint_positions[s, arm]
            ee = kin.ee_pose(q)[:3, 3]
            target = ep.gt_points[s, obj]
            i = int(np.argmin(np.linalg.norm(x[:, 0] - target, axis=1)))
            age = (s - traces.steps[k]) * ep.step_period / traces.step_period
            planned = []
            for d in (0.0, args.shift):
                xs = x.copy()
                xs[i, :, args.axis] += d
                f, m = trace_features(xs, v, e, ee, age, cfg.gripper_entities, cfg.trace_offsets, cfg.max_traces)
                y = policy.predict(state[s:s + 1], text, f[None], m[None])[0]
                if cfg.interface == "ee_delta":
                    planned.append(ee + y[: args.tick + 1, :3].sum(axis=0))
                elif cfg.action_space == "ee":
                    planned.append(ee + y[args.tick, :3])
                else:
                    planned.append(kin.ee_pose(q + y[args.tick, :-1])[:3, 3])
            response = planned[1][args.axis] - planned[0][args.axis]
            responses.append(response)
            print(f"{ep.path.name} step {s:3d}: object - hand {np.round(target - ee, 3)}, its trace {e[i]} "
                  f"{np.linalg.norm(x[i, 0] - target):.3f} m off; plan tick {args.tick} moves "
                  f"{response * 100:+.1f} cm for a {args.shift * 100:.0f} cm shift")
    print(f"mean response {np.mean(responses) / args.shift:.2f} of the shift ({len(responses)} probes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
