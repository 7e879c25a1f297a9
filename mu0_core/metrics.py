"""Trace-prediction metrics as μ_0 reports them (minADE / minFDE / minDTW / discrete Fréchet).

Definitions (following the paper and the authors' evaluation code, Yoonkyo/mu0):
- A trace is scored on its FUTURE steps 1..T (step 0, the anchor, is the query itself and is
  identical in prediction and ground truth), at horizons T in {8, 16, 32}.
- Only steps that are valid in the ground truth count; a trace with no valid step in 1..T is left
  out at that horizon. Invalid steps are removed (the valid ones are compressed in time order)
  before DTW / Fréchet, for prediction and ground truth alike.
- ADE: mean L2 distance over the valid steps. FDE: L2 at the last valid step.
  DTW: dynamic time warping with L2 cost, divided by the number of valid steps.
  Fréchet: discrete Fréchet distance (Eiter & Mannila), not length-normalised.
- top-k: per trace, the minimum over the first k of the K samples; top-1 is the first sample.
  The table value is the mean over the evaluated (by default: moving) traces.
- Spaces: "uv" = normalised image coordinates in [-1, 1]; "uvz" = normalised uv plus metric depth
  (the paper's 3D numbers mix the two units this way); "xyz" = metres in the camera frame.

Moving-point filter (the ONE rule, used by TraceExtract, training and these tables; the
authors' ``compute_is_moving``): a point moves if the diameter of its trace in (u px, v px,
0.1 * depth in metres) over its first 64 steps exceeds 5 % of the image diagonal. Traces here are
in normalised uv, so ``moving_mask`` converts them to pixels with the image size (default: a
640x480 reference image, where the threshold is 40 px). ``trace_diameter`` (normalised units) is
a plain geometric helper.

Everything is vectorised over traces (the DP runs along anti-diagonals, batched over all traces
and samples); ``backend="torch"`` runs the same code on torch tensors.
"""
from __future__ import annotations

import numpy as np

METRIC_NAMES = ("ADE", "FDE", "DTW", "Frechet")
DEFAULT_HORIZONS = (8, 16, 32)
DEFAULT_TOPK = (1, 5)
PAPER_MOVING_THRESHOLD_PX = 40.0
REFERENCE_WIDTH_PX = 640
REFERENCE_IMAGE_SIZE = (640, 480)  # (W, H) assumed by ``moving_mask`` when no image size is given
DEFAULT_DEPTH_WEIGHT = 0.1
MOVING_DIAGONAL_FRACTION = 0.05    # threshold = 5 % of the image diagonal (40 px at 640x480)
MOVING_MAX_STEPS = 64              # the diameter looks at a trace's first 64 steps


def threshold_from_pixels(pixels: float = PAPER_MOVING_THRESHOLD_PX, width: int = REFERENCE_WIDTH_PX) -> float:
    """A pixel distance as a distance in normalised image units (u_n spans 2 over ``width`` px)."""
    if not (np.isfinite(pixels) and pixels >= 0):
        raise ValueError(f"pixels must be finite and >= 0, got {pixels}")
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"width must be positive, got {width}")
    return 2.0 * float(pixels) / float(width)


DEFAULT_MOVING_THRESHOLD = threshold_from_pixels()  # 0.125


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _check_gt_valid(gt, valid, gt_name="gt", valid_name="valid"):
    g = np.asarray(gt, dtype=np.float64)
    if g.ndim != 3 or g.shape[1] < 2 or g.shape[2] < 1:
        raise ValueError(f"{gt_name} must be (M, H+1, C), got shape {g.shape}")
    if valid is None:
        v = np.isfinite(g).all(axis=-1)
    else:
        v = np.asarray(valid)
        if v.shape != g.shape[:2]:
            raise ValueError(f"{valid_name} must have shape {g.shape[:2]}, got {v.shape}")
        if v.dtype != bool:
            if not np.all(np.isin(v, (0, 1))):
                raise ValueError(f"{valid_name} must be boolean")
            v = v.astype(bool)
    if not np.all(np.isfinite(g[v])):
        raise ValueError(f"{gt_name} contains NaN or inf at steps marked valid")
    return g, v


