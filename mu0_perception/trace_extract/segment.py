"""Event segmentation and hierarchical captions.

Segmentation (after the paper): the speed of the moving points is smoothed with a
Savitzky-Golay filter, its acceleration magnitude gives peaks (action anchors), and a boundary is
placed at the minimum of acceleration between consecutive peaks where the points pause (a cut
between the start and the stop of one motion is not made).

Captions are hierarchical: the episode's task text is the top level; each segment gets a caption
from a pluggable `Captioner`. The default `RuleBasedCaptioner` describes only what it can measure
(which entity moves most, its direction in the reference camera, gripper open/close events) and
marks its output as rule-based. A VLM/LLM captioner (as in the paper) implements the same method.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks, savgol_filter


@dataclass
class Segment:
    start: int          # first frame (inclusive)
    end: int            # last frame (exclusive)
    caption: str = ""


def motion_signal(xyz_world: np.ndarray, valid: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Per-frame mean speed (m/step) of the moving points (T,), 0 where none is valid."""
    T = len(xyz_world)
    sel = moving if moving.any() else np.ones(xyz_world.shape[1], bool)
    p, v = xyz_world[:, sel], valid[:, sel]
    step = np.linalg.norm(np.diff(p, axis=0), axis=-1)
    both = v[1:] & v[:-1]
    speed = np.zeros(T)
    with np.errstate(invalid="ignore"):
        num = np.where(both, step, 0.0).sum(1)
        den = both.sum(1)
    speed[1:] = np.where(den > 0, num / np.maximum(den, 1), 0.0)
    speed[0] = speed[1] if T > 1 else 0.0
    return speed


def segment_events(speed: np.ndarray, window: int = 9, polyorder: int = 2, min_length: int = 8,
                   prominence_frac: float = 0.2, pause_frac: float = 0.25) -> list[Segment]:
    """Boundaries from Savitzky-Golay smoothed acceleration: peaks = action anchors (a motion
    starting or stopping), a boundary at the acceleration minimum between consecutive anchors
    where the points pause (smoothed speed <= pause_frac * its maximum) — a cut between the start
    and the stop of one motion would split that motion. Ties (a flat minimum) resolve to the middle
    of the flat run, so a pause is cut at its centre. Segments shorter than min_length merge into
    their neighbour. Returns contiguous segments covering [0, T)."""
    speed = np.asarray(speed, dtype=float)
    T = len(speed)
    if T < max(window, 2 * min_length):
        return [Segment(0, T)]
    w = window if window % 2 == 1 else window + 1
    smooth = savgol_filter(speed, w, polyorder)
    acc = np.abs(savgol_filter(speed, w, polyorder, deriv=1))
    prom = prominence_frac * (acc.max() - acc.min()) if acc.max() > acc.min() else np.inf
    peaks, _ = find_peaks(acc, prominence=prom, distance=min_length // 2 or 1)
    top = max(float(np.abs(smooth).max()), 1e-12)
    cost = acc / max(float(acc.max()), 1e-12) + np.abs(smooth) / top
    bounds = [0]
    for a, b in zip(peaks[:-1], peaks[1:]):
        c = cost[a:b + 1]
        flat = np.flatnonzero(c <= c.min() + 1e-6)
        cut = int(a + flat[len(flat) // 2])
        if abs(smooth[cut]) > pause_frac * top:
            continue                                  # no pause between these anchors
        if cut - bounds[-1] >= min_length and T - cut >= min_length:
            bounds.append(cut)
    bounds.append(T)
    return [Segment(s, e) for s, e in zip(bounds[:-1], bounds[1:])]


@dataclass
class SegmentEvidence:
    """What a captioner may use about one segment."""
    start: int
    end: int
    entity_displacement_cam: dict      # entity id -> (3,) displacement (m) in the segment's first camera
    entity_num_points: dict            # entity id -> moving points tracked through the segment
    gripper_start: float | None = None
    gripper_end: float | None = None
    task: str = ""


class Captioner(ABC):
    name = "abstract"

    @abstractmethod
    def caption(self, evidence: SegmentEvidence) -> str: ...


def _direction_words(d: np.ndarray, min_m: float) -> list[str]:
    """Camera-frame displacement -> words (x right, y down, z forward)."""
    words = []
    for axis, (neg, pos) in zip(range(3), (("left", "right"), ("up", "down"), ("toward the camera", "away from the camera"))):
        if abs(d[axis]) >= max(min_m, 0.35 * np.abs(d).max()):
            words.append(pos if d[axis] > 0 else neg)
    return words


class RuleBasedCaptioner(Captioner):
    """Honest captions from measurements only; prefixed with "[rule-based]"."""

    name = "rule-based"

    def __init__(self, min_motion_m: float = 0.02, gripper_delta: float = 0.005):
        self.min_motion_m = float(min_motion_m)
        self.gripper_delta = float(gripper_delta)

    def caption(self, ev: SegmentEvidence) -> str:
        parts = []
        moved = {e: d for e, d in ev.entity_displacement_cam.items() if np.linalg.norm(d) >= self.min_motion_m}
        if moved:
            e, d = max(moved.items(), key=lambda kv: np.linalg.norm(kv[1]))
            dirs = _direction_words(np.asarray(d), self.min_motion_m)
            parts.append(f"entity {e} moves {' and '.join(dirs) or 'slightly'} by "
                         f"{100 * np.linalg.norm(d):.0f} cm")
            others = sorted(k for k in moved if k != e)
            if others:
                parts.append(f"entities {', '.join(map(str, others))} also move")
        else:
            parts.append("nothing moves noticeably")
        if ev.gripper_start is not None and ev.gripper_end is not None:
            g = ev.gripper_end - ev.gripper_start
            if g > self.gripper_delta:
                parts.append("gripper opens")
            elif g < -self.gripper_delta:
                parts.append("gripper closes")
        return "[rule-based] " + "; ".join(parts)
