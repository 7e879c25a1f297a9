"""The runtime's query history under each training parameterisation (issue #15, item 1).

What history step j means depends on how the model's training data was resampled
(`mu0_perception.trace_extract.resample`):

- ``"time"`` / ``"arc_length"`` (the datasets written before): the history is one step per source
  frame, so the runtime builds it by time: `mu0_perception.query_select.QueryHistory`, step j at
  ``now - (steps - j) * step_period``.
- ``"synchronous"`` (the default for new datasets): all tracks of a sample are resampled together
  by the scene's motion, walking backwards from the reference frame; a step is ``SYNC_INTERVAL`` of
  progress of the fastest ``SYNC_TOP_FRACTION`` of the tracks in (u/W, v/H, z m), not a time.
  `SynchronousQueryHistory` rebuilds exactly that from the frames the runtime has seen, so a model
  trained on a synchronous dataset gets at runtime the history it was trained on.

`make_query_history` picks the class for a parameterisation, `history_parameterization` reads the
parameterisation a checkpoint was trained on (its config.json ``training`` dict, written by
`mu0_policy.training.train`). Pure numpy; no ROS.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from mu0_core.trace_spec import HISTORY_STEPS
from mu0_perception.query_select import QueryHistory
from mu0_perception.trace_extract import resample
from mu0_perception.trace_extract.resample import SYNC_INTERVAL, SYNC_TOP_FRACTION

# The parameterisations a TraceExtract dataset can carry (trace_extract/dataset.py PARAMETERIZATIONS;
# repeated here so the runtime does not import the dataset writer and its I/O stack).
HISTORY_PARAMETERIZATIONS = ("synchronous", "arc_length", "time")
# What a dataset (and so a checkpoint) without a recorded parameterisation was resampled with:
# per-trace arc length, the rule before the synchronous one existed.
LEGACY_PARAMETERIZATION = "arc_length"
# Source frames the training side walks back from the reference frame
# (trace_extract.dataset.SampleConfig.sync_max_frames); keeping as many makes every step that
# training can reach reachable here too.
SYNC_MAX_FRAMES = 256
# TraceExtract's depth validity (trace_extract/dataset.py `_reference_tracks`: z > 1e-3 m).
MIN_DEPTH_M = 1e-3


@dataclass
class _Frame:
    stamp_ns: int
    ids: np.ndarray     # (n,) int64, sorted (searchsorted lookups)
    uvz: np.ndarray     # (n, 3) float64, rows in the order of `ids`; NaN rows = no depth


class SynchronousQueryHistory:
    """Per-frame query observations -> the model's (N, steps, 3) history, resampled synchronously.

    Same interface as `QueryHistory`. ``add`` records one processed frame (u, v normalised to
    [-1, 1] by `mu0_core.query_geometry.pixels_to_normalized`, z in metres; a NaN row = the query
    had no depth in that frame). ``history`` mirrors the history branch of TraceExtract's
    `_synchronous_sample` (trace_extract/dataset.py): the reference is the newest frame at or
    before ``now_ns``; the tracks are every query valid in it (the "scene", whichever subset is
    asked about, as training computes the progress over all candidate tracks and picks the sample's
    queries afterwards); walking back frame by frame, each track is valid until its first frame
    without it (not added, NaN, or depth <= 1 mm); `resample.synchronous_resample` places step k at
    k * ``interval`` of progress and steps 1..steps, oldest first, are the history; a step the
    progress does not reach, or that needs a frame past a track's valid run, is NaN (invalid: the
    predictor masks it). A static scene therefore has no valid history step, as in training.

    ``step_period`` is not used (a step is progress, not time); it is checked like
    `QueryHistory`'s so the two classes fail on the same calls. The reference camera of every
    frame is taken to be the current one (training re-projects into camera t): exact for a static
    camera, as `QueryHistory` assumes.
    """

    def __init__(self, max_frames: int = SYNC_MAX_FRAMES, forget_after_ns: int = 2_000_000_000,
                 interval: float = SYNC_INTERVAL, top_fraction: float = SYNC_TOP_FRACTION):
        if int(max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not (np.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be > 0, got {interval}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.max_frames = int(max_frames)
        self.forget_after_ns = int(forget_after_ns)
        self.interval = float(interval)
        self.top_fraction = float(top_fraction)
        self._frames: deque[_Frame] = deque(maxlen=self.max_frames)

    def __len__(self) -> int:
        """Query ids with at least one kept observation (as `QueryHistory`: ids tracked)."""
        if not self._frames:
            return 0
        return len(np.unique(np.concatenate([f.ids for f in self._frames])))

    def reset(self) -> None:
        self._frames.clear()

    def add(self, stamp_ns: int, query_ids, uvz) -> None:
        ids = np.asarray(query_ids).astype(np.int64).reshape(-1)
        uvz = np.asarray(uvz, dtype=np.float64).reshape(-1, 3)
        if len(ids) != len(uvz):
            raise ValueError(f"add: {len(ids)} query ids but {len(uvz)} uvz rows")
        stamp_ns = int(stamp_ns)
        # first occurrence of each id wins, like QueryHistory ignoring a repeated (id, stamp)
        ids, first = np.unique(ids, return_index=True)
        uvz = uvz[first]
        if self._frames:
            last = self._frames[-1]
            if stamp_ns < last.stamp_ns:
                return  # out-of-order frame: the history is monotone in time
            if stamp_ns == last.stamp_ns:
                # the same frame added in parts (the runtime adds the depthless queries' NaN rows
                # first, then the others): merge, ids already recorded for this stamp stay as they are
                new = ~np.isin(ids, last.ids)
                if new.any():
                    all_ids = np.concatenate([last.ids, ids[new]])
                    order = np.argsort(all_ids, kind="stable")
                    last.ids = all_ids[order]
                    last.uvz = np.concatenate([last.uvz, uvz[new]])[order]
                return
            if stamp_ns - last.stamp_ns > self.forget_after_ns:
                # the stream paused longer than an id is remembered (QueryHistory forgets every id
                # then): the frames before the pause are not the same scene's recent motion
                self._frames.clear()
        self._frames.append(_Frame(stamp_ns, ids, uvz.copy()))

    def history(self, query_ids, now_ns: int, step_period: float, steps: int = HISTORY_STEPS) -> np.ndarray:
        if step_period <= 0:
            raise ValueError(f"step_period must be positive, got {step_period}")
        ids = np.asarray(query_ids).astype(np.int64).reshape(-1)
        steps = int(steps)
        out = np.full((len(ids), steps, 3), np.nan, np.float32)
        back = [f for f in reversed(self._frames) if f.stamp_ns <= now_ns][: self.max_frames]  # t, t-1, ...
        if not back or steps < 1 or not len(ids):
            return out
        ref = back[0]
        ok_ref = np.isfinite(ref.uvz).all(1) & (ref.uvz[:, 2] > MIN_DEPTH_M)
        cand = ref.ids[ok_ref]                       # the tracks valid at the reference frame
        if not len(cand):
            return out
        uvz, valid = self._tracks(back, cand)
        # the progress metric (u/W, v/H, z m) of `_reference_tracks`: u_norm = 2 (u_px + 0.5) / W - 1,
        # so (u_norm + 1) / 2 = u_px / W + 0.5 / W, a constant offset that no step length sees; the
        # image size is not needed
        metric = np.concatenate([(uvz[..., :2] + 1.0) / 2.0, uvz[..., 2:]], -1)
        hb, hb_v, _ = resample.synchronous_resample(metric, valid, steps + 1, values=uvz,
                                                    interval=self.interval, top_fraction=self.top_fraction)
        hist, hist_v = hb[:, 1:][:, ::-1], hb_v[:, 1:][:, ::-1]      # chronological, oldest first
        hist = np.where(hist_v[..., None], hist, np.nan)
        pos = np.searchsorted(cand, ids)
        pos_c = np.minimum(pos, len(cand) - 1)
        hit = cand[pos_c] == ids
        out[hit] = hist[pos_c[hit]].astype(np.float32)
        return out

    @staticmethod
    def _tracks(back: list[_Frame], cand: np.ndarray):
        """(n, F, 3) uvz (0 where invalid) and (n, F) validity of the tracks `cand` (sorted) over the
        frames `back` (newest first): the whole window, as training's, in one scatter."""
        n, F = len(cand), len(back)
        all_ids = np.concatenate([f.ids for f in back])
        all_uvz = np.concatenate([f.uvz for f in back])
        col = np.repeat(np.arange(F), [len(f.ids) for f in back])
        row = np.minimum(np.searchsorted(cand, all_ids), n - 1)
        hit = cand[row] == all_ids
        uvz = np.zeros((n, F, 3))
        present = np.zeros((n, F), bool)
        uvz[row[hit], col[hit]] = all_uvz[hit]
        present[row[hit], col[hit]] = True
        valid = present & np.isfinite(uvz).all(-1) & (uvz[..., 2] > MIN_DEPTH_M)
        return np.where(valid[..., None], uvz, 0.0), valid


def make_query_history(parameterization: str, **kwargs):
    """The runtime history for a model trained on a dataset of this parameterisation: `QueryHistory`
    (time-spaced) for "time" / "arc_length", `SynchronousQueryHistory` for "synchronous"; ``kwargs``
    go to the class."""
    if parameterization in ("time", "arc_length"):
        return QueryHistory(**kwargs)
    if parameterization == "synchronous":
        return SynchronousQueryHistory(**kwargs)
    raise ValueError(f"unknown history parameterization {parameterization!r}; "
                     f"expected one of {HISTORY_PARAMETERIZATIONS}")


def history_parameterization(checkpoint_training: dict | None) -> str:
    """The parameterisation a checkpoint's training data was resampled with, from its config.json
    ``training`` dict (key ``"parameterization"``, recorded by `mu0_policy.training.train` from the
    dataset's provenance); absent (checkpoints and datasets from before) -> "arc_length"."""
    value = (checkpoint_training or {}).get("parameterization") or LEGACY_PARAMETERIZATION
    if value not in HISTORY_PARAMETERIZATIONS:
        raise ValueError(f"checkpoint training parameterization {value!r} is not one of {HISTORY_PARAMETERIZATIONS}")
    return str(value)