# ----------------------------------------------------------------------------------------------
# moving-point filter
# ----------------------------------------------------------------------------------------------
def trace_diameter(gt_uvz, valid=None, depth_weight: float = DEFAULT_DEPTH_WEIGHT,
                   chunk: int = 2048) -> np.ndarray:
    """(M, T, C) -> (M,) largest distance between two valid steps in (u_n, v_n, w * depth).

    C = 2 uses uv only. A trace with fewer than two valid steps has diameter 0.
    """
    g, v = _check_gt_valid(gt_uvz, valid, "gt_uvz")
    if not (np.isfinite(depth_weight) and depth_weight >= 0):
        raise ValueError(f"depth_weight must be finite and >= 0, got {depth_weight}")
    w = np.ones(g.shape[-1])
    if g.shape[-1] >= 3:
        w[2] = depth_weight
    p = np.where(v[..., None], g, 0.0) * w
    out = np.zeros(g.shape[0])
    for s in range(0, g.shape[0], chunk):
        pc, vc = p[s: s + chunk], v[s: s + chunk]
        d2 = ((pc[:, :, None, :] - pc[:, None, :, :]) ** 2).sum(-1)
        pair = vc[:, :, None] & vc[:, None, :]
        out[s: s + chunk] = np.sqrt(np.where(pair, d2, 0.0).max(axis=(1, 2), initial=0.0))
    return out


def moving_threshold_px(width: float, height: float, fraction: float = MOVING_DIAGONAL_FRACTION) -> float:
    """The moving threshold in pixels: ``fraction`` of the image diagonal (sqrt((W/20)^2 + (H/20)^2)
    for the default 5 %)."""
    if not (np.isfinite(width) and width > 0 and np.isfinite(height) and height > 0):
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not (np.isfinite(fraction) and fraction >= 0):
        raise ValueError(f"fraction must be finite and >= 0, got {fraction}")
    return float(fraction) * float(np.hypot(width, height))


def moving_points(uv_px, depth_m, valid, image_size, fraction: float = MOVING_DIAGONAL_FRACTION,
                  depth_weight: float = DEFAULT_DEPTH_WEIGHT, max_steps: int | None = MOVING_MAX_STEPS,
                  return_diameter: bool = False):
    """THE moving-point filter (TraceExtract, training data, metrics).

    uv_px (..., T, 2) pixels, depth_m (..., T) metres, valid (..., T) bool, image_size (W, H).
    A trace moves if the largest distance between two of its valid steps among the first
    ``max_steps`` (None = all) in (u px, v px, depth_weight * depth m) exceeds ``fraction`` of the
    image diagonal. Depth in metres is added to pixels unscaled (as the authors do), so depth
    alone practically never makes a point move. Returns (...,) bool (and the diameters in px).
    """
    uv = np.asarray(uv_px, dtype=np.float64)
    z = np.asarray(depth_m, dtype=np.float64)
    v = np.asarray(valid).astype(bool)
    if uv.ndim < 2 or uv.shape[-1] != 2 or z.shape != uv.shape[:-1] or v.shape != uv.shape[:-1]:
        raise ValueError(f"uv_px must be (..., T, 2) with depth_m and valid (..., T); got {uv.shape}, "
                         f"{z.shape}, {v.shape}")
    if not (np.isfinite(depth_weight) and depth_weight >= 0):
        raise ValueError(f"depth_weight must be finite and >= 0, got {depth_weight}")
    W, H = image_size
    thr = moving_threshold_px(W, H, fraction)
    if max_steps is not None:
        uv, z, v = uv[..., :max_steps, :], z[..., :max_steps], v[..., :max_steps]
    p = np.concatenate([uv, (depth_weight * z)[..., None]], axis=-1)
    v = v & np.isfinite(p).all(-1)
    lead = p.shape[:-2]
    T = p.shape[-2]
    diam = trace_diameter(np.where(v[..., None], p, 0.0).reshape(-1, T, 3), v.reshape(-1, T),
                          depth_weight=1.0).reshape(lead) if T else np.zeros(lead)
    out = diam > thr
    return (out, diam) if return_diameter else out


