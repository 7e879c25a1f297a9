"""TraceExtract datasets (docs/interfaces.md "TraceExtract dataset") as torch batches.

A dataset is a directory with `index.json` and `shard-XXXXX.safetensors` files. Shards are
opened lazily (safetensors memory maps) and a few are kept open. The split decides which
samples a `TraceDataset` sees: "train" / "val" (held-out episodes of the training tasks) /
"heldout_tasks" / "all".

`write_trace_dataset` writes the same format; the training tests and the bench use it with
synthetic scenes (`synthetic_samples`), so the loader is exercised on contract-exact files
before real TraceExtract output exists.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from mu0_core.bspline import TraceNormalizer

FORMAT_VERSION = 1
SAMPLE_KEYS = {
    "color": (np.uint8, 3), "depth": (np.float16, 2), "intrinsics": (np.float32, 1),
    "query_mask": (np.bool_, 1), "query_uvz": (np.float32, 2), "query_xyz": (np.float32, 2),
    "entity_id": (np.int32, 1), "moving": (np.bool_, 1), "history_uvz": (np.float32, 3),
    "history_valid": (np.bool_, 2), "future_uvz": (np.float32, 3), "future_xyz": (np.float32, 3),
    "future_valid": (np.bool_, 2), "ctrl_norm": (np.float32, 3), "ctrl_valid": (np.bool_, 1),
    "episode_index": (np.int32, 0), "frame_index": (np.int32, 0),
}
SPLITS = ("train", "val", "heldout_tasks", "all")


class DatasetError(ValueError):
    """A dataset file or field is unusable; the message names both."""


def _first(d: dict, *names, default=None):
    for n in names:
        if n in d:
            return d[n]
    return default


class DatasetIndex:
    """Parsed index.json with per-sample provenance and the split."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / "index.json"
        if not path.is_file():
            raise DatasetError(f"{path}: file missing (not a TraceExtract dataset directory)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
        self.raw = d
        shards = d.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DatasetError(f"{path} field 'shards': expected a non-empty list")
        self.shard_files, self.shard_sizes = [], []
        for i, s in enumerate(shards):
            name = _first(s, "file", "path", "name") if isinstance(s, dict) else s
            count = _first(s, "num_samples", "samples", "count") if isinstance(s, dict) else None
            if not isinstance(name, str) or not isinstance(count, int):
                raise DatasetError(f"{path} field 'shards[{i}]': expected {{'file': str, 'num_samples': int}}")
            self.shard_files.append(self.root / name)
            self.shard_sizes.append(count)
        self.num_samples = int(sum(self.shard_sizes))
        norm = d.get("normalizer")
        if not isinstance(norm, dict):
            raise DatasetError(f"{path} field 'normalizer': expected the TraceNormalizer dict")
        try:
            self.normalizer = TraceNormalizer.from_dict(norm)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path} field 'normalizer': {exc}") from exc
        self.horizon = int(d.get("horizon", 32))
        self.history = int(d.get("history", 8))
        self.num_ctrl = int(d.get("num_ctrl", 10))
        self.step_period = float(d.get("step_period", 0.0125))
        samples = d.get("samples")
        n = self.num_samples
        if isinstance(samples, list):   # list of per-sample records
            if len(samples) != n:
                raise DatasetError(f"{path} field 'samples': {len(samples)} entries for {n} samples")
            self.captions = [str(_first(s, "caption", "instruction", default="")) for s in samples]
            self.tasks = [str(_first(s, "task", "task_name", default="")) for s in samples]
            self.episodes = [str(_first(s, "episode", "episode_id", default="")) for s in samples]
        else:                           # parallel per-sample lists
            self.captions = [str(c) for c in _first(d, "captions", "instructions", default=[""] * n)]
            self.tasks = [str(t) for t in _first(d, "task_names", "tasks", default=[""] * n)]
            self.episodes = [str(e) for e in _first(d, "episode_ids", "episodes", default=[""] * n)]
        for name, lst in (("captions", self.captions), ("task_names", self.tasks), ("episode_ids", self.episodes)):
            if len(lst) != n:
                raise DatasetError(f"{path} field '{name}': {len(lst)} entries for {n} samples")
        split = d.get("split", {}) or {}
        self.train_episodes = set(map(str, _first(split, "train_episodes", "train", default=[])))
        self.val_episodes = set(map(str, _first(split, "val_episodes", "val", default=[])))
        self.heldout_tasks = set(map(str, _first(split, "heldout_tasks", "held_out_tasks", "test_tasks", default=[])))

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        idx = np.arange(self.num_samples)
        if split == "all":
            return idx
        held = np.array([t in self.heldout_tasks for t in self.tasks], bool)
        if split == "heldout_tasks":
            return idx[held]
        val = np.array([e in self.val_episodes for e in self.episodes], bool)
        if split == "val":
            return idx[val & ~held]
        if self.train_episodes:
            train = np.array([e in self.train_episodes for e in self.episodes], bool)
            return idx[train & ~held & ~val]
        return idx[~held & ~val]


