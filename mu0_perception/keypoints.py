"""Keypoint selection for TraceExtract: entities, per-entity quotas, farthest-point sampling,
and the movement filter.

Stages (after the μ_0 paper's TraceExtract, re-implemented for CPU):
1. A `FeatureBackbone` turns each frame into a coarse feature grid. The CPU default
   (`LocalFeatureBackbone`) uses local appearance (Lab colour, gradient), depth and motion
   (per-pixel temporal change over the episode); a pretrained ViT (DINOv2 via
   `TransformersBackbone`, from a local checkpoint directory) is selected with `make_backbone`
   (`mu0 extract --backbone transformers --backbone-path DIR`).
2. `cluster_entities` clusters the grid cells of several frames jointly (k-means), so entity ids
   are consistent over time.
3. `allocate_quota` splits the keypoint budget over entities in proportion to their coverage,
   with a floor for small entities (a small object must not be starved by a large background).
4. `farthest_point_sampling` spreads each entity's points over its area.
5. `movement_filter` is `mu0_core.metrics.moving_points`, the one moving-point rule shared with
   training and the metrics: diameter of (u px, v px, 0.1 * depth m) over the first 64 steps
   above 5 % of the image diagonal (the authors' rule).

Pure numpy / OpenCV; no ROS.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mu0_core.metrics import DEFAULT_DEPTH_WEIGHT as MOVEMENT_DEPTH_WEIGHT
from mu0_core.metrics import MOVING_DIAGONAL_FRACTION as MOVEMENT_DIAGONAL_FRACTION  # noqa: F401
from mu0_core.metrics import moving_points as movement_filter  # noqa: F401  the one filter


class FeatureBackbone(ABC):
    """Maps a batch of frames to per-cell feature vectors on a (gh, gw) grid."""

    name: str = "backbone"

    @abstractmethod
    def features(self, colors: np.ndarray, depths: np.ndarray | None) -> np.ndarray:
        """colors (T, H, W, 3) uint8, depths (T, H, W) float32 m or None -> (T, gh, gw, C) float32."""


class LocalFeatureBackbone(FeatureBackbone):
    """CPU features without learned weights: mean Lab colour, gradient energy, depth and motion
    per grid cell. Motion is the cell's temporal standard deviation of intensity over the whole
    clip, which separates the arm and manipulated objects from a static scene."""

    name = "local-lab-depth-motion"

    def __init__(self, cell_px: int = 8, color_weight: float = 1.0, depth_weight: float = 1.5,
                 motion_weight: float = 1.5, position_weight: float = 0.5):
        if cell_px < 1:
            raise ValueError(f"cell_px must be >= 1, got {cell_px}")
        self.cell_px = int(cell_px)
        self.weights = (color_weight, depth_weight, motion_weight, position_weight)

    def features(self, colors, depths=None):
        colors = np.asarray(colors)
        if colors.ndim != 4 or colors.shape[-1] != 3:
            raise ValueError(f"colors must be (T, H, W, 3), got {colors.shape}")
        T, H, W, _ = colors.shape
        c = self.cell_px
        gh, gw = H // c, W // c
        if gh < 1 or gw < 1:
            raise ValueError(f"image {W}x{H} smaller than one {c}px cell")
        wc, wd, wm, wp = self.weights

        def pool(x):  # (T, H, W, k) -> (T, gh, gw, k) cell means
            x = x[:, :gh * c, :gw * c]
            return x.reshape(T, gh, c, gw, c, -1).mean(axis=(2, 4))

        lab = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in colors]).astype(np.float32) / 255.0
        gray = lab[..., 0]
        gx = np.stack([cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) for g in gray])
        gy = np.stack([cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) for g in gray])
        grad = np.sqrt(gx * gx + gy * gy)[..., None]
        motion = np.broadcast_to(gray.std(axis=0)[None, ..., None], gray.shape + (1,))
        feats = [wc * pool(lab), 0.5 * wc * pool(grad), wm * 4.0 * pool(motion)]
        if depths is not None:
            d = np.asarray(depths, dtype=np.float32)
            finite = np.isfinite(d)
            med = float(np.median(d[finite])) if finite.any() else 1.0
            d = np.where(finite, d, med) / max(med, 1e-3)
            feats.append(wd * pool(d[..., None]))
        yy, xx = np.meshgrid(np.linspace(0, 1, gh), np.linspace(0, 1, gw), indexing="ij")
        pos = np.broadcast_to(np.stack([yy, xx], -1)[None], (T, gh, gw, 2)).astype(np.float32)
        feats.append(wp * pos)
        return np.concatenate(feats, axis=-1).astype(np.float32)


class TransformersBackbone(FeatureBackbone):
    """A pretrained ViT (e.g. DINOv2) from a local transformers checkpoint directory
    (`config.json` + weights, as `save_pretrained` writes them); its patch tokens become the
    feature grid. Frames are resized to image_size x image_size (a multiple of the patch size)
    and normalised with the ImageNet mean / std. Tested on a tiny randomly initialised Dinov2
    built from a transformers config (test/test_extract_backbone.py); with real DINOv2 weights on
    disk (e.g. a `facebook/dinov2-small` snapshot) the same code runs, on a GPU with
    device="cuda". Selected with `mu0 extract --backbone transformers --backbone-path DIR`."""

    def __init__(self, model_dir: str, device: str = "cpu", image_size: int = 224):
        import torch
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(model_dir).to(device).eval()
        self.device = device
        self.patch = int(getattr(self.model.config, "patch_size", 14))
        self.image_size = max(self.patch, int(image_size) // self.patch * self.patch)
        self.name = f"transformers:{Path(model_dir).name}"
        self._torch = torch

    def features(self, colors, depths=None):
        torch = self._torch
        colors = np.asarray(colors)
        if colors.ndim != 4 or colors.shape[-1] != 3:
            raise ValueError(f"colors must be (T, H, W, 3), got {colors.shape}")
        x = torch.as_tensor(colors, dtype=torch.float32, device=self.device)
        x = x.permute(0, 3, 1, 2) / 255.0
        x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                            align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():
            out = self.model(pixel_values=(x - mean) / std).last_hidden_state
        g = self.image_size // self.patch
        tokens = out[:, -g * g:]  # drop CLS / register tokens
        return tokens.reshape(len(colors), g, g, -1).float().cpu().numpy()


BACKBONES = ("local", "transformers")
_LOADED: dict = {}


def make_backbone(name: str = "local", cell_px: int = 8, model_dir: str = "", device: str = "cpu",
                  image_size: int = 224) -> FeatureBackbone:
    """The keypoint feature backbone by name: "local" (CPU, no weights) or "transformers"
    (a local DINOv2-class checkpoint directory, `model_dir`). A transformers model is loaded once
    per process and reused (a batch worker processes many episodes)."""
    if name == "local":
        return LocalFeatureBackbone(cell_px=cell_px)
    if name == "transformers":
        if not model_dir or not (Path(model_dir) / "config.json").is_file():
            raise ValueError(f"backbone 'transformers' needs a model directory with config.json, got {model_dir!r}")
        key = (str(Path(model_dir).resolve()), device, int(image_size))
        if key not in _LOADED:
            _LOADED[key] = TransformersBackbone(model_dir, device=device, image_size=image_size)
        return _LOADED[key]
    raise ValueError(f"backbone: unknown name {name!r}; one of {BACKBONES}")


def cluster_entities(features: np.ndarray, num_entities: int = 8, seed: int = 0,
                     attempts: int = 2) -> np.ndarray:
    """Jointly cluster (T, gh, gw, C) features into entity labels (T, gh, gw) int32.

    Clustering all frames together keeps ids consistent over time; features are standardised so
    no channel dominates by scale."""
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 4:
        raise ValueError(f"features must be (T, gh, gw, C), got {f.shape}")
    if num_entities < 1:
        raise ValueError(f"num_entities must be >= 1, got {num_entities}")
    flat = f.reshape(-1, f.shape[-1])
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    k = int(min(num_entities, len(flat)))
    cv2.setRNGSeed(seed)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    _, labels, _ = cv2.kmeans(flat.astype(np.float32), k, None, crit, attempts, cv2.KMEANS_PP_CENTERS)
    return labels.reshape(f.shape[:3]).astype(np.int32)


def allocate_quota(coverage: dict[int, float], total: int, min_per_entity: int = 4) -> dict[int, int]:
    """Split `total` keypoints over entities proportional to coverage (pixel count or fraction),
    giving every entity at least `min_per_entity` (when the budget allows). Sums to `total`
    exactly when total >= min_per_entity * len(coverage)."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    ids = [k for k, v in coverage.items() if v > 0]
    if not ids or total == 0:
        return {k: 0 for k in coverage}
    floor = min(min_per_entity, total // len(ids))
    quota = {k: floor for k in ids}
    rest = total - floor * len(ids)
    cov = np.array([coverage[k] for k in ids], dtype=float)
    share = rest * cov / cov.sum()
    extra = np.floor(share).astype(int)
    # largest remainders get the leftover points, so the sum is exact
    for i in np.argsort(-(share - extra))[: rest - int(extra.sum())]:
        extra[i] += 1
    for k, e in zip(ids, extra):
        quota[k] += int(e)
    return {k: quota.get(k, 0) for k in coverage}


def farthest_point_sampling(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k points (or all, if fewer) spread by greedy farthest-point sampling."""
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if k <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    dist = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[i], axis=1))
    return np.array(chosen, dtype=np.int64)


@dataclass
class Keypoints:
    uv: np.ndarray          # (N, 2) float32 pixels in the seed frame
    entity_id: np.ndarray   # (N,) int32
    frame_index: int        # the frame the points were seeded in


def select_keypoints(labels_frame: np.ndarray, image_hw: tuple[int, int], total: int,
                     valid_mask: np.ndarray | None = None, min_per_entity: int = 4,
                     exclude_mask: np.ndarray | None = None, frame_index: int = 0,
                     seed: int = 0) -> Keypoints:
    """Pick `total` keypoints in one frame from its entity label grid (gh, gw).

    valid_mask (H, W): pixels allowed (e.g. finite depth, textured); exclude_mask (H, W): pixels
    already covered by live tracks (re-seeding only fills uncovered regions)."""
    H, W = image_hw
    lab = cv2.resize(np.asarray(labels_frame, dtype=np.int32).astype(np.float32), (W, H),
                     interpolation=cv2.INTER_NEAREST).astype(np.int32)
    ok = np.ones((H, W), bool) if valid_mask is None else np.asarray(valid_mask, bool).copy()
    if exclude_mask is not None:
        ok &= ~np.asarray(exclude_mask, bool)
    # keep away from the border: LK windows and bilinear depth lookups need margin
    m = 4
    ok[:m], ok[-m:], ok[:, :m], ok[:, -m:] = False, False, False, False
    ids, counts = np.unique(lab[ok], return_counts=True)
    quota = allocate_quota({int(i): float(c) for i, c in zip(ids, counts)}, total, min_per_entity)
    uv, ent = [], []
    for e, q in quota.items():
        if q == 0:
            continue
        vs, us = np.nonzero(ok & (lab == e))
        cand = np.stack([us, vs], 1).astype(np.float32)
        if len(cand) > 4000:  # FPS cost is O(n k); a random subset keeps the spread
            cand = cand[np.random.default_rng(seed + e).choice(len(cand), 4000, replace=False)]
        idx = farthest_point_sampling(cand, q, seed=seed + e)
        uv.append(cand[idx])
        ent.append(np.full(len(idx), e, np.int32))
    if not uv:
        return Keypoints(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), frame_index)
    return Keypoints(np.concatenate(uv).astype(np.float32), np.concatenate(ent), frame_index)


# --------------------------------------------------------------------------- small entities
# A k-means cluster over 8 px cells cannot isolate a puck that is 8 px wide, and an entity that
# owns no cluster gets no quota. Depth can: whatever stands above the dominant support plane (the
# table) and is small in the image is an object (or the fingers) and becomes its own entity with
# a guaranteed number of points — the paper's per-entity quota with a minimum for small entities.

def fit_dominant_plane(xyz: np.ndarray, inlier_m: float = 0.01, iters: int = 200,
                       seed: int = 0) -> tuple[np.ndarray, float, float]:
    """RANSAC plane through camera-frame points (M, 3). Returns (unit normal, offset, inlier
    fraction) with n . x + offset = signed height, oriented so the camera origin is on the
    positive side (above a table the camera looks down on)."""
    p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    p = p[np.isfinite(p).all(1)]
    if len(p) < 3:
        raise ValueError(f"xyz: need >= 3 finite points to fit a plane, got {len(p)}")
    rng = np.random.default_rng(seed)
    tri = p[rng.integers(0, len(p), size=(iters, 3))]                     # (iters, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    good = norm > 1e-12
    if not good.any():
        raise ValueError("xyz: points are degenerate (collinear), no plane")
    n, tri = n[good] / norm[good, None], tri[good]
    off = -np.einsum("ij,ij->i", n, tri[:, 0])
    counts = (np.abs(p @ n.T + off) < inlier_m).sum(0)
    b = int(np.argmax(counts))
    inl = np.abs(p @ n[b] + off[b]) < inlier_m
    # least-squares refinement on the inliers (smallest principal axis)
    c = p[inl].mean(0)
    normal = np.linalg.svd(p[inl] - c, full_matrices=False)[2][-1]
    offset = -float(normal @ c)
    if offset < 0:
        normal, offset = -normal, -offset
    frac = float(np.mean(np.abs(p @ normal + offset) < inlier_m))
    return normal, offset, frac


def small_entity_labels(depth: np.ndarray, intr, plane: tuple[np.ndarray, float],
                        min_height_m: float = 0.008, max_height_m: float = 0.25,
                        min_area_px: int = 4, max_area_px: int = 400,
                        depth_edge_m: float = 0.03) -> np.ndarray:
    """Label image (H, W) int32 of small connected regions standing above the plane: 0 = none,
    1..K = components with min_area_px <= area <= max_area_px. Depth edges (a neighbour more than
    depth_edge_m nearer/farther) split regions, so fingers overlapping a tray wall in the image
    stay separate from it."""
    from mu0_core.camera import deproject

    d = np.asarray(depth, dtype=np.float32)
    H, W = d.shape
    vv, uu = np.mgrid[0:H, 0:W]
    ok = np.isfinite(d)
    xyz = deproject(np.stack([uu, vv], -1).astype(np.float64), np.where(ok, d, 0.0), intr)
    normal, offset = plane
    h = xyz @ np.asarray(normal, float) + float(offset)
    mask = ok & (h > min_height_m) & (h < max_height_m)
    dz = np.where(ok, d, 0.0)
    kernel = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(dz, kernel) - cv2.erode(dz, kernel)) > depth_edge_m
    mask &= ~edge
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = np.zeros((H, W), np.int32)
    k = 0
    for i in range(1, n):
        if min_area_px <= stats[i, cv2.CC_STAT_AREA] <= max_area_px:
            k += 1
            out[lab == i] = k
    return out