def moving_mask(gt_uvz, valid=None, image_size=None, fraction: float = MOVING_DIAGONAL_FRACTION,
                depth_weight: float = DEFAULT_DEPTH_WEIGHT, max_steps: int | None = MOVING_MAX_STEPS,
                threshold: float | None = None) -> np.ndarray:
    """(M, H+1, 3) normalised uvz ground truth -> (M,) bool: :func:`moving_points` in the pixels of
    an image of ``image_size`` (W, H) (None = the 640x480 reference).

    ``threshold`` (legacy): a diameter threshold in normalised (u_n, v_n, w * depth) units instead
    of the paper's rule (kept for callers that need a scale-free cut)."""
    g, v = _check_gt_valid(gt_uvz, valid, "gt_uvz")
    if threshold is not None:
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
        return trace_diameter(g, v, depth_weight) > threshold
    if g.shape[-1] != 3:
        raise ValueError(f"gt_uvz must have 3 channels (u_n, v_n, depth_m), got {g.shape[-1]}")
    from mu0_core.camera import normalized_to_pixels

    size = REFERENCE_IMAGE_SIZE if image_size is None else tuple(image_size)
    return moving_points(normalized_to_pixels(g[..., :2], *size), g[..., 2], v, size, fraction,
                         depth_weight, max_steps)


# ----------------------------------------------------------------------------------------------
# per-trace errors (numpy or torch)
# ----------------------------------------------------------------------------------------------
def _xp(backend: str):
    if backend == "numpy":
        return np
    if backend == "torch":
        import torch

        return torch
    raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


def _compress(x, valid, xp):
    """Move each trace's valid steps to the front, keeping their order. x (..., T, C), valid (..., T)."""
    if xp is np:
        order = np.argsort(~valid, axis=-1, kind="stable")
        return np.take_along_axis(x, order[..., None], axis=-2), np.take_along_axis(valid, order, axis=-1)
    order = xp.sort((~valid).to(xp.uint8), dim=-1, stable=True).indices
    idx = order.unsqueeze(-1).expand(*order.shape, x.shape[-1])
    return xp.gather(x, -2, idx), xp.gather(valid, -1, order)


_SKEW_CACHE: dict = {}


def _skew_index(T: int):
    """Anti-diagonal layout of a (T, T) table: row d, column i is cell (i, d - i)."""
    if T not in _SKEW_CACHE:
        d = np.arange(2 * T - 1)[:, None]
        i = np.arange(T)[None, :]
        j = d - i
        ok = (j >= 0) & (j < T)
        _SKEW_CACHE[T] = (np.where(ok, i * T + j, 0).reshape(-1), ok)
    return _SKEW_CACHE[T]


