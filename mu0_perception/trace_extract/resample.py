"""What a horizon step means: resampling the tracks of one training sample.

Two parameterisations of the H future steps (and the h history steps) of a sample:

- ``"synchronous"`` (default for new datasets; the authors' TraceExtract rule): ALL tracks of a
  sample are resampled together by the scene's motion. Per source frame step, the scene's
  progress is the mean step length of the fastest ``top_fraction`` (2 %) of the tracks in
  (u / W, v / H, depth m) of the reference camera; a new sample is placed every ``interval``
  (0.05) of accumulated progress, and every track is interpolated at the same fractional source
  frame. A horizon step is therefore "0.05 of the fastest points' motion", the same for every
  point of the sample, and static stretches of the video are skipped. The history is resampled
  the same way, walking backwards from the reference frame.
- ``"arc_length"`` (the datasets written before; kept as an option): each trace on its own is
  resampled at equal arc length along its own path (``mu0_core.camera.arc_length_reparameterize``),
  so step k of two points of one rigid object can be at different times.

Validity: a track contributes until its first invalid source frame (validity is a prefix of the
output steps); the resampling ends where the scene's progress ends (no extrapolation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNC_INTERVAL = 0.05       # progress per output step, in (u/W, v/H, z m) units
SYNC_TOP_FRACTION = 0.02   # the fastest 2 % of the tracks set the progress


@dataclass
class SyncPlan:
    """Where each output step falls in the source frames: frame ``index[k] + alpha[k]``."""

    index: np.ndarray       # (S,) int, left source frame of each output step
    alpha: np.ndarray       # (S,) in [0, 1], fraction towards index + 1
    num_steps: int          # output steps that the scene's progress reaches (<= S)
    progress: float         # the scene's total progress over the source window

    @property
    def frame_position(self) -> np.ndarray:
        return self.index + self.alpha

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Interpolate (N, T, C) source values at the plan's steps -> (N, S, C) (NaN-free input
        expected at the frames used; steps beyond ``num_steps`` repeat the last reached one)."""
        v = np.asarray(values, dtype=np.float64)
        if v.shape[1] == 1:
            return np.repeat(v, len(self.index), axis=1)
        a = self.alpha[None, :, None]
        return v[:, self.index] * (1.0 - a) + v[:, self.index + 1] * a

    def valid(self, track_valid: np.ndarray) -> np.ndarray:
        """(N, T) per-frame validity -> (N, S) validity of the output steps: a step needs every
        source frame it interpolates between within the track's valid prefix, and k < num_steps."""
        pv = np.cumprod(np.asarray(track_valid, bool), axis=1).astype(bool)
        S = len(self.index)
        if pv.shape[1] == 1:
            need = np.zeros(S, int)
        else:
            need = np.minimum(self.index + (self.alpha > 1e-9), pv.shape[1] - 1)
        out = pv[:, need]
        out[:, self.num_steps:] = False
        return out


def robust_progress(metric: np.ndarray, valid: np.ndarray, top_fraction: float = SYNC_TOP_FRACTION) -> np.ndarray:
    """(N, T, C) tracks in the progress metric + (N, T) prefix validity -> (T - 1,) per-step progress:
    the mean length of the ``top_fraction`` longest steps among the tracks valid at both ends
    (at least one track; 0 where none is valid)."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    P = np.asarray(metric, dtype=np.float64)
    v = np.asarray(valid, bool)
    N, T = v.shape
    if T < 2 or N == 0:
        return np.zeros(max(T - 1, 0))
    both = v[:, 1:] & v[:, :-1]
    seg = np.linalg.norm(np.nan_to_num(P[:, 1:] - P[:, :-1]), axis=-1)
    seg = np.where(both & np.isfinite(seg), seg, -np.inf)
    srt = -np.sort(-seg, axis=0)                                     # (N, T-1) descending
    n_ok = both.sum(0)                                               # (T-1,)
    k = np.maximum(1, np.ceil(top_fraction * n_ok).astype(int))
    csum = np.cumsum(np.where(np.isfinite(srt), srt, 0.0), axis=0)
    top = csum[np.minimum(k, N) - 1, np.arange(T - 1)] / k
    return np.where(n_ok > 0, top, 0.0)


def plan_synchronous(metric: np.ndarray, valid: np.ndarray, num_samples: int, interval: float = SYNC_INTERVAL,
                     top_fraction: float = SYNC_TOP_FRACTION) -> SyncPlan:
    """The shared resampling plan of one sample's tracks.

    metric (N, T, C): tracks from the reference frame (index 0) on, in the progress metric
    ((u/W, v/H, z m) in the reference camera); valid (N, T) bool. Output step 0 is the reference
    frame; step k lies at progress k * ``interval``.
    """
    if isinstance(num_samples, bool) or int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    if not (np.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be > 0, got {interval}")
    v = np.cumprod(np.asarray(valid, bool), axis=1).astype(bool)
    T = v.shape[1]
    S = int(num_samples)
    if T < 2:
        return SyncPlan(np.zeros(S, int), np.zeros(S), 1 if T else 0, 0.0)
    seg = robust_progress(metric, v, top_fraction)                   # (T-1,)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(s[-1])
    reached = min(int(np.floor(total / interval + 1e-9)) + 1, S)
    targets = interval * np.arange(S, dtype=np.float64)
    targets = np.minimum(targets, total)
    # the first source position where the progress reaches each target (runs of frames without
    # progress are skipped, so a step lands on the earliest frame it can)
    j = np.clip(np.searchsorted(s, targets - 1e-12, side="left"), 0, T - 1)
    prev = np.maximum(j - 1, 0)
    frac = np.where(j > 0, (targets - s[prev]) / np.maximum(seg[prev], 1e-12), 0.0)
    pos = np.where(j > 0, prev + np.clip(frac, 0.0, 1.0), 0.0)
    idx = np.minimum(np.floor(pos).astype(int), T - 2)
    alpha = pos - idx
    return SyncPlan(idx.astype(int), alpha, reached, total)


def synchronous_resample(metric: np.ndarray, valid: np.ndarray, num_samples: int, values=None,
                         interval: float = SYNC_INTERVAL, top_fraction: float = SYNC_TOP_FRACTION):
    """Resample all tracks of one sample together (see the module doc).

    metric (N, T, C) progress-metric tracks from the reference frame on, valid (N, T); ``values``
    (N, T, C') what to resample (default: ``metric``). Returns (resampled (N, S, C'), valid (N, S),
    plan)."""
    plan = plan_synchronous(metric, valid, num_samples, interval, top_fraction)
    src = metric if values is None else values
    return plan.apply(np.nan_to_num(np.asarray(src, dtype=np.float64))), plan.valid(valid), plan
