"""2D point tracking for TraceExtract.

`PointTracker` is the interface: given a clip and query points (each seeded in some frame), it
returns a track and a visibility flag for every frame. The CPU default is OpenCV pyramidal
Lucas-Kanade with a forward-backward consistency check (`LucasKanadeTracker`), the only tracker
shipped and registered ("lk").

CoTracker3 / TAPIP3D are an INTERFACE TO FILL, not code in this repository: no loading code for
them exists here and nothing about them is tested. A learned tracker is added by subclassing
`PointTracker`, implementing `track` (the contract below) and decorating the class with
`@register_tracker("name")`; the name then works in `ExtractConfig.tracker` and
`mu0 extract --tracker name` (for a module outside this package, import it before the run).

Pure numpy / OpenCV; no ROS.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

_TRACKERS: dict[str, type] = {}


def register_tracker(name: str):
    def deco(cls):
        _TRACKERS[name] = cls
        cls.tracker_name = name
        return cls
    return deco


def registered_trackers() -> list[str]:
    return sorted(_TRACKERS)


def make_tracker(name: str, **params) -> "PointTracker":
    if name not in _TRACKERS:
        raise ValueError(f"tracker: unknown name {name!r}; registered: {sorted(_TRACKERS)}")
    return _TRACKERS[name](**params)


@dataclass
class Tracks:
    uv: np.ndarray        # (T, N, 2) float32 pixels; NaN where not visible
    visible: np.ndarray   # (T, N) bool


class PointTracker(ABC):
    tracker_name = "abstract"

    @abstractmethod
    def track(self, colors: np.ndarray, query_frames: np.ndarray, query_uv: np.ndarray) -> Tracks:
        """colors (T, H, W, 3) uint8; query_frames (N,) int; query_uv (N, 2) pixels at their
        query frame. Tracks run forward and backward in time from each query frame."""


@register_tracker("lk")
class LucasKanadeTracker(PointTracker):
    """Pyramidal Lucas-Kanade, frame to frame, with a forward-backward check.

    A point is dropped (visible=False from then on in that direction) when the backward-tracked
    position misses the start by more than `fb_threshold_px`, when LK reports failure, or when the
    point leaves the image. LK cannot recover a point after occlusion, so visibility only ends;
    TraceExtract re-seeds new points per chunk to cover what appears later."""

    def __init__(self, win_size: int = 15, max_level: int = 3, fb_threshold_px: float = 1.0,
                 max_error: float = 30.0):
        self.params = dict(winSize=(int(win_size), int(win_size)), maxLevel=int(max_level),
                           criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        self.fb_threshold_px = float(fb_threshold_px)
        self.max_error = float(max_error)

    def _step(self, g0, g1, p0):
        p1, st1, err1 = cv2.calcOpticalFlowPyrLK(g0, g1, p0, None, **self.params)
        p0b, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **self.params)
        fb = np.linalg.norm(p0b - p0, axis=-1).reshape(-1)
        H, W = g0.shape
        q = p1.reshape(-1, 2)
        inside = (q[:, 0] >= 0) & (q[:, 0] <= W - 1) & (q[:, 1] >= 0) & (q[:, 1] <= H - 1)
        ok = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < self.fb_threshold_px) & inside
        ok &= err1.reshape(-1) < self.max_error
        return q, ok

    def track(self, colors, query_frames, query_uv):
        colors = np.asarray(colors)
        if colors.ndim != 4 or colors.shape[-1] != 3:
            raise ValueError(f"colors must be (T, H, W, 3), got {colors.shape}")
        qf = np.asarray(query_frames, dtype=np.int64).reshape(-1)
        quv = np.asarray(query_uv, dtype=np.float32).reshape(-1, 2)
        if len(qf) != len(quv):
            raise ValueError(f"query_frames ({len(qf)}) and query_uv ({len(quv)}) differ in length")
        T, N = len(colors), len(quv)
        if N and (qf.min() < 0 or qf.max() >= T):
            raise ValueError(f"query_frames must lie in [0, {T}), got range [{qf.min()}, {qf.max()}]")
        gray = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) for c in colors]
        uv = np.full((T, N, 2), np.nan, np.float32)
        vis = np.zeros((T, N), bool)
        uv[qf, np.arange(N)] = quv
        vis[qf, np.arange(N)] = True
        for direction in (+1, -1):
            frames = range(T) if direction > 0 else range(T - 1, -1, -1)
            active = np.zeros(N, bool)
            pos = np.zeros((N, 2), np.float32)
            for t in frames:
                starting = qf == t
                pos[starting] = quv[starting]
                active |= starting
                t1 = t + direction
                if not (0 <= t1 < T) or not active.any():
                    continue
                idx = np.nonzero(active)[0]
                q, ok = self._step(gray[t], gray[t1], pos[idx].reshape(-1, 1, 2))
                pos[idx] = q
                good, bad = idx[ok], idx[~ok]
                active[bad] = False
                uv[t1, good] = q[ok]
                vis[t1, good] = True
        return Tracks(uv, vis)