class TraceDataset(torch.utils.data.Dataset):
    """Samples of one split as dicts of numpy arrays plus 'caption'."""

    def __init__(self, root, split: str = "train", max_open_shards: int = 4):
        self.index = DatasetIndex(Path(root))
        self.indices = self.index.split_indices(split)
        self.split = split
        self._starts = np.cumsum([0] + self.index.shard_sizes)
        self._open: OrderedDict[int, object] = OrderedDict()
        self._max_open = max_open_shards

    def __len__(self):
        return len(self.indices)

    def _shard(self, s: int):
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        path = self.index.shard_files[s]
        if not path.is_file():
            raise DatasetError(f"{path}: shard file missing (listed in index.json)")
        f = safe_open(str(path), framework="numpy")
        missing = sorted(set(SAMPLE_KEYS) - set(f.keys()))
        if missing:
            raise DatasetError(f"{path}: missing tensor(s) {missing}")
        self._open[s] = f
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return f

    def __getitem__(self, i):
        g = int(self.indices[i])
        s = int(np.searchsorted(self._starts, g, side="right") - 1)
        f = self._shard(s)
        r = g - int(self._starts[s])
        item = {k: f.get_slice(k)[r:r + 1][0] for k in SAMPLE_KEYS}
        item["caption"] = self.index.captions[g]
        item["task"] = self.index.tasks[g]
        item["sample_index"] = g
        return item

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def collate(items: list[dict], image_hw: tuple[int, int] | None = None) -> dict:
    """Stack samples into torch tensors; image -> (B, 3, h, w) float [0, 1], depth (B, 1, h, w).

    Images are resized to `image_hw` (the model's input size) here, so the model never sees
    the dataset's resolution; normalised uv coordinates are unaffected by a resize.
    """
    out = {}
    color = torch.from_numpy(np.stack([it["color"] for it in items])).permute(0, 3, 1, 2).float() / 255.0
    depth = torch.from_numpy(np.stack([it["depth"] for it in items]).astype(np.float32))[:, None]
    if image_hw is not None and tuple(color.shape[-2:]) != tuple(image_hw):
        color = torch.nn.functional.interpolate(color, size=image_hw, mode="bilinear", align_corners=False,
                                                antialias=True)
        depth = resize_depth(depth, image_hw)
    out["image"], out["depth"] = color, depth
    for k in ("query_mask", "query_uvz", "entity_id", "moving", "history_uvz", "history_valid",
              "future_uvz", "future_xyz", "future_valid", "ctrl_norm", "ctrl_valid", "intrinsics"):
        out[k] = torch.from_numpy(np.stack([it[k] for it in items]))
    out["entity_id"] = out["entity_id"].long()
    out["captions"] = [it["caption"] for it in items]
    out["tasks"] = [it["task"] for it in items]
    out["sample_index"] = torch.tensor([it["sample_index"] for it in items])
    return out


