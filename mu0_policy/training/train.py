"""Train μ_0 on a TraceExtract dataset.

    python -m mu0_policy.training.train --data DATA_DIR --out checkpoints/run --preset small --steps 3000

Single process on CPU/GPU, or unchanged under `torchrun --nproc_per_node=G -m mu0_policy.training.train
...` (DDP; rank 0 logs, evaluates and writes checkpoints). Checkpoints are model.safetensors +
config.json (+ trainer_state.safetensors for --resume). Periodic evaluation reports the
validation loss and top-1 minADE@H (uvz) of one flow sample against constant velocity.

As the authors train (issue #15): each training sample keeps a random N ~ U[1, #moving] of its
MOVING queries (`--queries moving`, default; static queries never enter the loss), the history is
dropped for 50 % of the samples and 30 % of the queries (`--history-drop-sample/-query`), and
the per-axis trace scale is the 95th percentile over moving queries (`--normalizer moving`,
default: refitted from the train split when the dataset's own normaliser was fitted on all
queries, and the control-point targets re-encoded with it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mu0_policy.model.checkpoint import read_config, save_checkpoint
from mu0_policy.model.config import PRESETS, Mu0Config, preset
from mu0_policy.model.checkpoint import CheckpointError
from mu0_core.bspline import TraceNormalizer
from mu0_policy.training.augment import (HISTORY_DROP_QUERY, HISTORY_DROP_SAMPLE, history_dropout,
                                         moving_query_subset)
from mu0_policy.training.data import DatasetError, TraceDataset, collate

STATE_FILE = "trainer_state.safetensors"


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mu0 train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="TraceExtract dataset directory (index.json + shards)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Mu0Config field (JSON value), e.g. --set expert_layers=6")
    p.add_argument("--raw-waypoints", action="store_true", help="no-B-spline ablation (use_bspline=False)")
    p.add_argument("--vlm-path", default="", help="local SmolVLM2/Idefics3 directory (preset full)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for forward/loss (GPU training)")
    p.add_argument("--resume", action="store_true", help="continue from --out's trainer_state.safetensors")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--queries", default="moving", choices=("moving", "all"),
                   help="moving (default, the authors'): N ~ U[1, #moving] moving queries per sample; "
                        "all: every query of the sample (the behaviour before issue #15)")
    p.add_argument("--history-drop-sample", type=float, default=HISTORY_DROP_SAMPLE,
                   help="probability of withholding a whole sample's history (authors: 0.5; 0 = never)")
    p.add_argument("--history-drop-query", type=float, default=HISTORY_DROP_QUERY,
                   help="probability of withholding one query's history (authors: 0.3; 0 = never)")
    p.add_argument("--normalizer", default="moving", choices=("moving", "dataset"),
                   help="moving (default): trace scale over moving queries (refitted from the train split "
                        "if the dataset's was fitted on all queries); dataset: the dataset's as is")
    p.add_argument("--rank-weights-dir", default="",
                   help="check: every rank writes its final weights to DIR/rank<r>.safetensors "
                        "(under DDP they must be identical: gradients are synchronised)")
    return p


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_setup():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return dist.get_rank(), world, local


def moving_normalizer(dataset: TraceDataset, num_ctrl: int, max_samples: int = 20000,
                      seed: int = 0) -> TraceNormalizer:
    """The dataset normaliser refitted on the moving queries of ``dataset`` (all of it, or a
    random ``max_samples`` of its samples)."""
    idx = np.arange(len(dataset))
    if len(idx) > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_samples, replace=False))
    futs, vals = [], []
    for i in idx:
        it = dataset[int(i)]
        m = np.asarray(it["query_mask"], bool) & np.asarray(it["moving"], bool)
        futs.append(np.asarray(it["future_uvz"])[m])
        vals.append(np.asarray(it["future_valid"])[m])
    fut = np.concatenate(futs) if futs else np.zeros((0,))
    if fut.size == 0:
        raise DatasetError(f"{dataset.index.root}: no moving query in the train split (the normaliser needs some)")
    base = dataset.index.normalizer
    return TraceNormalizer.from_corpus(fut, np.concatenate(vals), num_ctrl=num_ctrl, percentile=base.percentile,
                                       clip=base.clip, ridge=base.ridge)


def normalizer_queries(dataset: TraceDataset) -> str:
    """Which queries the dataset's own normaliser was fitted on ("moving" or "all")."""
    return str(dataset.index.raw.get("normalizer_queries", "all"))


def dataset_parameterization(dataset: TraceDataset) -> str:
    """How the dataset's steps were resampled (TraceExtract's provenance in index.json): the
    runtime must build the query history by the same rule (mu0_perception.query_history).
    Datasets without the field were written before it existed, with per-trace arc length."""
    return str(dataset.index.raw.get("parameterization", "arc_length"))


