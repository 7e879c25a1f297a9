"""TraceExtract dataset: training tuples from EpisodeTraces, staged per episode, packed into
safetensors shards + index.json (docs/dataset.md; the format is `mu0_core.trace_dataset`).

Writing is crash-safe: every file is written to a temporary name in the same directory and
renamed into place (atomic on POSIX), index.json last. A run is two phases:
1. per episode: `build_samples` -> `stage_episode` writes `episodes/<id>.safetensors` + `.json`;
2. `finalize`: fits the corpus TraceNormalizer, B-spline control points for every query, packs
   the shards and writes index.json. It is deterministic and cheap, so it simply re-runs after
   new episodes are staged.
"""
from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from mu0_core.bspline import TraceNormalizer, enough_valid_steps
from mu0_core.camera import arc_length_reparameterize
from mu0_core.query_geometry import history_model_input, normalized_to_pixels, pixels_to_normalized
from mu0_core.trace_dataset import (SAMPLE_KEYS, DatasetWriter, atomic_save_safetensors,  # noqa: F401
                                    atomic_write_bytes, atomic_write_json, sample_record)
from mu0_core.trace_spec import HISTORY_STEPS, HORIZON_STEPS, NUM_CTRL, STEP_PERIOD_S, TraceSpec
from mu0_perception import keypoints as kp
from mu0_perception.trace_extract import lift, resample
from mu0_perception.trace_extract.pipeline import EpisodeTraces

STAGE_DIR = "episodes"
KEYS = tuple(SAMPLE_KEYS)
PARAMETERIZATIONS = ("synchronous", "arc_length", "time")


