"""The TraceExtract dataset format: the one writer, the one reader, the one index schema.

A dataset is a directory (docs/dataset.md "On-disk format"):
  ``shard-XXXXX.safetensors``  the samples, keys and dtypes of :data:`SAMPLE_KEYS` (no pickle);
  ``index.json``               :func:`write_index`'s schema, written last (its presence means done).
TraceExtract (`mu0_perception.trace_extract.dataset.finalize`) and the synthetic writer of the
training tests (`mu0_policy.training.data.write_trace_dataset`) both write through
:class:`DatasetWriter`; training, evaluation and the viewer read through :class:`DatasetReader`.

Every file is written to a temporary name in the same directory and renamed into place (atomic
on POSIX), so a killed writer leaves either the old file or the new one, never half of one.
Pure numpy + safetensors; imports nothing of ours outside mu0_core.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mu0_core.bspline import TraceNormalizer
from mu0_core.trace_spec import TraceSpec

# 2: depth is stored float32 (the runtime feeds the model float32 depth; float16 rounded it by
#    up to 1 mm at 1-2 m, a train/serve difference) and index.json has one schema (below).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# key -> (dtype, number of axes after the sample axis)
SAMPLE_KEYS = {
    "color": (np.uint8, 3), "depth": (np.float32, 2), "intrinsics": (np.float32, 1),
    "query_mask": (np.bool_, 1), "query_uvz": (np.float32, 2), "query_xyz": (np.float32, 2),
    "entity_id": (np.int32, 1), "moving": (np.bool_, 1), "history_uvz": (np.float32, 3),
    "history_valid": (np.bool_, 2), "future_uvz": (np.float32, 3), "future_xyz": (np.float32, 3),
    "future_valid": (np.bool_, 2), "ctrl_norm": (np.float32, 3), "ctrl_valid": (np.bool_, 1),
    "episode_index": (np.int32, 0), "frame_index": (np.int32, 0),
}
SPLITS = ("train", "val", "heldout_tasks", "all")
INDEX_FILE = "index.json"


class DatasetError(ValueError):
    """A dataset file or field is unusable; the message names both."""


# --- atomic files --------------------------------------------------------------------------------

def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def atomic_save_safetensors(path, arrays: dict, metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# --- writing -------------------------------------------------------------------------------------

def sample_record(episode: str, task: str, frame: int, captions: list[str]) -> dict:
    """One entry of index.json ``samples``: provenance and captions (top level first) of a sample."""
    captions = [str(c) for c in captions]
    if not captions:
        raise ValueError("captions: a sample needs at least its task-level caption")
    return {"episode": str(episode), "task": str(task), "frame": int(frame), "caption": captions[0],
            "captions": captions}


class DatasetWriter:
    """Packs samples into ``shard-XXXXX.safetensors`` of ``shard_size`` and writes index.json.

    ``add`` takes arrays with a leading sample axis (every key of :data:`SAMPLE_KEYS`, cast to its
    dtype) and one :func:`sample_record` per sample; ``close`` writes the last shard, index.json
    (last) and removes shards of a previous, larger packing of the same directory.
    """

    def __init__(self, root, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = int(shard_size)
        self.shards: list[dict] = []
        self.samples: list[dict] = []
        self.image_size: list[int] | None = None
        self._buf: dict[str, list] = {k: [] for k in SAMPLE_KEYS}
        self._n_buf = 0

    def add(self, arrays: dict, samples: list[dict]) -> None:
        missing = sorted(set(SAMPLE_KEYS) - set(arrays))
        if missing:
            raise ValueError(f"DatasetWriter.add: arrays miss {missing}")
        n = len(arrays["color"])
        if len(samples) != n:
            raise ValueError(f"DatasetWriter.add: {len(samples)} sample records for {n} samples")
        for k, (dtype, ndim) in SAMPLE_KEYS.items():
            if len(arrays[k]) != n or np.ndim(arrays[k]) != ndim + 1:
                raise ValueError(f"DatasetWriter.add: {k} must be ({n}, ...) with {ndim + 1} axes, "
                                 f"got shape {np.shape(arrays[k])}")
        if n and self.image_size is None:
            self.image_size = [int(x) for x in np.shape(arrays["color"])[1:3]]
        self.samples.extend(samples)
        start = 0
        while start < n:
            take = min(n - start, self.shard_size - self._n_buf)
            for k, (dtype, _) in SAMPLE_KEYS.items():
                self._buf[k].append(np.asarray(arrays[k][start:start + take]).astype(dtype, copy=False))
            self._n_buf += take
            start += take
            if self._n_buf >= self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if self._n_buf == 0:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        atomic_save_safetensors(self.root / name, {k: np.concatenate(v) for k, v in self._buf.items()},
                                metadata={"format_version": str(FORMAT_VERSION)})
        self.shards.append({"file": name, "num_samples": self._n_buf})
        self._buf, self._n_buf = {k: [] for k in SAMPLE_KEYS}, 0

    def close(self, normalizer: TraceNormalizer, split: dict, spec: TraceSpec, **extra) -> dict:
        """Write the last shard and index.json; returns the index. ``extra`` (JSON values) is
        recorded as is: the producer's provenance (TraceExtract: parameterization, max_queries,
        episodes, sample_config, extract_config)."""
        self._flush()
        if not self.shards:
            raise ValueError(f"DatasetWriter.close: no samples were added to {self.root}")
        index = write_index(self.root, self.shards, self.samples, normalizer, self.image_size, split, spec, **extra)
        keep = {s["file"] for s in self.shards}
        for stale in self.root.glob("shard-*.safetensors"):
            if stale.name not in keep:
                stale.unlink()
        return index


def write_index(root, shards: list[dict], samples: list[dict], normalizer: TraceNormalizer,
                image_size, split: dict, spec: TraceSpec, **extra) -> dict:
    """index.json, the one schema:

    ``format_version``, ``shards`` [{file, num_samples}], ``samples`` [:func:`sample_record`],
    ``normalizer`` (TraceNormalizer.to_dict), ``image_size`` [H, W], the trace spec (``horizon``,
    ``history``, ``num_ctrl``, ``step_period``), ``split`` {train_episodes, val_episodes,
    heldout_tasks}, then the producer's ``extra`` fields.
    """
    clash = sorted(set(extra) & {"format_version", "shards", "samples", "normalizer", "image_size", "horizon",
                                 "history", "num_ctrl", "step_period", "split"})
    if clash:
        raise ValueError(f"write_index: extra fields {clash} would overwrite the schema's own")
    split = {"train_episodes": [str(e) for e in split.get("train_episodes", [])],
             "val_episodes": [str(e) for e in split.get("val_episodes", [])],
             "heldout_tasks": [str(t) for t in split.get("heldout_tasks", [])]}
    index = dict(format_version=FORMAT_VERSION, shards=list(shards), samples=list(samples),
                 normalizer=normalizer.to_dict(), image_size=[int(x) for x in image_size],
                 horizon=spec.horizon, history=spec.history, num_ctrl=spec.num_ctrl,
                 step_period=spec.step_period, split=split, **extra)
    atomic_write_json(Path(root) / INDEX_FILE, index)
    return index


# --- reading -------------------------------------------------------------------------------------

class DatasetIndex:
    """Parsed index.json: shards, per-sample provenance, normaliser, trace spec and split."""

    def __init__(self, root):
        self.root = Path(root)
        path = self.root / INDEX_FILE
        self.path = path
        if not path.is_file():
            raise DatasetError(f"{path}: file missing (not a TraceExtract dataset directory)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise DatasetError(f"{path}: expected a JSON object")
        self.raw = d
        self.format_version = d.get("format_version")
        if self.format_version not in READABLE_VERSIONS:
            raise DatasetError(f"{path} field 'format_version': expected one of {READABLE_VERSIONS}, "
                               f"got {self.format_version!r}")
        shards = d.get("shards")
        if not isinstance(shards, list) or not shards:
            raise DatasetError(f"{path} field 'shards': expected a non-empty list")
        self.shard_files, self.shard_sizes = [], []
        for i, s in enumerate(shards):
            if not (isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("num_samples"), int)):
                raise DatasetError(f"{path} field 'shards[{i}]': expected {{'file': str, 'num_samples': int}}")
            self.shard_files.append(self.root / s["file"])
            self.shard_sizes.append(s["num_samples"])
        self.num_samples = int(sum(self.shard_sizes))
        norm = d.get("normalizer")
        if not isinstance(norm, dict):
            raise DatasetError(f"{path} field 'normalizer': expected the TraceNormalizer dict")
        try:
            self.normalizer = TraceNormalizer.from_dict(norm)
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path} field 'normalizer': {exc}") from exc
        try:
            self.spec = TraceSpec(horizon=int(d["horizon"]), history=int(d["history"]),
                                  step_period=float(d["step_period"]), num_ctrl=int(d["num_ctrl"]))
        except KeyError as exc:
            raise DatasetError(f"{path} field {exc}: missing (the trace spec of the dataset)") from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path} trace spec (horizon, history, step_period, num_ctrl): {exc}") from None
        self._read_samples(d, path)
        split = d.get("split")
        if not isinstance(split, dict):
            raise DatasetError(f"{path} field 'split': expected {{train_episodes, val_episodes, heldout_tasks}}")
        self.train_episodes = set(map(str, split.get("train_episodes", [])))
        self.val_episodes = set(map(str, split.get("val_episodes", [])))
        self.heldout_tasks = set(map(str, split.get("heldout_tasks", [])))

    # the dataset's trace spec, field by field (what a training run copies into its model config)
    @property
    def horizon(self) -> int:
        return self.spec.horizon

    @property
    def history(self) -> int:
        return self.spec.history

    @property
    def num_ctrl(self) -> int:
        return self.spec.num_ctrl

    @property
    def step_period(self) -> float:
        return self.spec.step_period

    def _read_samples(self, d: dict, path: Path) -> None:
        n = self.num_samples
        samples = d.get("samples")
        if isinstance(samples, list):
            if len(samples) != n:
                raise DatasetError(f"{path} field 'samples': {len(samples)} entries for {n} samples")
            try:
                self.captions = [str(s["caption"]) for s in samples]
                self.tasks = [str(s["task"]) for s in samples]
                self.episodes = [str(s["episode"]) for s in samples]
                self.sample_captions = [list(map(str, s.get("captions", [s["caption"]]))) for s in samples]
            except (KeyError, TypeError) as exc:
                raise DatasetError(f"{path} field 'samples': each entry needs episode, task, caption ({exc})") from None
        elif self.format_version == 1 and "captions" in d:
            # Read-only legacy layout: format_version 1 datasets written by the synthetic writer
            # (mu0_policy.training.data.write_trace_dataset) before the one schema kept the
            # per-sample fields as parallel lists `captions`, `task_names`, `episode_ids`.
            # Nothing writes this any more; it is read so existing test/bench datasets still load.
            try:
                self.captions = [str(c) for c in d["captions"]]
                self.tasks = [str(t) for t in d["task_names"]]
                self.episodes = [str(e) for e in d["episode_ids"]]
            except KeyError as exc:
                raise DatasetError(f"{path} field {exc}: missing (format_version 1 parallel lists)") from None
            self.sample_captions = [[c] for c in self.captions]
        else:
            raise DatasetError(f"{path} field 'samples': expected a list of per-sample records")
        for name, lst in (("captions", self.captions), ("tasks", self.tasks), ("episodes", self.episodes)):
            if len(lst) != n:
                raise DatasetError(f"{path} field 'samples' ({name}): {len(lst)} entries for {n} samples")

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


class DatasetReader:
    """Samples of one split as dicts of numpy arrays plus ``caption``, ``task``, ``sample_index``.

    Shards are opened lazily (safetensors memory maps) and at most ``max_open_shards`` are kept.
    """

    def __init__(self, root, split: str = "all", max_open_shards: int = 4):
        self.index = DatasetIndex(Path(root))
        self.indices = self.index.split_indices(split)
        self.split = split
        self._starts = np.cumsum([0] + self.index.shard_sizes)
        self._open: OrderedDict[int, object] = OrderedDict()
        self._max_open = max_open_shards

    @property
    def normalizer(self) -> TraceNormalizer:
        return self.index.normalizer

    def __len__(self) -> int:
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

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        g = int(self.indices[i])
        s = int(np.searchsorted(self._starts, g, side="right") - 1)
        f = self._shard(s)
        r = g - int(self._starts[s])
        item = {k: f.get_slice(k)[r:r + 1][0] for k in SAMPLE_KEYS}
        item["caption"] = self.index.captions[g]
        item["task"] = self.index.tasks[g]
        item["sample_index"] = g
        return item

    def captions(self, i: int) -> list[str]:
        """All captions of sample ``i`` of this split (task level first, then the segment's)."""
        return self.index.sample_captions[int(self.indices[i])]

    def __getstate__(self):  # DataLoader workers reopen shards themselves
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state
