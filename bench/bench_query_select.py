"""Where μ_0's online queries land: the fraction on task objects that move, on the robot, on static scene.

For each task and seed the scripted expert runs an episode in the simulated Sawyer (the scene moves
as in a demo); every `--every` sim steps (the camera rate) the runtime's `QueryTracker` updates its
queries, in each mode asked for, exactly as mu0_node does (the `objects` mode with the robot self
filter of the robot config). Each query pixel is labelled by the MuJoCo body the camera sees there
(a segmentation render, ground truth that the robot does not have):
- `moving object`: a body off the robot one of whose geoms moves > 1 cm during the episode (puck,
  drawer, door, window, button; the task's objects). A fixed housing (the button's box) counts
  as static, though a query there still tells the expert where the task is;
- `robot`: a body of the Sawyer (arm, gripper, torso) - the gripper gets its own kinematic query
  anyway;
- `static`: anything else (table, walls, fixed parts, background).

    python bench/bench_query_select.py [--tasks ...] [--seeds 100-102] [--modes automatic,objects]

Prints a table (per task and mode), writes --out/query_select.json and query_select.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = "reach,push,pick-place,drawer-open,drawer-close,button-press,door-open,window-open"


def robot_bodies(model) -> set:
    """Bodies of the Sawyer: the subtree of its base body (by root), plus the mocap/hand bodies."""
    import mujoco

    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i) or "" for i in range(model.nbody)]
    base = names.index("base") if "base" in names else None
    out = set()
    for i in range(model.nbody):
        j = i
        while j > 0 and j != base:
            j = model.body_parentid[j]
        if base is not None and j == base:
            out.add(i)
    out |= {i for i, n in enumerate(names) if n.startswith(("right_", "hand", "rightclaw", "leftclaw",
                                                            "rightpad", "leftpad", "mocap", "pedestal", "torso", "head"))}
    return out


def run(task: str, seed: int, modes: list, robot, every: int, steps: int, width: int, height: int) -> dict:
    from mu0_perception.query_select import QueryTracker
    from mu0_policy.runtime import robot_self_mask
    from mu0_sim.env import SawyerSimEnv

    env = SawyerSimEnv(task, seed=seed, width=width, height=height)
    kin = robot.build_kinematics()
    m = env.model
    robot_ids = robot_bodies(m)
    trackers = {mode: QueryTracker(mode, max_points=32) for mode in modes}
    start = env.data.geom_xpos.copy()      # geom centres: a door turning on its hinge moves them,
    moved = np.zeros(m.ngeom)              # not its body origin
    frames = []
    obs = env.observe()
    for step in range(steps):
        if step % every == 0:
            seg = env.renderer.render_segmentation(env.data)
            q = np.array([obs.joint_positions[obs.joint_names.index(n)] for n in robot.joint_names])
            mask = robot_self_mask(robot, kin, q, obs.T_base_cam, obs.intrinsics, obs.depth)
            up = obs.T_base_cam.inverse().as_matrix()[:3, 2]
            sets = {mode: tr.update(obs.color, obs.depth, obs.intrinsics, up, mask if mode == "objects" else None)
                    for mode, tr in trackers.items()}
            frames.append((seg, {k: v.pixels.copy() for k, v in sets.items()}))
        obs = env.step(env.expert_action())
        moved = np.maximum(moved, np.linalg.norm(env.data.geom_xpos - start, axis=1))
        if env.success and step > every * 4:
            break
    env.close()
    moving = {int(m.geom_bodyid[g]) for g in range(m.ngeom) if moved[g] > 0.01} - robot_ids
    counts = {mode: {"moving object": 0, "robot": 0, "static": 0} for mode in modes}
    for seg, pix in frames:
        for mode, px in pix.items():
            ui = np.clip(np.rint(px[:, 0]).astype(int), 0, width - 1)
            vi = np.clip(np.rint(px[:, 1]).astype(int), 0, height - 1)
            for g in seg[vi, ui]:
                body = int(m.geom_bodyid[g]) if g >= 0 else -1
                key = "robot" if body in robot_ids else "moving object" if body in moving else "static"
                counts[mode][key] += 1
    return counts


def main(argv=None) -> int:
    from tqdm import tqdm

    from mu0_app.eval_policy import parse_seeds
    from mu0_policy.experts.robot_config import load_robot_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--seeds", default="100-102")
    p.add_argument("--modes", default="automatic,objects")
    p.add_argument("--robot", default="config/robots/sim_sawyer_ee.yaml")
    p.add_argument("--every", type=int, default=8, help="sim steps per camera frame (8 = 10 Hz)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--resolution", default="160x120")
    p.add_argument("--out", default="out/bench_query_select")
    args = p.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    w, h = (int(x) for x in args.resolution.split("x"))
    robot = load_robot_config(args.robot)
    modes = args.modes.split(",")
    tasks = args.tasks.split(",")
    seeds = parse_seeds(args.seeds)
    table = {}
    for task in tqdm(tasks, desc="tasks"):
        tot = {mode: {"moving object": 0, "robot": 0, "static": 0} for mode in modes}
        for seed in seeds:
            c = run(task, seed, modes, robot, args.every, args.steps, w, h)
            for mode in modes:
                for k, v in c[mode].items():
                    tot[mode][k] += v
        table[task] = {mode: {k: v / max(1, sum(tot[mode].values())) for k, v in tot[mode].items()} for mode in modes}
    print(f"fraction of queries (tasks x seeds {args.seeds}, {args.resolution}, every {args.every} steps)")
    print("| task | " + " | ".join(f"{m}: moving object / robot / static" for m in modes) + " |")
    print("|---|" + "---|" * len(modes))
    means = {m: np.mean([table[t][m]["moving object"] for t in tasks]) for m in modes}
    for t in tasks:
        cells = [" / ".join(f"{100 * table[t][m][k]:.0f}%" for k in ("moving object", "robot", "static")) for m in modes]
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("| mean on moving objects | " + " | ".join(f"**{100 * means[m]:.0f}%**" for m in modes) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "query_select.json").write_text(json.dumps({"seeds": args.seeds, "resolution": args.resolution,
                                                        "table": table}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = np.arange(len(tasks))
    for i, m in enumerate(modes):
        ax.bar(x + (i - (len(modes) - 1) / 2) * 0.8 / len(modes), [100 * table[t][m]["moving object"] for t in tasks],
               0.8 / len(modes), label=m)
    ax.set_xticks(x, tasks, rotation=20)
    ax.set_ylabel("% of queries on moving objects")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "query_select.png", dpi=110)
    print(f"wrote {out}/query_select.json, query_select.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