@dataclass
class SampleConfig:
    max_queries: int = 64         # N: queries per sample (padded, query_mask)
    horizon: int = HORIZON_STEPS  # H future steps (H + 1 samples incl. the query)
    history: int = HISTORY_STEPS  # h past steps
    stride: int = 4               # a sample every `stride` frames
    moving_share: float = 0.75    # at most this share of the queries are moving points; rest static
    min_future_valid: int = NUM_CTRL   # a query needs >= this many valid future samples (= D) to be kept
    # "synchronous" (the authors' rule, trace_extract/resample.py): all tracks of a sample resampled
    # together, one step per `sync_interval` of the fastest points' progress, future and history;
    # "arc_length": each trace on its own at equal arc length (datasets before); "time": frames
    parameterization: str = "synchronous"
    sync_interval: float = 0.05           # progress per step in (u/W, v/H, z m)
    sync_top_fraction: float = 0.02       # fastest share of tracks that sets the progress
    sync_max_frames: int = 256            # source frames looked at on each side of the reference
    num_ctrl: int = NUM_CTRL
    seed: int = 0

    def __post_init__(self):
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        for name in ("max_queries", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _prefix_valid(v: np.ndarray) -> np.ndarray:
    """Keep only the contiguous valid run from step 0 (a trace stops at its first gap)."""
    return np.cumprod(v, axis=-1).astype(bool)


def _frame_window(tr: EpisodeTraces, t: int, cand, W: int, H: int, cfg: SampleConfig):
    """Frames t-h..t+H of the candidate tracks in reference camera t ("arc_length" / "time")."""
    T = tr.valid.shape[0]
    h, Hz = cfg.history, cfg.horizon
    steps = np.arange(t - h, t + Hz + 1)
    inside = (steps >= 0) & (steps < T)
    sc = np.clip(steps, 0, T - 1)
    P = tr.xyz_world[sc][:, cand]                      # (h+H+1, n, 3) world
    V = tr.valid[sc][:, cand] & inside[:, None]
    pc = lift.world_to_camera(np.nan_to_num(P), tr.T_world_cam[t])   # reference camera t
    uvp, z = lift.project(pc, tr.intrinsics)
    V &= z > 1e-3
    fut_v = _prefix_valid(V[h:].T)                     # (n, H+1)
    keep = fut_v.sum(1) >= min(cfg.min_future_valid, Hz + 1)
    mov = kp.movement_filter(np.moveaxis(uvp[h:], 0, 1), z[h:].T, fut_v, (W, H))
    return uvp, z, pc, V, fut_v, keep, mov


def _reference_tracks(tr: EpisodeTraces, frames, cand, t: int, W: int, H: int):
    """Tracks `cand` over `frames` in reference camera t: (uvz normalised (n, F, 3), metric (n, F, 3)
    = (u/W, v/H, z m), pixels (n, F, 2), valid (n, F))."""
    P = tr.xyz_world[frames][:, cand]
    pc = lift.world_to_camera(np.nan_to_num(P), tr.T_world_cam[t])
    uvp, z = lift.project(pc, tr.intrinsics)
    V = tr.valid[frames][:, cand] & (np.nan_to_num(z) > 1e-3)
    uvp, z = np.moveaxis(uvp, 0, 1), z.T
    uvz = np.concatenate([pixels_to_normalized(uvp, W, H), z[..., None]], -1)
    metric = np.concatenate([uvp / np.array([W, H], float), z[..., None]], -1)
    return uvz, metric, uvp, V.T


def _synchronous_sample(tr: EpisodeTraces, t: int, cand, W: int, H: int, cfg: SampleConfig):
    """One sample's tracks resampled synchronously (resample.py): future from frame t on and
    history from frame t backwards, each with its own progress. Returns (uvz (n, h+H+1, 3),
    xyz (n, h+H+1, 3), future valid (n, H+1), history valid (n, h), moving (n,), keep (n,)) or None."""
    T = tr.valid.shape[0]
    h, Hz = cfg.history, cfg.horizon
    fut_frames = np.arange(t, min(T, t + cfg.sync_max_frames))
    f_uvz, f_metric, f_px, f_v = _reference_tracks(tr, fut_frames, cand, t, W, H)
    fut, fut_v, plan = resample.synchronous_resample(f_metric, f_v, Hz + 1, values=f_uvz,
                                                     interval=cfg.sync_interval,
                                                     top_fraction=cfg.sync_top_fraction)
    keep = fut_v.sum(1) >= min(cfg.min_future_valid, Hz + 1)
    if not keep.any():
        return None
    # the one moving rule on the raw source frames (its first 64), as TraceExtract's filter
    mov = kp.movement_filter(f_px, f_uvz[..., 2], _prefix_valid(f_v), (W, H))
    hist = np.zeros((len(cand), h, 3))
    hist_v = np.zeros((len(cand), h), bool)
    if h > 0 and t > 0:
        back = np.arange(t, max(-1, t - cfg.sync_max_frames), -1)      # t, t-1, ...
        b_uvz, b_metric, _, b_v = _reference_tracks(tr, back, cand, t, W, H)
        hb, hb_v, _ = resample.synchronous_resample(b_metric, b_v, h + 1, values=b_uvz,
                                                    interval=cfg.sync_interval,
                                                    top_fraction=cfg.sync_top_fraction)
        hist, hist_v = hb[:, 1:][:, ::-1], hb_v[:, 1:][:, ::-1]        # chronological, oldest first
    uvz = np.concatenate([hist, fut], 1)
    uvz = np.where(np.concatenate([hist_v, fut_v], 1)[..., None], uvz, 0.0)
    px = normalized_to_pixels(uvz[..., :2], W, H)
    xyz = lift.deproject(px, uvz[..., 2], tr.intrinsics)
    return uvz, np.nan_to_num(xyz), fut_v, hist_v, mov, keep


def build_samples(tr: EpisodeTraces, color: np.ndarray, depth: np.ndarray, cfg: SampleConfig | None = None):
    """Training tuples of one episode in each reference camera (arrays without ctrl_norm).

    Returns (arrays dict with leading sample axis S, per-sample caption list of [task, segment])."""
    cfg = cfg or SampleConfig()
    intr = tr.intrinsics
    T, Nall = tr.valid.shape
    H, W = color.shape[1:3]
    Hz, h, N = cfg.horizon, cfg.history, cfg.max_queries
    rng = np.random.default_rng(cfg.seed + zlib.crc32(tr.episode_id.encode()))
    out = {k: [] for k in KEYS if k not in ("ctrl_norm", "ctrl_valid")}
    captions = []
    for t in range(0, T - 1, cfg.stride):
        cand = np.nonzero(tr.valid[t])[0]
        if len(cand) == 0:
            continue
        if cfg.parameterization == "synchronous":
            smp = _synchronous_sample(tr, t, cand, W, H, cfg)
            if smp is None:
                continue
            uvz, xyz, fv, hist_v, mov, keep = smp
        else:
            uvp, z, pc, V, fut_v, keep, mov = _frame_window(tr, t, cand, W, H, cfg)
            if not keep.any():
                continue
        idx_m = np.nonzero(keep & mov)[0]
        idx_s = np.nonzero(keep & ~mov)[0]
        n_m = min(len(idx_m), int(round(cfg.moving_share * N)))
        pick = np.concatenate([rng.permutation(idx_m)[:n_m],
                               rng.permutation(idx_s)[:N - n_m]])
        if len(pick) < N:  # too few static points: fill with remaining moving ones
            pick = np.concatenate([pick, rng.permutation(idx_m)[n_m:n_m + N - len(pick)]])
        n = len(pick)
        if cfg.parameterization == "synchronous":
            uvz, xyz, fv, hist_v = uvz[pick], xyz[pick], fv[pick], hist_v[pick]
        else:
            uvn = pixels_to_normalized(uvp[:, pick], W, H)     # (h+H+1, n, 2)
            uvz = np.concatenate([uvn, z[:, pick, None]], -1).transpose(1, 0, 2)   # (n, h+H+1, 3)
            xyz = pc[:, pick].transpose(1, 0, 2)
            fv = fut_v[pick]
            hist_v = V[:h, pick].T
        # the model's history input by the runtime's rule (finite, depth > 0) within the track's validity
        hist_uvz, hist_v = history_model_input(uvz[:, :h], hist_v)
        fut_uvz, fut_xyz = uvz[:, h:].copy(), xyz[:, h:].copy()
        if cfg.parameterization == "arc_length":
            for i in range(n):  # resample the valid prefix along its path; validity pattern kept
                L = int(fv[i].sum())
                if L >= 2:
                    fut_xyz[i, :L] = arc_length_reparameterize(fut_xyz[i, :L], None, L)
                    u2, z2 = lift.project(fut_xyz[i, :L], intr)
                    fut_uvz[i, :L] = np.concatenate([pixels_to_normalized(u2, W, H), z2[:, None]], -1)
        pad = N - n

        def padded(a, fill=0):
            return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a

        out["color"].append(color[t])
        out["depth"].append(depth[t].astype(np.float32))
        out["intrinsics"].append(intr.as_array())
        out["query_mask"].append(padded(np.ones(n, bool), False))
        out["query_uvz"].append(padded(fut_uvz[:, 0].astype(np.float32)))
        out["query_xyz"].append(padded(fut_xyz[:, 0].astype(np.float32)))
        out["entity_id"].append(padded(tr.entity_id[cand[pick]].astype(np.int32)))
        out["moving"].append(padded(mov[pick], False))
        out["history_uvz"].append(padded(hist_uvz))
        out["history_valid"].append(padded(hist_v, False))
        out["future_uvz"].append(padded(np.where(fv[..., None], fut_uvz, 0).astype(np.float32)))
        out["future_xyz"].append(padded(np.where(fv[..., None], fut_xyz, 0).astype(np.float32)))
        out["future_valid"].append(padded(fv, False))
        out["episode_index"].append(np.int32(0))
        out["frame_index"].append(np.int32(t))
        seg = next((s for s in tr.segments if s.start <= t < s.end), None)
        captions.append([tr.instruction or tr.task, seg.caption if seg else ""])
    arrays = {k: np.stack(v) for k, v in out.items()} if captions else {}
    return arrays, captions


def _safe_id(episode_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", episode_id)


def stage_episode(out_dir, tr: EpisodeTraces, arrays: dict, captions: list, extra: dict | None = None) -> dict:
    """Write one episode's samples to episodes/<id>.safetensors (+ .json); returns its summary."""
    d = Path(out_dir) / STAGE_DIR
    d.mkdir(parents=True, exist_ok=True)
    sid = _safe_id(tr.episode_id)
    info = dict(episode_id=tr.episode_id, task=tr.task, instruction=tr.instruction,
                num_samples=len(captions), captions=captions, coverage=tr.coverage,
                pose_source=tr.pose_source, num_tracks=int(tr.valid.shape[1]),
                num_moving=int(tr.moving.sum()), segments=[asdict(s) for s in tr.segments],
                captioner=tr.captioner, backbone=tr.backbone, timings=tr.timings, num_frames=int(tr.valid.shape[0]),
                **(extra or {}))
    if arrays:
        atomic_save_safetensors(d / f"{sid}.safetensors", arrays)
    atomic_write_json(d / f"{sid}.json", info)  # written last: its presence marks the stage done
    return info


def _split(episodes: list[dict], val_fraction: float, heldout_tasks: set) -> dict:
    train, val = [], []
    for e in episodes:
        if e["task"] in heldout_tasks:
            continue
        # a stable hash so re-running finalize keeps the split
        (val if (zlib.crc32(e["episode_id"].encode()) % 1000) < val_fraction * 1000 else train).append(e["episode_id"])
    return dict(train_episodes=train, val_episodes=val, heldout_tasks=sorted(heldout_tasks))


def finalize(out_dir, episode_ids: list[str] | None = None, shard_size: int = 256, val_fraction: float = 0.1,
             heldout_tasks=(), step_period: float = STEP_PERIOD_S, sample_config: SampleConfig | None = None,
             extract_config: dict | None = None) -> dict:
    """Pack staged episodes into shards with fitted control points and write index.json."""
    cfg = sample_config or SampleConfig()
    out = Path(out_dir)
    stage = out / STAGE_DIR
    infos = []
    for p in sorted(stage.glob("*.json")):
        info = json.loads(p.read_text())
        if episode_ids is not None and info["episode_id"] not in episode_ids:
            continue
        if info["num_samples"] > 0:
            infos.append(info)
    if not infos:
        raise ValueError(f"finalize: no staged episode with samples in {stage}")
    futs, vals, movs = [], [], []
    for info in infos:
        with safe_open(str(stage / f"{_safe_id(info['episode_id'])}.safetensors"), "numpy") as f:
            m = f.get_tensor("query_mask")
            futs.append(f.get_tensor("future_uvz")[m])
            vals.append(f.get_tensor("future_valid")[m])
            movs.append(f.get_tensor("moving")[m])
    # the per-axis scale over MOVING queries only (the authors': static points would shrink it)
    mov = np.concatenate(movs)
    use = mov if mov.any() else np.ones_like(mov)
    normalizer = TraceNormalizer.from_corpus(np.concatenate(futs)[use], np.concatenate(vals)[use],
                                             num_ctrl=cfg.num_ctrl)
    writer = DatasetWriter(out, shard_size)
    for ei, info in enumerate(infos):
        with safe_open(str(stage / f"{_safe_id(info['episode_id'])}.safetensors"), "numpy") as f:
            arr = {k: f.get_tensor(k) for k in f.keys()}
        fv = arr["future_valid"]
        ctrl = normalizer.encode(arr["future_uvz"], fv)
        arr["ctrl_valid"] = arr["query_mask"] & fv[..., 0] & enough_valid_steps(fv, cfg.num_ctrl)
        arr["ctrl_norm"] = np.where(arr["ctrl_valid"][..., None, None], ctrl, 0).astype(np.float32)
        arr["episode_index"] = np.full(len(arr["color"]), ei, np.int32)
        writer.add(arr, [sample_record(info["episode_id"], info["task"], int(frame), caps)
                         for frame, caps in zip(arr["frame_index"], info["captions"])])
    spec = TraceSpec(horizon=cfg.horizon, history=cfg.history, step_period=step_period, num_ctrl=cfg.num_ctrl)
    return writer.close(normalizer, _split(infos, val_fraction, set(heldout_tasks)), spec,
                        parameterization=cfg.parameterization, max_queries=cfg.max_queries,
                        normalizer_queries="moving" if mov.any() else "all",
                        episodes=[{k: i[k] for k in ("episode_id", "task", "instruction", "num_samples", "coverage",
                                                     "pose_source", "segments", "captioner")} for i in infos],
                        sample_config=asdict(cfg), extract_config=extract_config or {})