class BatchBuilder:
    """Collate + instruction embeddings (cached per caption) or VLM prompt ids; re-encodes the
    control-point targets when the model's normaliser is not the dataset's."""

    def __init__(self, cfg: Mu0Config, model=None, dataset_normalizer: TraceNormalizer | None = None):
        self.cfg = cfg
        self.encoder = None
        if cfg.normalizer and dataset_normalizer is not None:
            mine = TraceNormalizer.from_dict(cfg.normalizer)
            if not np.allclose(mine.scale, dataset_normalizer.scale, rtol=1e-6, atol=0):
                self.encoder = mine
        self.hw = (cfg.image_height, cfg.image_width)
        self.embedder = None
        self.tokenizer = None
        if cfg.backbone == "compact":
            from mu0_policy.model.text import shared_embedder
            self.embedder = shared_embedder()
        else:
            from transformers import AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.vlm_path, local_files_only=True)
            self.backbone = model.backbone

    def __call__(self, items):
        batch = collate(items, self.hw)
        if self.encoder is not None:
            ctrl = self.encoder.encode(batch["future_uvz"].numpy(), batch["future_valid"].numpy())
            batch["ctrl_norm"] = torch.from_numpy(ctrl) * batch["ctrl_valid"][..., None, None]
        if self.embedder is not None:
            batch["text_emb"] = torch.from_numpy(self.embedder.embed(batch["captions"]))
        else:
            batch["input_ids"], batch["attention_mask"] = self.backbone.build_prompt_ids(self.tokenizer, batch["captions"])
        return batch


