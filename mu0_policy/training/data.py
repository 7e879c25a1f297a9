"""TraceExtract datasets (docs/dataset.md, docs/interfaces.md "TraceExtract dataset") as torch batches.

The format itself (shards, index.json, the reader and the writer) is `mu0_core.trace_dataset`;
this module adds the torch side: `TraceDataset` (a torch Dataset over one split) and `collate`
(samples -> the model's batch, resized with the same functions the predictors use at serving time).

`write_trace_dataset` writes the same format through the one writer; the training tests and the
bench use it with synthetic scenes (`synthetic_samples`), so the loader is exercised on
contract-exact files before real TraceExtract output exists.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mu0_core.bspline import TraceNormalizer
from mu0_core.frames import model_depth, model_image
from mu0_core.query_geometry import pixels_to_normalized
from mu0_core.trace_dataset import (FORMAT_VERSION, SAMPLE_KEYS, SPLITS, DatasetError, DatasetIndex,  # noqa: F401
                                    DatasetReader, DatasetWriter, sample_record)
from mu0_core.trace_spec import HISTORY_STEPS, HORIZON_STEPS, NUM_CTRL, STEP_PERIOD_S, TraceSpec


class TraceDataset(DatasetReader, torch.utils.data.Dataset):
    """Samples of one split ("train", "val" = held-out episodes of the training tasks,
    "heldout_tasks", "all") as dicts of numpy arrays plus 'caption', 'task', 'sample_index'."""

    def __init__(self, root, split: str = "train", max_open_shards: int = 4):
        DatasetReader.__init__(self, root, split, max_open_shards)


def collate(items: list[dict], image_hw: tuple[int, int] | None = None) -> dict:
    """Stack samples into torch tensors; image -> (B, 3, h, w) float [0, 1], depth (B, 1, h, w).

    Images are resized to `image_hw` (the model's input size) here, with `mu0_core.frames`'
    `model_image` / `model_depth` (what the predictors do to a served frame), so the model never
    sees the dataset's resolution; normalised uv coordinates are unaffected by a resize.
    """
    out = {}
    hw = image_hw if image_hw is not None else tuple(np.shape(items[0]["color"])[:2])
    out["image"] = torch.from_numpy(np.stack([model_image(it["color"], hw) for it in items]))
    out["depth"] = torch.from_numpy(np.stack([model_depth(it["depth"], hw) for it in items]))
    for k in ("query_mask", "query_uvz", "entity_id", "moving", "history_uvz", "history_valid",
              "future_uvz", "future_xyz", "future_valid", "ctrl_norm", "ctrl_valid", "intrinsics"):
        out[k] = torch.from_numpy(np.stack([it[k] for it in items]))
    out["entity_id"] = out["entity_id"].long()
    out["captions"] = [it["caption"] for it in items]
    out["tasks"] = [it["task"] for it in items]
    out["sample_index"] = torch.tensor([it["sample_index"] for it in items])
    return out


# --- writing (synthetic data for tests / benches, and any producer of the format) ------------

def write_trace_dataset(root, arrays: dict[str, np.ndarray], captions: list[str], tasks: list[str],
                        episodes: list[str], normalizer: TraceNormalizer, split: dict,
                        shard_size: int = 256, step_period: float = STEP_PERIOD_S) -> Path:
    """Write arrays (each with leading sample axis S) as shards + index.json (the one writer)."""
    root = Path(root)
    writer = DatasetWriter(root, shard_size)
    frames = arrays["frame_index"]
    writer.add(arrays, [sample_record(e, t, int(f), [c]) for c, t, e, f in zip(captions, tasks, episodes, frames)])
    spec = TraceSpec(horizon=normalizer.horizon, history=int(arrays["history_uvz"].shape[2]),
                     step_period=step_period, num_ctrl=normalizer.num_ctrl)
    writer.close(normalizer, split, spec)
    return root


SYNTH_TASKS = {
    "push the block left": np.array([-1.0, 0.0, 0.0]),
    "push the block right": np.array([1.0, 0.0, 0.0]),
    "lift the block up": np.array([0.0, -1.0, -0.3]),
    "pull the block closer": np.array([0.0, 0.6, -1.0]),
}


def synthetic_samples(num_episodes: int = 8, frames_per_episode: int = 8, image_hw=(48, 64),
                      num_queries: int = 16, tasks: dict | None = None, seed: int = 0,
                      horizon: int = HORIZON_STEPS, history: int = HISTORY_STEPS, num_ctrl: int = NUM_CTRL):
    """Scenes with a coloured block on a table moving as the instruction says (plus static
    background points), rendered as RGB-D with pinhole intrinsics. The motion direction is only
    knowable from the instruction and the block's colour/position: a model that ignores them
    cannot beat constant velocity at the start of a motion.

    Returns (arrays, captions, tasks, episodes, normalizer).
    """
    rng = np.random.default_rng(seed)
    tasks = tasks or SYNTH_TASKS
    names = list(tasks)
    h, w = image_hw
    fx = fy = 0.9 * w
    cx, cy = (w - 1) / 2, (h - 1) / 2
    total = horizon + history + frames_per_episode + 1
    recs = {k: [] for k in SAMPLE_KEYS}
    captions, task_list, episodes, all_traces, all_valid = [], [], [], [], []
    for e in range(num_episodes):
        task = names[e % len(names)]
        direction = tasks[task]
        start = np.array([rng.uniform(-0.12, 0.12), rng.uniform(-0.05, 0.08), rng.uniform(0.75, 0.95)])
        speed = rng.uniform(0.002, 0.004)
        onset = rng.integers(history, history + frames_per_episode)   # block starts moving here
        steps = np.arange(total)
        disp = np.clip(steps - onset, 0, None)[:, None] * speed * direction[None]
        centre = start[None] + disp                                   # (T, 3) camera xyz
        size = 0.05
        offsets = rng.uniform(-size / 2, size / 2, (num_queries // 2, 3)) * np.array([1, 1, 0])
        obj = centre[:, None] + offsets[None]                         # (T, Q1, 3)
        bg = np.stack([rng.uniform(-0.3, 0.3, num_queries - len(offsets)),
                       rng.uniform(-0.2, 0.2, num_queries - len(offsets)),
                       np.full(num_queries - len(offsets), 1.1)], -1)
        pts = np.concatenate([obj, np.repeat(bg[None], total, 0)], 1)  # (T, Q, 3)
        colour = rng.integers(60, 255, 3)
        for f in range(frames_per_episode):
            t = history + f
            img = np.zeros((h, w, 3), np.uint8)
            img[:] = (90, 70, 50)
            depth = np.full((h, w), 1.1, np.float32)
            c = centre[t]
            u0 = fx * (c[0] - size / 2) / c[2] + cx
            u1 = fx * (c[0] + size / 2) / c[2] + cx
            v0 = fy * (c[1] - size / 2) / c[2] + cy
            v1 = fy * (c[1] + size / 2) / c[2] + cy
            ui0, ui1 = int(max(np.floor(u0), 0)), int(min(np.ceil(u1), w))
            vi0, vi1 = int(max(np.floor(v0), 0)), int(min(np.ceil(v1), h))
            img[vi0:vi1, ui0:ui1] = colour
            depth[vi0:vi1, ui0:ui1] = c[2]
            depth[rng.random((h, w)) < 0.02] = np.nan
            xyz = pts[t - history:t + horizon + 1]                     # (h + H + 1, Q, 3)
            px = np.stack([fx * xyz[..., 0] / xyz[..., 2] + cx, fy * xyz[..., 1] / xyz[..., 2] + cy], -1)
            uvz = np.concatenate([pixels_to_normalized(px, w, h), xyz[..., 2:]], -1)
            uvz = uvz.transpose(1, 0, 2).astype(np.float32)            # (Q, h+H+1, 3)
            xyz = xyz.transpose(1, 0, 2).astype(np.float32)
            inside = (np.abs(uvz[..., :2]) <= 1).all(-1)
            recs["color"].append(img)
            recs["depth"].append(depth)
            recs["intrinsics"].append(np.array([fx, fy, cx, cy], np.float32))
            recs["query_mask"].append(np.ones(num_queries, bool))
            recs["query_uvz"].append(uvz[:, history])
            recs["query_xyz"].append(xyz[:, history])
            ent = np.array([0] * len(offsets) + [1] * (num_queries - len(offsets)), np.int32)
            recs["entity_id"].append(ent)
            recs["history_uvz"].append(uvz[:, :history])
            recs["history_valid"].append(inside[:, :history])
            recs["future_uvz"].append(uvz[:, history:])
            recs["future_xyz"].append(xyz[:, history:])
            recs["future_valid"].append(inside[:, history:])
            recs["episode_index"].append(np.int32(e))
            recs["frame_index"].append(np.int32(t))
            captions.append(task)
            task_list.append(task)
            episodes.append(f"ep{e:04d}")
            all_traces.append(uvz[:, history:])
            all_valid.append(inside[:, history:])
    arrays = {k: np.stack(v) for k, v in recs.items() if v}
    traces = np.stack(all_traces)
    valid = np.stack(all_valid)
    normalizer = TraceNormalizer.from_corpus(traces, valid, num_ctrl=num_ctrl)
    arrays["ctrl_norm"] = normalizer.encode(traces, valid)
    arrays["ctrl_valid"] = valid[..., 0] & (valid.sum(-1) >= num_ctrl)
    # moving: the one rule (mu0_core.metrics.moving_mask: diameter of (u px, v px, 0.1 z m) > 5 %
    # of the image diagonal) in this image's pixels
    from mu0_core.metrics import moving_mask

    arrays["moving"] = moving_mask(traces.reshape(-1, *traces.shape[2:]), valid.reshape(-1, valid.shape[-1]),
                                   (w, h)).reshape(traces.shape[:2])
    return arrays, captions, task_list, episodes, normalizer


def write_synthetic_dataset(root, num_episodes=8, frames_per_episode=8, image_hw=(48, 64), num_queries=16,
                            seed=0, val_fraction=0.25, heldout_tasks=("pull the block closer",)) -> Path:
    arrays, captions, tasks, episodes, normalizer = synthetic_samples(
        num_episodes, frames_per_episode, image_hw, num_queries, seed=seed)
    eps = sorted(set(e for e, t in zip(episodes, tasks) if t not in heldout_tasks))
    n_val = max(1, int(round(len(eps) * val_fraction)))
    split = {"train_episodes": eps[:-n_val], "val_episodes": eps[-n_val:], "heldout_tasks": list(heldout_tasks)}
    return write_trace_dataset(root, arrays, captions, tasks, episodes, normalizer, split)
