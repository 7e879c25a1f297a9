"""CPU per frame of mu0_node's work around predict, on real sim frames (issue 14: total <= 1.10 x predict).

Frames: `--frames` camera frames (every 8 sim steps = 10 Hz) of each task under the scripted
expert, rendered once at each `--sizes` and kept in --out (npz, no pickle) so that runs of
different code see the very same frames. Per frame, what `Mu0Node._process` does, in order and
in one thread: the RGBD message -> frame (`convert.rgbd_msg_to_frame`, 16UC1 depth as
realsense-ros sends it), the gripper query and the robot self mask (`GripperSeeder` with the
robot config, its joints from the frame's sim state), `TracePipeline.process` (objects queries,
32 at most, the sim camera's extrinsic) and the publish of /mu0/traces (`convert.trace_set_to_cdr`;
nobody on /mu0/traces_camera or the markers, as in bench_runtime.py). The RViz line strips are
timed apart (`markers_ms`: what a markers subscriber adds). The task `bench-camera` is
bench_runtime.py's synthetic camera instead of the sim (no table: `objects` falls back to corners).

Times are thread_time (CPU of this thread: readable on a loaded machine; the backends run with
one thread, torch.set_num_threads(1) and MU0_ORT_THREADS=1, so predict is in this thread too).
Prints p50 per stage, `around` (p50 of each frame's total - predict: the work around predict, which
does not move with predict's own noise) and total / predict per model and size. Numbers, never asserts.

    python bench/bench_pipeline_overhead.py [--tasks pick-place,drawer-open,bench-camera] [--sizes 320x240,640x480]
        [--models checkpoints/mu0_small:torch,checkpoints/mu0_base:onnxruntime] [--dump out/x.npz]

To time other code on the same frames: PYTHONPATH=<its checkout> python bench/bench_pipeline_overhead.py.
`--dump` writes every published trace set (the serialized /mu0/traces bytes per frame) for a
bit-for-bit comparison of two runs (`--compare a.npz b.npz`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("MU0_ORT_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))   # appended: a PYTHONPATH checkout (other code) comes first
sys.path.append(str(Path(__file__).resolve().parent))     # bench_runtime's camera

STAGES = ("convert_ms", "self_mask_ms", "select_ms", "predict_ms", "postprocess_ms", "publish_ms")


def record_frames(task: str, seed: int, n: int, width: int, height: int, every: int = 8) -> dict:
    """n frames of `task` under the scripted expert: colour, depth, joints, extrinsic, intrinsics."""
    from mu0_sim.env import SawyerSimEnv

    env = SawyerSimEnv(task, seed=seed, width=width, height=height)
    obs = env.observe()
    out = {k: [] for k in ("color", "depth", "joint_positions", "stamp_ns")}
    step = 0
    while len(out["color"]) < n:
        if step % every == 0:
            out["color"].append(obs.color)
            out["depth"].append(obs.depth)
            out["joint_positions"].append(obs.joint_positions)
            out["stamp_ns"].append(obs.stamp_ns)
        obs = env.step(env.expert_action())
        step += 1
    intr = obs.intrinsics
    frames = {k: np.stack(v) for k, v in out.items()}
    frames.update(T_base_cam=obs.T_base_cam.as_matrix(), joint_names=np.array(obs.joint_names),
                  intrinsics=np.array([intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy]),
                  instruction=np.array(env.instruction))
    env.close()
    return frames


BENCH_CAMERA = "bench-camera"


def bench_camera_frames(n: int, width: int, height: int) -> dict:
    """bench_runtime.py's camera (a flat random texture moving right, 0.9 m flat depth, the sim
    camera's extrinsic, its joint driver's arm at rest): what the live graph bench feeds mu0_node."""
    from bench_runtime import SIM_CAMERA_TO_BASE, camera_frames

    from mu0_policy.runtime import extrinsic_from_list

    colors, depth, intr = camera_frames(width, height)
    names = ["right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "gripper"]
    return dict(color=np.stack([colors[k % len(colors)] for k in range(n)]),
                depth=np.stack([depth.astype(np.float32) / 1000.0] * n),
                joint_positions=np.array([[0.0, -1.2, 0.0, 2.0, 0.0, 0.7, 0.0, -1.0]] * n),
                stamp_ns=1_000_000_000 + np.arange(n) * 100_000_000,
                T_base_cam=extrinsic_from_list(SIM_CAMERA_TO_BASE).as_matrix(), joint_names=np.array(names),
                intrinsics=np.array([intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy]),
                instruction=np.array("reach the block"))


def load_frames(out_dir: Path, task: str, seed: int, n: int, width: int, height: int) -> dict:
    if task == BENCH_CAMERA:
        return bench_camera_frames(n, width, height)
    path = out_dir / f"frames_{task}_s{seed}_{width}x{height}_{n}.npz"
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **record_frames(task, seed, n, width, height))
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run(frames: dict, model: str, backend: str, robot_path: str, reps: int, dump: list | None) -> dict:
    """Per-stage thread-time lists (ms) over `reps` passes of the frames through a fresh pipeline."""
    import mu0_policy.runtime as runtime
    from mu0_core.camera import CameraIntrinsics, RigidTransform
    from mu0_core.frames import RGBDFrame
    from mu0_policy.experts.robot_config import load_robot_config
    from mu0_policy.predictors import make_predictor
    from mu0_policy.runtime import GripperSeeder, PipelineConfig, TracePipeline
    from mu0_policy.trace_postprocess import trace_line_strips
    from mu0_ros import convert

    # the pipeline's own stage timers, read as this thread's CPU time
    runtime.time = types.SimpleNamespace(perf_counter=time.thread_time)
    w, h, fx, fy, cx, cy = frames["intrinsics"]
    intr = CameraIntrinsics(int(w), int(h), fx, fy, cx, cy)
    T = RigidTransform.from_matrix(frames["T_base_cam"])
    msgs = []
    for k in range(len(frames["color"])):
        frame = RGBDFrame(int(frames["stamp_ns"][k]), "camera_color_optical_frame", frames["color"][k],
                          frames["depth"][k], intr)
        msgs.append(convert.frame_to_rgbd_msg(frame, depth_encoding="16UC1"))
    names = [str(n) for n in frames["joint_names"]]
    predictor = make_predictor(model, backend)
    seeder = GripperSeeder(load_robot_config(robot_path))
    times = {k: [] for k in (*STAGES, "markers_ms", "total_ms", "around_ms")}
    for rep in range(reps):
        pipeline = TracePipeline(predictor, PipelineConfig(queries="objects", max_queries=32, camera_to_base=T),
                                 instruction=str(frames["instruction"]))
        pipeline.warmup()
        for k, msg in enumerate(msgs):
            seeder.update_joint_state(names, frames["joint_positions"][k])
            t0 = time.thread_time()
            frame = convert.rgbd_msg_to_frame(msg)
            t1 = time.thread_time()
            extra = seeder.query(T, frame.intrinsics)
            robot_pixels = seeder.self_mask(T, frame.intrinsics)
            t2 = time.thread_time()
            out = pipeline.process(frame, extra, robot_pixels)
            t3 = time.thread_time()
            if out is None:
                continue
            wire = convert.trace_set_to_cdr(out.published)
            t4 = time.thread_time()
            strips = trace_line_strips(out.published, width=pipeline.config.marker_width)
            t5 = time.thread_time()
            if dump is not None and rep == 0:
                dump.append((wire, len(strips)))
            row = {"convert_ms": t1 - t0, "self_mask_ms": t2 - t1, "publish_ms": t4 - t3, "markers_ms": t5 - t4}
            row = {key: v * 1e3 for key, v in row.items()}
            row.update({key: out.timings_ms[key] for key in ("select_ms", "predict_ms", "postprocess_ms")})
            row["total_ms"] = (t4 - t0) * 1e3
            row["around_ms"] = row["total_ms"] - row["predict_ms"]
            for key, v in row.items():
                times[key].append(v)
    return times


def compare(a: str, b: str) -> int:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        keys = sorted(set(za.files) & set(zb.files))
        only = sorted(set(za.files) ^ set(zb.files))
        bad = [k for k in keys if not np.array_equal(za[k], zb[k])]
    print(f"{len(keys) - len(bad)} of {len(keys)} published trace sets / marker counts in both identical"
          + (f"; differ: {bad[:10]}" if bad else "") + (f"; {len(only)} in one file only" if only else ""))
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="pick-place,drawer-open")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--reps", type=int, default=2, help="passes over the frames (a fresh pipeline each)")
    p.add_argument("--sizes", default="320x240,640x480")
    p.add_argument("--models", default="checkpoints/mu0_small:torch,checkpoints/mu0_base:onnxruntime")
    p.add_argument("--robot", default=str(REPO / "config/robots/sim_sawyer_joint_mu0base.yaml"))
    p.add_argument("--out", default=str(REPO / "out/bench_pipeline_overhead"))
    p.add_argument("--dump", default="", help="write the published /mu0/traces bytes of every frame here (npz)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two --dump files and exit")
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    import mu0_policy

    dumps = {}
    print(f"code: {Path(mu0_policy.__file__).parents[1]}; thread_time ms, p50 over "
          f"{args.reps} x {args.frames} frames per task; robot {Path(args.robot).name}")
    columns = (*STAGES, "markers_ms", "total_ms", "around_ms")
    header = " ".join(f"{s[:-3]:>11s}" for s in columns) + "  total/predict  load"
    for spec in args.models.split(","):
        model, backend = spec.split(":")
        model = str(REPO / model) if not Path(model).is_absolute() else model
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            print(f"{Path(model).name} ({backend}) {size}")
            print(f"  {'task':14s} {header}")
            for task in args.tasks.split(","):
                frames = load_frames(Path(args.out), task, args.seed, args.frames, w, h)
                dump = [] if args.dump else None
                times = run(frames, model, backend, args.robot, args.reps, dump)
                if dump is not None:
                    for k, (wire, n_strips) in enumerate(dump):
                        key = f"{Path(model).name}_{size}_{task}_{k:03d}"
                        dumps[key] = np.frombuffer(wire, np.uint8)
                        dumps[key + "_strips"] = np.array(n_strips)
                p50 = {k: float(np.median(v)) if v else float("nan") for k, v in times.items()}
                cells = " ".join(f"{p50[s]:11.2f}" for s in columns)
                print(f"  {task:14s} {cells}  {p50['total_ms'] / p50['predict_ms']:13.3f}  "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
    if args.dump:
        Path(args.dump).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.dump, **dumps)
        print(f"wrote {args.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
