"""Query geometry: how a query pixel becomes the model's query input, the same way everywhere.

TraceExtract (lifting tracks to 3D), the training data and the runtime (inference, the node, the
baselines) all turn a pixel of an RGB-D frame into a query ``uvz`` (normalised u, v and metric
depth) and a history into the model's (values, mask) pair with these functions, so a model sees at
serving time exactly what it was trained on (test/test_preprocessing_parity.py pins it).

Depth at a pixel (:func:`depth_at_pixels`), the one rule:
  the pixel's own depth when it is valid, else the median of the valid depths in the 5 x 5 window
  around it, else NaN; valid means finite and > 0 (RealSense and the 16UC1 converter write 0 for
  "no return"); a pixel outside the image has no depth.
Why this rule: the pixel's own value is kept when it exists, so nothing is smoothed across the
depth edges that interaction points sit on (a window median there can pick the other surface);
holes are common exactly at those edges (stereo shadows, a few pixels wide) and a 5 x 5 window
recovers most of them where a 3 x 3 one does not; the median of what is left still takes one
surface's value instead of averaging two. NaN, not a guess, when the window has nothing: callers
decide what an unknown depth means (TraceExtract drops the point, the runtime drops the query or
falls back explicitly, :func:`query_anchor_uvz`).

Pure numpy; imports nothing of ours outside mu0_core.
"""
from __future__ import annotations

import numpy as np

from mu0_core.camera import normalized_to_pixels, pixels_to_normalized  # noqa: F401  (one pixel <-> uv rule)

DEPTH_WINDOW_RADIUS = 2      # 5 x 5 fallback window (see the module docstring for why)


def valid_depth(values) -> np.ndarray:
    """Bool mask of depth values that are measurements: finite and > 0."""
    v = np.asarray(values)
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v > 0)


def depth_at_pixels(depth: np.ndarray | None, uv_px, radius: int = DEPTH_WINDOW_RADIUS) -> np.ndarray:
    """Depth (metres, float32) at pixels ``uv_px`` (N, 2) of a (H, W) depth image by the one rule.

    The pixel is the nearest one (``np.rint``); a position within the image's outer edges
    ([-0.5, W - 0.5] x [-0.5, H - 0.5]) belongs to its border pixel, a position beyond them or a
    non-finite one has no depth (NaN). ``depth=None`` (no depth stream) gives NaN everywhere.
    """
    uv = np.asarray(uv_px, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(uv), np.nan, np.float32)
    if depth is None or len(uv) == 0:
        return out
    d = np.asarray(depth)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    h, w = d.shape
    finite = np.isfinite(uv).all(axis=1)
    u = np.where(finite, uv[:, 0], -1e9)
    v = np.where(finite, uv[:, 1], -1e9)
    inside = finite & (u >= -0.5) & (u <= w - 0.5) & (v >= -0.5) & (v <= h - 0.5)
    if not inside.any():
        return out
    ui = np.clip(np.rint(u[inside]).astype(np.int64), 0, w - 1)
    vi = np.clip(np.rint(v[inside]).astype(np.int64), 0, h - 1)
    centre = d[vi, ui].astype(np.float32)
    z = np.where(valid_depth(centre), centre, np.float32(np.nan))
    holes = np.nonzero(~np.isfinite(z))[0]
    if holes.size:
        offs = np.arange(-radius, radius + 1)
        du, dv = np.meshgrid(offs, offs)
        # a window reaching over the border is cut there (clipping would count border pixels twice)
        uu = ui[holes, None] + du.reshape(1, -1)
        vv = vi[holes, None] + dv.reshape(1, -1)
        in_img = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        vals = d[np.clip(vv, 0, h - 1), np.clip(uu, 0, w - 1)].astype(np.float32)
        vals = np.where(in_img & valid_depth(vals), vals, np.float32(np.nan))
        any_valid = np.isfinite(vals).any(axis=1)
        if any_valid.any():
            z[holes[any_valid]] = np.nanmedian(vals[any_valid], axis=1)
    out[inside] = z
    return out


def query_uvz(depth: np.ndarray | None, uv_px, width: int, height: int, z=None) -> np.ndarray:
    """(N, 3) float32 query uvz: normalised u, v of the pixels and :func:`depth_at_pixels` (NaN
    where the pixel has no depth).

    ``z`` (N,): the depth at these pixels when the caller already sampled it with
    :func:`depth_at_pixels` (the runtime does, to drop depthless queries before it asks the model);
    then ``depth`` is not read again, so the depth is sampled once per frame by the one rule."""
    uv = np.asarray(uv_px, dtype=np.float64).reshape(-1, 2)
    uvn = pixels_to_normalized(uv, width, height)
    if z is None:
        z = depth_at_pixels(depth, uv)
    else:
        z = np.asarray(z, np.float32).reshape(-1)
        if z.shape != (len(uv),):
            raise ValueError(f"z: expected ({len(uv)},) depths for the pixels, got {z.shape}")
    return np.concatenate([uvn, z[:, None]], axis=1).astype(np.float32)


def history_valid_mask(history_uvz) -> np.ndarray:
    """(..., h) bool: a history step counts when its uvz is finite and its depth > 0."""
    hist = np.asarray(history_uvz)
    return np.isfinite(hist).all(axis=-1) & valid_depth(hist[..., 2])


def history_model_input(history_uvz, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """History as the model takes it: (values (..., h, 3) float32 with 0 at invalid steps, mask).

    ``valid`` (..., h) narrows the mask further (TraceExtract knows when a track was lost);
    the mask is always within :func:`history_valid_mask` so a NaN or a zero depth never enters.
    """
    hist = np.asarray(history_uvz, dtype=np.float32)
    ok = history_valid_mask(hist)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    return np.where(ok[..., None], hist, np.float32(0.0)).astype(np.float32), ok


def query_anchor_uvz(depth: np.ndarray | None, query_px, width: int, height: int,
                     history_uvz=None, z=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 anchor uvz of each query and (N,) whether its depth is known.

    Depth by :func:`depth_at_pixels`, or ``z`` when the caller already sampled it by that rule
    (:func:`query_uvz`; the image is then read only for the last fallback); where the pixel has none, the last valid history step's
    depth (still known: it was measured on this point a moment ago); failing both, the median of
    the image's valid depths (so decoded samples stay finite) with ``known`` False, and 0 when the
    image has no valid depth at all. Training never produces an unknown anchor (TraceExtract
    drops such points), so the fallbacks only serve API callers that ask about depthless pixels.
    """
    uvz = query_uvz(depth, query_px, width, height, z)
    z = uvz[:, 2]
    if history_uvz is not None and len(z):
        hist = np.asarray(history_uvz, np.float32)
        ok = history_valid_mask(hist)
        for i in np.nonzero(~np.isfinite(z))[0]:
            steps = np.nonzero(ok[i])[0]
            if steps.size:
                z[i] = hist[i, steps[-1], 2]
    known = np.isfinite(z)
    if not known.all():
        fallback = np.nan
        if depth is not None:
            d = np.asarray(depth, np.float32)
            good = d[valid_depth(d)]
            fallback = float(np.median(good)) if good.size else np.nan
        z[~known] = fallback if np.isfinite(fallback) else 0.0
    return uvz, known