def resize_depth(depth: torch.Tensor, hw) -> torch.Tensor:
    """Nearest-neighbour resize keeping NaN holes (averaging across a hole edge invents depth)."""
    return torch.nn.functional.interpolate(depth, size=tuple(hw), mode="nearest")


# --- writing (synthetic data for tests / benches, and any producer of the format) ------------

def write_trace_dataset(root, arrays: dict[str, np.ndarray], captions: list[str], tasks: list[str],
                        episodes: list[str], normalizer: TraceNormalizer, split: dict,
                        shard_size: int = 256, step_period: float = 0.0125) -> Path:
    """Write arrays (each with leading sample axis S) as shards + index.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(arrays["color"])
    shards = []
    for s, start in enumerate(range(0, n, shard_size)):
        name = f"shard-{s:05d}.safetensors"
        chunk = {k: np.ascontiguousarray(arrays[k][start:start + shard_size].astype(SAMPLE_KEYS[k][0]))
                 for k in SAMPLE_KEYS}
        save_file(chunk, str(root / name))
        shards.append({"file": name, "num_samples": int(len(chunk["color"]))})
    h, w = arrays["color"].shape[1:3]
    index = {
        "format_version": FORMAT_VERSION, "shards": shards, "captions": list(captions),
        "task_names": list(tasks), "episode_ids": list(episodes), "normalizer": normalizer.to_dict(),
        "image_size": [int(h), int(w)], "horizon": normalizer.horizon, "history": arrays["history_uvz"].shape[2],
        "num_ctrl": normalizer.num_ctrl, "step_period": step_period, "split": split,
    }
    (root / "index.json").write_text(json.dumps(index, indent=1))
    return root


SYNTH_TASKS = {
    "push the block left": np.array([-1.0, 0.0, 0.0]),
    "push the block right": np.array([1.0, 0.0, 0.0]),
    "lift the block up": np.array([0.0, -1.0, -0.3]),
    "pull the block closer": np.array([0.0, 0.6, -1.0]),
}


def synthetic_samples(num_episodes: int = 8, frames_per_episode: int = 8, image_hw=(48, 64),
                      num_queries: int = 16, tasks: dict | None = None, seed: int = 0,
                      horizon: int = 32, history: int = 8, num_ctrl: int = 10):
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
            uvz = np.stack([2 * (fx * xyz[..., 0] / xyz[..., 2] + cx + 0.5) / w - 1,
                            2 * (fy * xyz[..., 1] / xyz[..., 2] + cy + 0.5) / h - 1, xyz[..., 2]], -1)
            uvz = uvz.transpose(1, 0, 2).astype(np.float32)            # (Q, h+H+1, 3)
            xyz = xyz.transpose(1, 0, 2).astype(np.float32)
            inside = (np.abs(uvz[..., :2]) <= 1).all(-1)
            recs["color"].append(img)
            recs["depth"].append(depth.astype(np.float16))
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
    # moving: trace diameter (uv, depth weighted 0.1) above ~1% of the image width
    diam = np.linalg.norm((traces - traces[:, :, :1]) * np.array([1, 1, 0.1]), axis=-1).max(-1)
    arrays["moving"] = diam > 0.02
    return arrays, captions, task_list, episodes, normalizer


def write_synthetic_dataset(root, num_episodes=8, frames_per_episode=8, image_hw=(48, 64), num_queries=16,
                            seed=0, val_fraction=0.25, heldout_tasks=("pull the block closer",)) -> Path:
    arrays, captions, tasks, episodes, normalizer = synthetic_samples(
        num_episodes, frames_per_episode, image_hw, num_queries, seed=seed)
    eps = sorted(set(e for e, t in zip(episodes, tasks) if t not in heldout_tasks))
    n_val = max(1, int(round(len(eps) * val_fraction)))
    split = {"train_episodes": eps[:-n_val], "val_episodes": eps[-n_val:], "heldout_tasks": list(heldout_tasks)}
    return write_trace_dataset(root, arrays, captions, tasks, episodes, normalizer, split)
