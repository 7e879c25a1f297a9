"""`mu0 train-expert`: train the learned action expert (`trace_policy`) from recorded demo bags.

    mu0 train-expert --bags data/expert/bags_ee --robot config/robots/sim_sawyer_ee.yaml \
        --model checkpoints/mu0_small --out runs/expert_ee            # μ_0 traces (cached)
    ... --no-traces                                                   # the no-trace ablation
    ... --model ground_truth                                          # oracle traces (upper bound)

Traces are what the FROZEN μ_0 predicts for the demo frames (computed once through the runtime's
TracePipeline and cached beside the bags), never the sim's ground truth unless asked for. Trace
dropout (each trace with p=`--trace-dropout`, the whole set with p=`--set-dropout`) keeps the expert
usable when queries are missing. Normalisation statistics go into the checkpoint. Held-out episodes
(`--val-fraction`) give the validation loss; the best checkpoint is kept. `--export` writes
model.onnx and checks torch/onnxruntime parity.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from mu0_policy.experts.trace_policy import (TEXT_DIM, TRACE_FEATURES, ExpertCheckpointError, Normalization,
                                             TracePolicyConfig, build_net, export_expert_onnx, onnx_parity,
                                             save_expert_checkpoint)
from mu0_policy.training.expert_data import GT_MODEL, build_samples


def _stats(x: np.ndarray, floor: float):
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), floor)
    return mean.astype(np.float32), std.astype(np.float32)


def make_pipeline_factory(model: str, max_queries: int, queries: str, backend: str = "torch"):
    """A factory of fresh TracePipelines with the runtime's settings, sharing one predictor."""
    from mu0_policy.predictors import make_predictor
    from mu0_policy.runtime import PipelineConfig, TracePipeline

    predictor = make_predictor(model, backend=backend)
    return lambda: TracePipeline(predictor, PipelineConfig(queries=queries, max_queries=max_queries))