def to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def lr_at(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def evaluate_model(model, loader, device, max_batches: int, seed: int = 0) -> dict:
    """Validation loss + top-1 minADE@H over moving valid points, model vs constant velocity."""
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    losses, ade_model, ade_cv = [], [], []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        batch = to_device(batch, device)
        loss, _ = model.loss(batch)
        losses.append(float(loss))
        ctx = model.encode(batch["image"], batch["depth"], batch["query_uvz"], batch["query_mask"],
                           batch["history_uvz"], batch["history_valid"], text_emb=batch.get("text_emb"),
                           input_ids=batch.get("input_ids"), attention_mask=batch.get("attention_mask"))
        b, n = batch["query_mask"].shape
        noise = torch.randn((b, 1, n, model.cfg.num_points, 3), generator=gen).to(device)
        pts, _ = model.sample_from_context(ctx, noise)
        samples, _ = model.points_to_samples(pts[:, 0], batch["query_uvz"])
        gt, valid = batch["future_uvz"], batch["future_valid"] & batch["query_mask"][..., None]
        sel = batch["moving"] & batch["query_mask"] & valid[..., 1:].any(-1)
        hist_last = batch["history_uvz"][:, :, -1]
        ok_last = batch["history_valid"][:, :, -1]
        vel = torch.where(ok_last[..., None], batch["query_uvz"] - hist_last, torch.zeros_like(hist_last))
        cv = batch["query_uvz"][:, :, None] + torch.arange(gt.shape[2], device=device)[None, None, :, None] * vel[:, :, None]
        for pred, store in ((samples, ade_model), (cv, ade_cv)):
            err = (pred - torch.nan_to_num(gt)).norm(dim=-1)
            per = (err * valid).sum(-1) / valid.sum(-1).clamp_min(1)
            if bool(sel.any()):
                store.append(per[sel].cpu())
    model.train()
    cat = lambda xs: float(torch.cat(xs).mean()) if xs else float("nan")  # noqa: E731
    return {"val_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_ade_uvz": cat(ade_model), "val_ade_uvz_const_vel": cat(ade_cv)}


def save_trainer_state(out: Path, optimizer, step: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for idx, st in optimizer.state_dict()["state"].items():
        for name, value in st.items():
            tensors[f"{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["__step__"] = torch.tensor(step)
    return tensors


def load_trainer_state(path: Path, optimizer) -> int:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    state = {}
    for key, value in tensors.items():
        if key == "__step__":
            continue
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    return int(tensors["__step__"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, world, local = distributed_setup()
    device = torch.device(f"cuda:{local}" if (local is not None and torch.cuda.is_available()) else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed + rank)
    out = Path(args.out)

    try:
        train_set = TraceDataset(args.data, "train")
        val_set = TraceDataset(args.data, "val")
        if args.resume:
            read_config(out)
    except (DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(train_set) == 0:
        print(f"error: {args.data}: the train split is empty", file=sys.stderr)
        return 2
    if args.resume:
        cfg, doc = read_config(out)
    else:
        overrides = parse_overrides(args.set)
        if args.raw_waypoints:
            overrides["use_bspline"] = False
        if args.vlm_path:
            overrides["vlm_path"] = args.vlm_path
        idx = train_set.index
        overrides.setdefault("horizon", idx.horizon)
        overrides.setdefault("history", idx.history)
        overrides.setdefault("num_ctrl", idx.num_ctrl)
        overrides.setdefault("step_period", idx.step_period)
        norm = idx.normalizer
        if args.normalizer == "moving" and normalizer_queries(train_set) != "moving":
            try:
                norm = moving_normalizer(train_set, idx.num_ctrl, seed=args.seed)
            except DatasetError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if rank == 0:
                print(f"normaliser refitted on moving queries: scale {np.round(idx.normalizer.scale, 4).tolist()} "
                      f"-> {np.round(norm.scale, 4).tolist()}", file=sys.stderr)
        cfg = preset(args.preset, normalizer=norm.to_dict(), **overrides)

    from mu0_policy.model.mu0 import Mu0Model

    model = Mu0Model(cfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    start = 0
    if args.resume:
        from safetensors.torch import load_file
        state = load_file(str(out / "model.safetensors"))
        model.load_state_dict(state, strict=False)
        start = load_trainer_state(out / STATE_FILE, optimizer)
        seed_everything(args.seed + rank + 1000003 * start)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)

    builder = BatchBuilder(cfg, model, train_set.index.normalizer)
    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, seed=args.seed) if world > 1 else None)
    gen = torch.Generator().manual_seed(args.seed + rank)
    aug_gen = torch.Generator().manual_seed(args.seed + rank + 7919 * (start + 1))   # query subsets, dropout
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None,
                                         sampler=sampler, collate_fn=builder, num_workers=args.workers,
                                         drop_last=len(train_set) >= args.batch_size, generator=gen)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False,
                                             collate_fn=builder, num_workers=0) if len(val_set) else None

    n_params = sum(p.numel() for p in trainable)
    history: list[dict] = []
    progress = None
    if rank == 0 and not args.quiet:
        from tqdm import tqdm
        progress = tqdm(total=args.steps, initial=start, desc=f"train {cfg.model_id}", dynamic_ncols=True)
        print(f"model {cfg.model_id}: {n_params / 1e6:.2f}M trainable parameters, "
              f"{len(train_set)} train / {len(val_set)} val samples, device {device}", file=sys.stderr)

    def checkpoint(step):
        if rank != 0:
            return
        training = {"steps": step, "total_steps": args.steps, "seed": args.seed, "data": str(args.data),
                    "preset": args.preset, "batch_size": args.batch_size * world, "lr": args.lr,
                    "argv": list(argv) if argv is not None else sys.argv[1:], "history": history,
                    "queries": args.queries, "normalizer": args.normalizer,
                    "parameterization": dataset_parameterization(train_set),
                    "history_dropout": {"sample": args.history_drop_sample, "query": args.history_drop_query},
                    "train_seconds": round(time.time() - t0 + prior_seconds, 1)}
        save_checkpoint(out, model, cfg, training,
                        extra_tensors=save_trainer_state(out, optimizer, step), extra_name=STATE_FILE)

    prior_seconds = 0.0
    if args.resume:
        prior_training = read_config(out)[1].get("training") or {}
        prior_seconds = float(prior_training.get("train_seconds", 0.0))
        history = list(prior_training.get("history", []))
    t0 = time.time()
    step, epoch = start, 0
    net.train()
    while step < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            if step >= args.steps:
                break
            weight = 1.0
            if args.queries == "moving":
                sub = moving_query_subset(batch, aug_gen)
                if sub is None:            # no moving query in the whole batch
                    if world == 1:
                        continue
                    weight = 0.0           # DDP: every rank must step; this one adds no gradient
                else:
                    batch = sub
            if args.history_drop_sample > 0 or args.history_drop_query > 0:
                batch = history_dropout(batch, args.history_drop_sample, args.history_drop_query, aug_gen)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss, info = net(batch)   # Mu0Model.forward is the loss, so DDP's gradient hooks fire
                loss = loss * weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{info['loss']:.3f}", flow=f"{info['flow']:.3f}")
            if rank == 0 and val_loader is not None and (step % args.eval_every == 0 or step == args.steps):
                metrics = evaluate_model(model, val_loader, device, args.eval_batches, seed=args.seed)
                metrics.update(step=step, train_loss=info["loss"])
                history.append({k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()})
                msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
                (progress.write if progress is not None else print)(f"eval {msg}")
            if step % args.save_every == 0 or step == args.steps:
                checkpoint(step)
        epoch += 1
    if progress is not None:
        progress.close()
    if rank == 0:
        print(f"saved {out} after {step} steps ({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.rank_weights_dir:
        from safetensors.torch import save_file
        Path(args.rank_weights_dir).mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(Path(args.rank_weights_dir) / f"rank{rank}.safetensors"))
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