def _alignment_costs(a, b, last, xp):
    """DTW (sum of costs) and discrete Fréchet of traces a, b (N, T, C) with L2 step costs.

    The DP runs along anti-diagonals i + j = d, batched over all N traces; the pairwise distances
    are computed directly in diagonal layout so every DP step is a slice (no per-cell Python
    work). ``last`` (N,) is each trace's number of valid (time-compressed) steps minus one: its
    answer is cell (last, last) on diagonal 2 * last, which padding after it cannot change
    (every cell depends only on cells above-left of it). Returns (dtw_sum (N,), frechet (N,)).
    """
    n, T = a.shape[0], a.shape[1]
    j_idx, ok = _skew_index(T)  # flat index of cell (i, d - i) for row d, column i
    inf = float("inf")
    if xp is np:
        pd = np.sqrt(((a[:, :, None] - b[:, None]) ** 2).sum(-1))         # (n, T, T)
        pd = np.take(pd.reshape(n, T * T), j_idx, axis=1).reshape(n, 2 * T - 1, T)
        pd = np.where(ok[None], pd, inf)
        pad = np.full((n, 1), inf, dtype=a.dtype)
        inf_row = np.full((n, T), inf, dtype=a.dtype)
        cat = np.concatenate
        dtw_out, fr_out = np.zeros(n, dtype=a.dtype), np.zeros(n, dtype=a.dtype)
    else:
        pd = xp.sqrt(((a[:, :, None] - b[:, None]) ** 2).sum(-1))
        pd = xp.index_select(pd.reshape(n, T * T), 1, xp.as_tensor(j_idx, device=a.device))
        pd = pd.reshape(n, 2 * T - 1, T)
        pd = xp.where(xp.as_tensor(ok, device=a.device)[None], pd, xp.full((), inf, dtype=a.dtype))
        pad = xp.full((n, 1), inf, dtype=a.dtype, device=a.device)
        inf_row = xp.full((n, T), inf, dtype=a.dtype, device=a.device)
        cat = xp.cat
        dtw_out, fr_out = xp.zeros(n, dtype=a.dtype, device=a.device), xp.zeros(n, dtype=a.dtype, device=a.device)
    dtw_prev2 = dtw_prev = fr_prev2 = fr_prev = None
    for d in range(2 * T - 1):
        here = pd[:, d]
        if d == 0:                                       # only cell (0, 0)
            dtw_cur, fr_cur = here, here
        else:
            # predecessors of (i, d-i): (i-1, d-i) and (i, d-i-1) on diagonal d-1 (index i-1, i),
            # (i-1, d-i-1) on diagonal d-2 (index i-1)
            up_dtw = cat([pad, dtw_prev[:, :-1]], 1)
            diag_dtw = cat([pad, dtw_prev2[:, :-1]], 1) if d >= 2 else inf_row
            dtw_cur = here + xp.minimum(xp.minimum(up_dtw, dtw_prev), diag_dtw)
            up_fr = cat([pad, fr_prev[:, :-1]], 1)
            diag_fr = cat([pad, fr_prev2[:, :-1]], 1) if d >= 2 else inf_row
            fr_cur = xp.maximum(here, xp.minimum(xp.minimum(up_fr, fr_prev), diag_fr))
        if d % 2 == 0:
            done = last == d // 2
            dtw_out = xp.where(done, dtw_cur[:, d // 2], dtw_out)
            fr_out = xp.where(done, fr_cur[:, d // 2], fr_out)
        dtw_prev2, dtw_prev = dtw_prev, dtw_cur
        fr_prev2, fr_prev = fr_prev, fr_cur
    return dtw_out, fr_out


def per_trace_errors(pred, gt, valid, backend: str = "numpy", chunk: int = 2048) -> dict:
    """ADE / FDE / DTW / Fréchet of every sample and trace on the given steps.

    pred (K, M, T, C), gt (M, T, C), valid (M, T) bool — already restricted to the steps to score
    (no anchor). Returns {"ADE"|"FDE"|"DTW"|"Frechet": (K, M)} (numpy or torch, float64); traces
    without a valid step get NaN.
    """
    xp = _xp(backend)
    if xp is np:
        P, G, V = (np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(valid, bool))
    else:
        P, G, V = (xp.as_tensor(pred, dtype=xp.float64), xp.as_tensor(gt, dtype=xp.float64),
                   xp.as_tensor(valid, dtype=xp.bool))
    K, M, T, C = P.shape
    if K * M == 0:   # no trace to score (e.g. nothing moves within this horizon): empty, not an error
        empty = np.zeros((K, M)) if xp is np else xp.zeros((K, M), dtype=xp.float64)
        return {name: empty for name in ("ADE", "FDE", "DTW", "Frechet")}
    zero = 0.0
    P = xp.where(V[None, ..., None], P, zero) if xp is np else xp.where(V[None, ..., None], P, xp.zeros((), dtype=P.dtype))
    G = xp.where(V[..., None], G, zero) if xp is np else xp.where(V[..., None], G, xp.zeros((), dtype=G.dtype))
    Vf = V.astype(np.float64) if xp is np else V.to(xp.float64)
    count = Vf.sum(-1)                                                   # (M,)
    has = count > 0
    safe_count = xp.where(has, count, xp.ones_like(count))
    nan = float("nan")

    dist = xp.sqrt(((P - G[None]) ** 2).sum(-1))                         # (K, M, T)
    ade = (dist * Vf[None]).sum(-1) / safe_count[None]
    t_idx = xp.arange(T)[None, :] if xp is np else xp.arange(T, device=P.device)[None, :]
    last = xp.where(V, t_idx, -1 * xp.ones_like(t_idx)).max(-1)
    last = last if xp is np else last.values
    last_safe = xp.where(last >= 0, last, xp.zeros_like(last))
    if xp is np:
        fde = np.take_along_axis(dist, np.broadcast_to(last_safe[None, :, None], (K, M, 1)), axis=-1)[..., 0]
    else:
        fde = xp.gather(dist, -1, last_safe[None, :, None].expand(K, M, 1))[..., 0]

    # DTW / Fréchet on time-compressed valid steps, batched over all K * M traces in chunks
    Pc, Vc = _compress(P, xp.broadcast_to(V[None], (K, M, T)) if xp is np else V[None].expand(K, M, T), xp)
    Gc, _ = _compress(G, V, xp)
    Pc = Pc.reshape(K * M, T, C)
    Gc_rep = (np.broadcast_to(Gc[None], (K, M, T, C)) if xp is np else Gc[None].expand(K, M, T, C)).reshape(K * M, T, C)
    L = (count.astype(np.int64) if xp is np else count.to(xp.int64))
    L_rep = (np.broadcast_to(L[None], (K, M)) if xp is np else L[None].expand(K, M)).reshape(-1)
    L_idx = xp.where(L_rep > 0, L_rep - 1, xp.zeros_like(L_rep))
    dtw_parts, fr_parts = [], []
    for s in range(0, K * M, chunk):
        dtw_chunk, fr_chunk = _alignment_costs(Pc[s: s + chunk], Gc_rep[s: s + chunk],
                                               L_idx[s: s + chunk], xp)
        dtw_parts.append(dtw_chunk)
        fr_parts.append(fr_chunk)
    cat = np.concatenate if xp is np else xp.cat
    dtw = cat(dtw_parts).reshape(K, M) / safe_count[None]
    frechet = cat(fr_parts).reshape(K, M)
    out = {"ADE": ade, "FDE": fde, "DTW": dtw, "Frechet": frechet}
    return {k: xp.where(has[None], v, nan * xp.ones_like(v)) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def _check_table_args(pred, gt, valid, horizons, topk, moving, image_size=None):
    g, v = _check_gt_valid(gt, valid)
    p = np.asarray(pred, dtype=np.float64)
    M, H1, C = g.shape
    if p.ndim != 4 or p.shape[1:] != (M, H1, C):
        raise ValueError(f"pred must be (K, M={M}, H+1={H1}, C={C}), got shape {p.shape}")
    topk = tuple(int(k) for k in topk)
    if not topk or min(topk) < 1:
        raise ValueError(f"topk must be a non-empty list of integers >= 1, got {topk}")
    if p.shape[0] < max(topk):
        raise ValueError(f"pred has K={p.shape[0]} samples, fewer than max(topk)={max(topk)}")
    if not np.all(np.isfinite(p[:, v])):
        raise ValueError("pred contains NaN or inf at steps marked valid in the ground truth")
    horizons = tuple(int(h) for h in horizons)
    if not horizons or min(horizons) < 1 or max(horizons) > H1 - 1:
        raise ValueError(f"horizons must be integers in [1, H={H1 - 1}], got {horizons}")
    if moving is None:
        if C != 3:
            raise ValueError("moving=None computes the filter from uvz ground truth; pass moving "
                             "explicitly for other spaces")
        keep = moving_mask(g, v, image_size)
    elif moving is False:
        keep = np.ones(M, bool)
    else:
        keep = np.asarray(moving)
        if keep.shape != (M,) or keep.dtype != bool:
            raise ValueError(f"moving must be None, False or a bool array of shape ({M},), got "
                             f"{keep.dtype} {keep.shape}")
    return p, g, v, horizons, topk, keep


def results_table(pred, gt, valid, horizons=DEFAULT_HORIZONS, topk=DEFAULT_TOPK, moving=None,
                  dims=None, backend: str = "numpy", image_size=None) -> dict:
    """The paper's results table for one space.

    pred (K, M, H+1, C) samples, gt (M, H+1, C), valid (M, H+1) bool. ``dims`` picks channels
    (e.g. (0, 1) for 2D uv out of uvz); ``moving``: None = the moving-point filter computed from
    ``gt`` (which must then be uvz; ``image_size`` (W, H) as in :func:`moving_mask`), False =
    every trace, or an (M,) bool mask.
    Returns {"top{k}/{ADE|FDE|DTW|Frechet}@{T}": mean over evaluated traces} (NaN if none).
    """
    p, g, v, horizons, topk, keep = _check_table_args(pred, gt, valid, horizons, topk, moving, image_size)
    if dims is not None:
        dims = list(dims)
        if not dims or min(dims) < 0 or max(dims) >= g.shape[-1]:
            raise ValueError(f"dims must index the {g.shape[-1]} channels, got {dims}")
        p, g = p[..., dims], g[..., dims]
    table = {}
    kmax = max(topk)
    for T in horizons:
        sl = slice(1, T + 1)
        rows = keep & v[:, sl].any(-1)
        errs = per_trace_errors(p[:kmax, rows][:, :, sl], g[rows][:, sl], v[rows][:, sl], backend)
        for name in METRIC_NAMES:
            e = np.asarray(errs[name].cpu() if backend == "torch" else errs[name])
            for k in topk:
                best = e[:k].min(axis=0)
                table[f"top{k}/{name}@{T}"] = float(best.mean()) if best.size else float("nan")
    return table


def full_results(pred_uvz, gt_uvz, valid, intrinsics=None, horizons=DEFAULT_HORIZONS, topk=DEFAULT_TOPK,
                 moving=None, backend: str = "numpy", image_size=None) -> dict:
    """Tables in every space: {"uv": 2D, "uvz": the paper's 3D, "xyz": metres (needs intrinsics)}
    plus "num_traces" (how many traces were evaluated) and "num_moving".

    The moving filter is computed once from ``gt_uvz`` (in the pixels of ``image_size``, default:
    the intrinsics' image, else the 640x480 reference) and shared by all spaces.
    """
    g, v = _check_gt_valid(gt_uvz, valid, "gt_uvz")
    if g.shape[-1] != 3:
        raise ValueError(f"gt_uvz must have 3 channels (u_n, v_n, depth_m), got {g.shape[-1]}")
    if image_size is None and intrinsics is not None:
        image_size = (intrinsics.width, intrinsics.height)
    keep = moving_mask(g, v, image_size) if moving is None else moving
    out = {
        "uv": results_table(pred_uvz, g, v, horizons, topk, keep, dims=(0, 1), backend=backend),
        "uvz": results_table(pred_uvz, g, v, horizons, topk, keep, backend=backend),
    }
    if intrinsics is not None:
        from mu0_core.camera import uvz_to_xyz

        p = np.asarray(pred_uvz, dtype=np.float64)
        pred_xyz = uvz_to_xyz(np.where(v[None, ..., None], p, 1.0), intrinsics)
        gt_xyz = uvz_to_xyz(np.where(v[..., None], g, 1.0), intrinsics)
        out["xyz"] = results_table(pred_xyz, gt_xyz, v, horizons, topk, keep, backend=backend)
    keep_arr = np.ones(g.shape[0], bool) if keep is False else np.asarray(keep, bool)
    out["num_moving"] = int(keep_arr.sum())
    out["num_traces"] = {int(T): int((keep_arr & v[:, 1: T + 1].any(-1)).sum()) for T in horizons}
    return out