def train(args) -> Path:
    import torch
    from tqdm import tqdm

    from mu0_policy.experts.robot_config import load_robot_config

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)
    robot = load_robot_config(args.robot)
    bags = []
    for d in (x.strip() for x in str(args.bags).split(",") if x.strip()):
        if not Path(d).is_dir():
            raise ValueError(f"--bags: {d} is not a directory")
        bags += sorted(p for p in Path(d).iterdir() if (p / "episode.json").is_file())
    if args.tasks:
        wanted = {t if t.endswith("-v3") else f"{t}-v3" for t in args.tasks.split(",")}
        bags = [b for b in bags if json.loads((b / "episode.json").read_text())["task"] in wanted]
    if not bags:
        raise ValueError(f"--bags: no demo bags (directories with episode.json) in {args.bags}")
    model = args.model
    factory = None if model == GT_MODEL else make_pipeline_factory(model, args.max_queries, args.queries)
    interface = "ee_delta" if robot.command_interface == "ee_delta" else "joint"
    if args.action_space == "ee" and interface != "joint":
        raise ValueError(f"--action-space ee is for joint robots; {args.robot} commands {robot.command_interface}")
    horizon = args.horizon
    gripper_entities = [robot.gripper_entity, "hand"]
    t0 = time.time()
    data = build_samples(bags, robot, model, horizon, args.max_traces, args.trace_every, gripper_entities,
                         cache_dir=args.cache_dir, pipeline_factory=factory, progress=not args.no_progress,
                         gripper_query=not args.no_gripper_query, query_mode=args.queries,
                         action_space=args.action_space, state_velocity=args.state_velocity)
    prep_s = time.time() - t0
    from mu0_policy.model.text import shared_embedder

    text_emb = np.asarray(shared_embedder().embed(data.texts), np.float32)
    B, A = len(data), data.actions.shape[-1]
    episodes = np.unique(data.episode)
    n_val = max(1, int(round(len(episodes) * args.val_fraction))) if args.val_fraction > 0 else 0
    val_eps = set(rng.choice(episodes, n_val, replace=False).tolist()) if n_val else set()
    is_val = np.array([e in val_eps for e in data.episode])
    tr_idx, va_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    tr_p = None     # --balance tasks: each task drawn equally often, whatever its number of demo steps
    if args.balance == "tasks":
        ep_task = np.array([json.loads((b / "episode.json").read_text())["task"] for b in bags])
        tr_p = task_balanced_probabilities(ep_task[data.episode[tr_idx]])

    valid_traces = data.traces[data.mask]
    s_mean, s_std = _stats(data.state[tr_idx], 1e-3)
    t_mean, t_std = _stats(valid_traces if len(valid_traces) else np.zeros((2, TRACE_FEATURES)), 1e-3)
    a_flat = data.actions[tr_idx].reshape(-1, A)
    a_mean, a_std = _stats(a_flat, 1e-4)
    norm = Normalization(s_mean, s_std, t_mean, t_std, a_mean, a_std)
    cfg = TracePolicyConfig(robot=robot.robot, interface=interface, joint_names=list(robot.joint_names),
                            action_dim=int(A), state_dim=int(data.state.shape[1]), horizon=horizon,
                            control_dt=robot.control_dt, use_traces=not args.no_traces, head=args.head,
                            dim=args.dim, layers=args.layers, heads=4, max_traces=args.max_traces,
                            gripper_entities=gripper_entities, gripper_query=not args.no_gripper_query,
                            query_mode=args.queries, trace_model_id=_trace_model_id(model, args.no_traces),
                            action_space=args.action_space, self_filter=robot.self_filter_mode,
                            gripper_depth=robot.gripper_depth, hold_occluded=robot.self_filter_hold_frames,
                            ee_rotation=data.ee_rotation if args.action_space == "ee" else [],
                            state_velocity=bool(args.state_velocity))
    net = build_net(cfg)
    n_params = sum(p.numel() for p in net.parameters())

    state = torch.from_numpy((data.state - s_mean) / s_std)
    traces = torch.from_numpy(np.where(data.mask[..., None], (data.traces - t_mean) / t_std, 0.0).astype(np.float32))
    mask = torch.from_numpy(data.mask)
    is_gripper = torch.from_numpy(data.traces[..., -1] > 0.5)      # the trace tokens' gripper flag
    text = torch.from_numpy(text_emb[data.text_index])
    target = torch.from_numpy(((data.actions - a_mean) / a_std).reshape(B, -1).astype(np.float32))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

    def batch_mask(idx, train_mode):
        m = mask[idx]
        if not cfg.use_traces:
            return torch.zeros_like(m)
        if train_mode:
            keep = torch.rand(m.shape) >= args.trace_dropout
            whole = torch.rand(m.shape[0], 1) >= args.set_dropout
            # the gripper's own trace says where the hand goes next; dropped more often, the expert
            # has to read where the objects are (see --gripper-trace-dropout)
            hand = ~(is_gripper[idx] & (torch.rand(m.shape[0], 1) < args.gripper_trace_dropout))
            m = m & keep & whole & hand
        return m

    def val_loss():
        if len(va_idx) == 0:
            return float("nan")
        net.eval()
        with torch.no_grad():
            losses = []
            for i in range(0, len(va_idx), 1024):
                idx = torch.from_numpy(va_idx[i:i + 1024])
                if cfg.head == "regression":
                    pred = net(state[idx], text[idx], traces[idx], batch_mask(idx, False))
                else:
                    pred = net(state[idx], text[idx], traces[idx], batch_mask(idx, False), torch.randn(len(idx), target.shape[1]))
                losses.append(torch.nn.functional.l1_loss(pred, target[idx], reduction="sum").item())
        net.train()
        return sum(losses) / (len(va_idx) * target.shape[1])

    out = Path(args.out)
    best = float("inf")
    history = []
    bar = tqdm(range(args.steps), desc="train-expert", unit="step", disable=args.no_progress, mininterval=1 if sys.stderr.isatty() else 30)
    t1 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.from_numpy(rng.choice(tr_idx, args.batch_size, p=tr_p))
        s_in = state[idx] + args.state_noise * torch.randn(len(idx), state.shape[1])
        loss = net.loss(s_in, text[idx], traces[idx], batch_mask(idx, True), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            vl = val_loss()
            history.append({"step": step + 1, "train_loss": float(loss.item()), "val_l1": vl})
            bar.set_postfix(loss=f"{loss.item():.4f}", val_l1=f"{vl:.4f}")
            if not (vl > best):   # also saves when there is no validation split (nan)
                best = vl if vl == vl else best
                save_expert_checkpoint(out, net, cfg, norm, {
                    "bags": str(args.bags), "episodes": int(len(episodes)), "samples": int(B),
                    "val_episodes": int(n_val), "model": model, "steps": step + 1, "best_val_l1": vl,
                    "params": int(n_params), "args": {k: v for k, v in vars(args).items() if k != "func"},
                    "history": history, "prep_s": round(prep_s, 1), "train_s": round(time.time() - t1, 1)})
    train_s = time.time() - t1
    doc = json.loads((out / "config.json").read_text())
    doc["training"].update(history=history, train_s=round(train_s, 1), prep_s=round(prep_s, 1))
    (out / "config.json").write_text(json.dumps(doc, indent=1))
    print(f"trained {out}: {n_params} params, {B} samples from {len(episodes)} episodes, "
          f"best val L1 {best:.4f}, data {prep_s:.0f} s, training {train_s:.0f} s")
    if args.export:
        export_expert_onnx(out)
        err = onnx_parity(out)
        print(f"exported {out / 'model.onnx'}: torch vs onnxruntime max |diff| {err:.2e}")
        if err > 1e-3:
            raise ValueError(f"{out / 'model.onnx'}: parity check failed (max |diff| {err:.2e})")
    return out


def task_balanced_probabilities(sample_tasks) -> np.ndarray:
    """Sampling probabilities (sum 1) under which every task is drawn equally often: a task's
    samples share 1 / n_tasks."""
    _, inverse, counts = np.unique(np.asarray(sample_tasks), return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mu0 train-expert", description=__doc__.split("\n\n")[0])
    p.add_argument("--bags", required=True, help="directory of demo bags (mu0 record); several: DIR,DIR")
    p.add_argument("--robot", required=True, help="robot config YAML the expert will drive")
    p.add_argument("--model", default="checkpoints/mu0_small",
                   help="frozen μ_0 checkpoint (traces are predicted and cached), 'ground_truth', or baseline:<name>")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--tasks", default="", help="only these tasks (comma-separated)")
    p.add_argument("--no-traces", action="store_true", help="the no-trace ablation (same network, traces masked)")
    p.add_argument("--head", choices=("regression", "flow"), default="regression")
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--action-space", choices=("joint", "ee"), default="joint",
                   help="joint robots: predict joint offsets, or end-effector offsets that the arm's IK turns into "
                        "joint targets at run time")
    p.add_argument("--max-traces", type=int, default=32)
    p.add_argument("--max-queries", type=int, default=32)
    p.add_argument("--queries", default="objects", choices=("objects", "automatic", "grid"),
                   help="μ_0's query selection (the runtime's PipelineConfig.queries); recorded in the checkpoint")
    p.add_argument("--trace-every", type=int, default=8, help="sim steps between camera frames (8 = 10 Hz)")
    p.add_argument("--no-gripper-query", action="store_true",
                   help="do not ask μ_0 about the gripper where the kinematics puts it (automatic queries only)")
    p.add_argument("--cache-dir", default=None, help="where cached traces go (default: inside each bag)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--trace-dropout", type=float, default=0.2)
    p.add_argument("--set-dropout", type=float, default=0.05)
    p.add_argument("--gripper-trace-dropout", type=float, default=0.0,
                   help="probability per sample of also masking the gripper's own trace: an expert that "
                        "always has it learns to follow μ_0's predicted hand path and ignore the objects "
                        "(the puck's position moved its plan by <= 1 cm of 5)")
    p.add_argument("--state-noise", type=float, default=0.02, help="std of noise on normalised state inputs")
    p.add_argument("--state-velocity", action="store_true",
                   help="the expert's state also carries the arm's joint velocities (joint robots)")
    p.add_argument("--balance", choices=("samples", "tasks"), default="samples",
                   help="samples: every demo step equally likely (the bundled recipe); tasks: every task equally "
                        "likely per batch (tasks with fewer or shorter demos are not crowded out)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", action="store_true", help="write model.onnx and check parity")
    p.add_argument("--no-progress", action="store_true")
    return p


def _trace_model_id(model: str, no_traces: bool) -> str:
    """The model_id its traces will carry at run time, when the traces come from a μ_0 checkpoint
    directory ("" for ground truth, baselines and the no-trace ablation: nothing to check)."""
    if no_traces or model == GT_MODEL or not (Path(model) / "config.json").is_file():
        return ""
    from mu0_policy.model.checkpoint import read_config

    return read_config(model)[0].model_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (ValueError, ExpertCheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
