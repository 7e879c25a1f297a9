"""3D stage of TraceExtract: lift 2D tracks with depth, and put them in one world frame.

World frame: the bag's camera pose (T_world_cam per frame) when recorded; otherwise the camera
motion is estimated from the tracked points themselves. Estimation follows the paper's "global
anchors, not chained" idea: anchor frames every `anchor_stride` frames are registered to anchor 0
(directly where they share enough points, else through the already-registered anchor with the
largest overlap), and every other frame is registered straight to its nearest registered anchor
with a robust (RANSAC + Kabsch) SE(3) fit on static points — so errors never accumulate frame to
frame. Moving points are the fit's outliers.
"""
from __future__ import annotations

import numpy as np

from mu0_core import camera
from mu0_core.camera import CameraIntrinsics
from mu0_core.query_geometry import depth_at_pixels


def deproject(uv: np.ndarray, z: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Pixels (..., 2) + depth (...) -> camera xyz (..., 3) via `mu0_core.camera.deproject`
    (the one place for that math); rows with a non-finite pixel give NaN instead of raising,
    because tracks carry NaN where a point is not visible."""
    uv = np.asarray(uv, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    out = np.full(uv.shape[:-1] + (3,), np.nan)
    good = np.isfinite(uv).all(-1)
    if good.any():
        out[good] = camera.deproject(uv[good], z[good], intr)
    return out


def project(xyz: np.ndarray, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Camera xyz (..., 3) -> (pixels (..., 2), depth (...)) via `mu0_core.camera.project`;
    non-finite rows give NaN pixels and NaN depth, points behind the camera NaN pixels."""
    p = np.asarray(xyz, dtype=np.float64)
    uv = np.full(p.shape[:-1] + (2,), np.nan)
    z = np.full(p.shape[:-1], np.nan)
    good = np.isfinite(p).all(-1)
    if good.any():
        uv[good], z[good] = camera.project(p[good], intr)
    return uv, z


def lift_tracks(uv: np.ndarray, visible: np.ndarray, depths: np.ndarray, intr: CameraIntrinsics,
                min_depth: float = 0.05, max_depth: float = 10.0):
    """(T, N, 2) tracks + (T, H, W) depth -> camera xyz (T, N, 3) and valid (T, N).

    Depth at a track point is `mu0_core.query_geometry.depth_at_pixels`, the rule the runtime
    samples its query depth with, so a training anchor and a served anchor agree pixel for pixel."""
    T, N = visible.shape
    xyz = np.full((T, N, 3), np.nan)
    z = np.stack([depth_at_pixels(depths[t], uv[t]) for t in range(T)])
    valid = visible & np.isfinite(z) & (z > min_depth) & (z < max_depth)
    xyz[valid] = deproject(uv[valid], z[valid], intr)
    return xyz, valid


def kabsch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares rigid transform (4x4) mapping src (M, 3) onto dst (M, 3)."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    cs, cd = w @ src, w @ dst
    Hm = (src - cs).T @ ((dst - cd) * w[:, None])
    U, _, Vt = np.linalg.svd(Hm)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = cd - R @ cs
    return M


def ransac_se3(src: np.ndarray, dst: np.ndarray, inlier_m: float = 0.01, iters: int = 200,
               seed: int = 0, min_inliers: int = 8):
    """Robust SE(3) src -> dst. Returns (4x4 or None, inlier mask)."""
    n = len(src)
    if n < max(3, min_inliers):
        return None, np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    best = np.zeros(n, bool)
    for _ in range(iters):
        idx = rng.choice(n, 3, replace=False)
        M = kabsch(src[idx], dst[idx])
        r = np.linalg.norm(src @ M[:3, :3].T + M[:3, 3] - dst, axis=1)
        inl = r < inlier_m
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < min_inliers:
        return None, best
    for _ in range(2):  # refine on inliers
        M = kabsch(src[best], dst[best])
        r = np.linalg.norm(src @ M[:3, :3].T + M[:3, 3] - dst, axis=1)
        best = r < inlier_m
        if best.sum() < min_inliers:
            return None, best
    return kabsch(src[best], dst[best]), best


def estimate_camera_poses(xyz_cam: np.ndarray, valid: np.ndarray, anchor_stride: int = 10,
                          inlier_m: float = 0.01, min_common: int = 12, seed: int = 0):
    """Camera poses T_world_cam (T, 4, 4) with world = camera frame of frame 0, from tracked 3D
    points (T, N, 3) in each frame's camera. Returns (poses, pose_ok (T,), static (N,) bool: points
    that were inliers of most fits)."""
    T, N, _ = xyz_cam.shape
    poses = np.tile(np.eye(4), (T, 1, 1))
    ok = np.zeros(T, bool)
    ok[0] = True
    inlier_votes = np.zeros(N)
    fit_votes = np.zeros(N)

    def register(src_t, dst_t):
        """T_dst_src fitted on points visible in both."""
        common = valid[src_t] & valid[dst_t]
        if common.sum() < min_common:
            return None
        M, inl = ransac_se3(xyz_cam[src_t, common], xyz_cam[dst_t, common], inlier_m, seed=seed + src_t,
                            min_inliers=min_common // 2)
        if M is not None:
            idx = np.nonzero(common)[0]
            inlier_votes[idx[inl]] += 1
            fit_votes[idx] += 1
        return M

    anchors = list(range(0, T, max(1, anchor_stride)))
    registered = [0]
    for a in anchors[1:]:
        # direct to anchor 0 first (no chaining); else via the registered anchor sharing most points
        cands = sorted(registered, key=lambda r: (r != 0, -int((valid[a] & valid[r]).sum())))
        for r in cands:
            M = register(a, r)  # T_r_a
            if M is not None:
                poses[a] = poses[r] @ M
                ok[a] = True
                registered.append(a)
                break
    reg = np.array(registered)
    for t in range(T):
        if t in registered:
            continue
        for r in reg[np.argsort(np.abs(reg - t))][:3]:
            M = register(t, int(r))
            if M is not None:
                poses[t] = poses[r] @ M
                ok[t] = True
                break
    static = (fit_votes > 0) & (inlier_votes >= 0.7 * np.maximum(fit_votes, 1))
    return poses, ok, static


def to_world(xyz_cam: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """(T, N, 3) camera points + (T, 4, 4) poses -> (T, N, 3) world points."""
    return np.einsum("tij,tnj->tni", T_world_cam[:, :3, :3], xyz_cam) + T_world_cam[:, None, :3, 3]


def world_to_camera(xyz_world: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """(..., 3) world points into the camera with pose T_world_cam (4, 4)."""
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    return (np.asarray(xyz_world) - t) @ R
