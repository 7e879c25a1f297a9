"""Accuracy of extracted traces against simulator ground truth.

Ground truth names a few points per frame (gripper centre, object centres) in the world frame.
Extracted points lie on surfaces, not at those centres, so a track is assigned to the GT body
it is nearest to (within `radius_m`) in its seed frame, and its DISPLACEMENT since the seed frame
is compared with the body's displacement (exact for translating bodies; rotation of the body
adds lever-arm error, which the thresholds absorb).
"""
from __future__ import annotations

import numpy as np


def evaluate_against_ground_truth(xyz_world: np.ndarray, valid: np.ndarray, seed_frame: np.ndarray,
                                  gt_names: list, gt_world: np.ndarray, moving: np.ndarray | None = None,
                                  radius_m: float = 0.08, min_travel_m: float = 0.03) -> dict:
    """xyz_world (T, N, 3), valid (T, N), seed_frame (N,), gt_world (T, K, 3) in the same frame.

    Returns median/p90 displacement error (cm) over all valid samples of assigned points, and
    coverage: the fraction of (moving GT body, frame) pairs with at least one valid assigned
    track point. A body is moving if it travels more than min_travel_m in the episode.
    With `moving` (N,) only tracks passing the movement filter are assigned: the GT bodies are
    the moving ones, and a static table point next to the gripper must not count as its track."""
    T, N, _ = xyz_world.shape
    K = gt_world.shape[1]
    errors, per_body = [], {}
    assigned = np.full(N, -1)
    for n in range(N):
        s = int(seed_frame[n])
        if not valid[s, n] or (moving is not None and not moving[n]):
            continue
        d = np.linalg.norm(gt_world[s] - xyz_world[s, n], axis=1)
        k = int(np.nanargmin(d))
        if d[k] <= radius_m:
            assigned[n] = k
    cover_hits, cover_total = 0, 0
    for k in range(K):
        g = gt_world[:, k]
        travel = float(np.nanmax(np.linalg.norm(g - g[0], axis=1)))
        sel = np.nonzero(assigned == k)[0]
        errs = []
        for n in sel:
            s = int(seed_frame[n])
            ok = valid[:, n]
            e = np.linalg.norm((xyz_world[ok, n] - xyz_world[s, n]) - (g[ok] - g[s]), axis=1)
            errs.append(e)
        e = np.concatenate(errs) if errs else np.zeros(0)
        errors.append(e)
        covered = valid[:, sel].any(axis=1) if len(sel) else np.zeros(T, bool)
        per_body[str(gt_names[k])] = dict(points=int(len(sel)), travel_cm=100 * travel,
                                          median_cm=float(100 * np.median(e)) if e.size else float("nan"),
                                          p90_cm=float(100 * np.percentile(e, 90)) if e.size else float("nan"),
                                          coverage=float(covered.mean()))
        if travel > min_travel_m:
            cover_hits += int(covered.sum())
            cover_total += T
    e = np.concatenate(errors) if errors else np.zeros(0)
    return dict(median_cm=float(100 * np.median(e)) if e.size else float("nan"),
                p90_cm=float(100 * np.percentile(e, 90)) if e.size else float("nan"),
                num_samples=int(e.size), num_points=int((assigned >= 0).sum()),
                coverage=cover_hits / cover_total if cover_total else float("nan"), per_body=per_body)
