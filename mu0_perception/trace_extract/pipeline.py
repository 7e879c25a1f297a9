"""TraceExtract per-episode pipeline: keypoints -> 2D tracks -> 3D world tracks -> segments.

`extract_episode(episode, config)` returns `EpisodeTraces` (world-frame tracks, validity, entity
ids, camera poses, segments with captions, per-stage timings); `dataset.build_samples` turns them
into training tuples in each reference camera.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from mu0_perception import keypoints as kp
from mu0_core.camera import deproject
from mu0_perception.tracking import PointTracker, make_tracker
from mu0_perception.trace_extract import lift
from mu0_perception.trace_extract.episode import Episode
from mu0_perception.trace_extract.segment import (Captioner, RuleBasedCaptioner, Segment, SegmentEvidence,
                                                  motion_signal, segment_events)


class LowCoverageError(ValueError):
    """The episode's tracks cover too little of it to give supervision (the paper skips < 0.6)."""


@dataclass
class ExtractConfig:
    image_width: int | None = None        # processing + storage size; None = the episode's size
    image_height: int | None = None
    num_entities: int = 8                 # k-means clusters over the feature grid
    cell_px: int = 8                      # feature grid cell of the CPU backbone
    points_per_chunk: int = 192           # keypoint budget for each chunk's (re-)seeding
    motion_fraction: float = 0.5          # share of the budget seeded where the image changes
    motion_diff_threshold: float = 12.0   # grey-level change marking a pixel as changing
    min_points_per_entity: int = 4        # quota floor so small entities get points
    chunk_size: int = 8                   # re-seeding period in frames (paper: 60 at 10 fps)
    backbone: str = "local"               # keypoint features: "local" (CPU) | "transformers" (DINOv2-class)
    backbone_path: str = ""               # transformers: local checkpoint directory (config.json + weights)
    backbone_device: str = "cpu"
    backbone_image_size: int = 224
    tracker: str = "lk"
    fb_threshold_px: float = 1.0
    anchor_stride: int = 10               # global anchor frames for camera-motion estimation
    inlier_m: float = 0.01                # RANSAC inlier distance for static points
    max_step_m: float = 0.03              # a tracked point jumping farther in one step is a slip
    movement_fraction: float = kp.MOVEMENT_DIAGONAL_FRACTION   # moving: diameter > 5 % of the diagonal
    movement_depth_weight: float = kp.MOVEMENT_DEPTH_WEIGHT      # (u px, v px, 0.1 * z m), as the authors
    min_coverage: float = 0.6             # paper: episodes with coverage < 0.6 are skipped
    min_points_per_frame: int = 8         # a frame counts as covered with this many 3D points
    # small entities: regions above the dominant (table) plane that are small in the image (the
    # object, the fingers) each keep this many live points, tracked with a small LK window
    small_entity_points: int = 8          # 0 disables
    small_entity_max_area: float = 0.005  # fraction of the image area
    small_entity_min_height_m: float = 0.008
    small_entity_max_height_m: float = 0.25
    small_entity_win_size: int = 7        # LK window for small-entity points (a 15 px window on an
                                          # 8 px puck follows the table around it)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpisodeTraces:
    episode_id: str
    instruction: str
    task: str
    intrinsics: object
    xyz_world: np.ndarray       # (T, N, 3) metres
    valid: np.ndarray           # (T, N) bool (visible, depth ok, pose known)
    uv: np.ndarray              # (T, N, 2) pixels in each frame's own image
    entity_id: np.ndarray       # (N,) int32
    seed_frame: np.ndarray      # (N,) int32
    moving: np.ndarray          # (N,) bool, movement filter over the whole episode
    T_world_cam: np.ndarray     # (T, 4, 4)
    pose_source: str            # "bag" or "estimated"
    pose_ok: np.ndarray         # (T,) bool
    static: np.ndarray          # (N,) bool: inliers of the camera-motion fit (estimated only)
    coverage: float
    segments: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)   # stage -> seconds
    captioner: str = ""
    backbone: str = ""          # name of the keypoint feature backbone used


def _covered_mask(uv: np.ndarray, shape_hw, radius: int) -> np.ndarray:
    m = np.zeros(shape_hw, np.uint8)
    for u, v in uv[np.isfinite(uv).all(1)]:
        cv2.circle(m, (int(round(u)), int(round(v))), radius, 1, -1)
    return m.astype(bool)


def _change_mask(colors: np.ndarray, c: int, span: int, threshold: float) -> np.ndarray:
    """Pixels of frame c whose grey level changes by more than `threshold` against the frames
    one span before / after (the regions where something moves during this chunk)."""
    T = len(colors)
    g = cv2.GaussianBlur(cv2.cvtColor(colors[c], cv2.COLOR_RGB2GRAY), (5, 5), 0).astype(np.int16)
    diff = np.zeros(g.shape, np.int16)
    for o in (min(T - 1, c + span), max(0, c - span), min(T - 1, c + span // 2)):
        if o != c:
            go = cv2.GaussianBlur(cv2.cvtColor(colors[o], cv2.COLOR_RGB2GRAY), (5, 5), 0).astype(np.int16)
            diff = np.maximum(diff, np.abs(go - g))
    return diff > threshold


def _small_entity_seeds(depth: np.ndarray, intr, cfg: "ExtractConfig", live_uv: np.ndarray,
                        live_ent: np.ndarray, next_id: int, seed: int):
    """Seeds topping every small above-table region up to cfg.small_entity_points live points.

    Returns (uv (M, 2) float32, entity ids (M,), next free id). A region that already holds live
    points of a small entity keeps that entity's id (ids stay consistent over chunks); otherwise
    it gets a new id >= cfg.num_entities, apart from the k-means clusters."""
    H, W = depth.shape
    vv, uu = np.mgrid[0:H:4, 0:W:4]
    d = depth[::4, ::4]
    ok = np.isfinite(d)
    if ok.sum() < 50:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32), next_id
    pts = deproject(np.stack([uu[ok], vv[ok]], -1).astype(np.float64), d[ok], intr)
    normal, offset, frac = kp.fit_dominant_plane(pts, seed=seed)
    if frac < 0.1:  # no dominant support plane in view: nothing to stand on it
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32), next_id
    max_area = max(4, int(cfg.small_entity_max_area * H * W))
    labels = kp.small_entity_labels(depth, intr, (normal, offset), cfg.small_entity_min_height_m,
                                    cfg.small_entity_max_height_m, max_area_px=max_area)
    m = 3  # border margin for the LK window
    labels[:m], labels[-m:], labels[:, :m], labels[:, -m:] = 0, 0, 0, 0
    li = np.rint(live_uv).astype(int) if len(live_uv) else np.zeros((0, 2), int)
    inside = (li[:, 0] >= 0) & (li[:, 0] < W) & (li[:, 1] >= 0) & (li[:, 1] < H)
    live_lab = np.zeros(len(li), np.int32)
    live_lab[inside] = labels[li[inside, 1], li[inside, 0]]
    uv, ent = [], []
    for j in range(1, int(labels.max()) + 1):
        in_j = live_lab == j
        want = cfg.small_entity_points - int(in_j.sum())
        if want <= 0:
            continue
        vs, us = np.nonzero(labels == j)
        if len(vs) == 0:
            continue
        cand = np.stack([us, vs], 1).astype(np.float32)
        if in_j.any():  # keep new points off the pixels live points already sit on
            far = np.min(np.linalg.norm(cand[:, None] - live_uv[in_j][None], axis=-1), axis=1) >= 1.0
            cand = cand[far]
        idx = kp.farthest_point_sampling(cand, want, seed=seed + j)
        if len(idx) == 0:
            continue
        small_ids = live_ent[in_j][live_ent[in_j] >= cfg.num_entities]
        if len(small_ids):
            e = int(np.bincount(small_ids).argmax())
        else:
            e, next_id = next_id, next_id + 1
        uv.append(cand[idx])
        ent.append(np.full(len(idx), e, np.int32))
    if not uv:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32), next_id
    return np.concatenate(uv), np.concatenate(ent), next_id


def _cut_after_slips(xyz: np.ndarray, valid: np.ndarray, seed_frame: np.ndarray, max_step: float):
    T, N = valid.shape
    step = np.linalg.norm(np.diff(xyz, axis=0), axis=-1)           # (T-1, N), NaN if either invalid
    jump = np.nan_to_num(step, nan=0.0) > max_step
    # a gap (invalid frames) followed by a far-away reappearance is a slip too
    out = valid.copy()
    for n in np.nonzero(jump.any(0) | (valid.sum(0) < T))[0]:
        s = int(seed_frame[n])
        last = s
        for t in range(s + 1, T):
            if not out[t, n]:
                continue
            if np.linalg.norm(xyz[t, n] - xyz[last, n]) > max_step * (t - last):
                out[t:, n] = False
                break
            last = t
        last = s
        for t in range(s - 1, -1, -1):
            if not out[t, n]:
                continue
            if np.linalg.norm(xyz[t, n] - xyz[last, n]) > max_step * (last - t):
                out[:t + 1, n] = False
                break
            last = t
    return out


def extract_episode(episode: Episode, config: ExtractConfig | None = None,
                    backbone: kp.FeatureBackbone | None = None, tracker: PointTracker | None = None,
                    captioner: Captioner | None = None) -> EpisodeTraces:
    cfg = config or ExtractConfig()
    timings = {}
    W0, H0 = episode.image_size
    W, H = cfg.image_width or W0, cfg.image_height or H0
    ep = episode.resized(W, H)
    T = ep.num_frames
    backbone = backbone or kp.make_backbone(cfg.backbone, cell_px=cfg.cell_px, model_dir=cfg.backbone_path,
                                            device=cfg.backbone_device, image_size=cfg.backbone_image_size)
    if tracker is None:
        tracker = make_tracker(cfg.tracker, fb_threshold_px=cfg.fb_threshold_px)
        small_tracker = (make_tracker("lk", fb_threshold_px=cfg.fb_threshold_px,
                                      win_size=cfg.small_entity_win_size) if cfg.tracker == "lk" else tracker)
    else:  # a plugged-in (learned) tracker handles small points itself
        small_tracker = tracker
    captioner = captioner or RuleBasedCaptioner()

    # --- keypoints: entities over chunk-start frames, clustered jointly so ids agree over time
    t0 = time.perf_counter()
    chunk_starts = list(range(0, T - 1, max(1, cfg.chunk_size)))
    feats = backbone.features(ep.color[chunk_starts], ep.depth[chunk_starts])
    labels = kp.cluster_entities(feats, cfg.num_entities, seed=cfg.seed)
    timings["keypoints"] = time.perf_counter() - t0

    # --- tracking with re-seeding: each chunk start adds points where no live track is
    t_track = 0.0
    t_seed = 0.0
    all_uv = np.zeros((T, 0, 2), np.float32)
    all_vis = np.zeros((T, 0), bool)
    ents, seeds = [], []
    next_small_id = cfg.num_entities
    spacing = max(3, int(round(0.5 * np.sqrt(H * W / cfg.points_per_chunk))))
    for ci, c in enumerate(chunk_starts):
        t0 = time.perf_counter()
        live = all_uv[c][all_vis[c]]
        exclude = _covered_mask(live, (H, W), spacing) if len(live) else None
        budget = cfg.points_per_chunk if ci == 0 else int(cfg.points_per_chunk * (
            1.0 - (exclude.mean() if exclude is not None else 0.0)))
        valid_px = np.isfinite(ep.depth[c])
        # small moving things (gripper, object) hold the supervision: part of the budget goes to
        # pixels that change within this chunk's span, the rest to all entities by coverage
        changing = _change_mask(ep.color, c, cfg.chunk_size, cfg.motion_diff_threshold)
        n_motion = int(round(cfg.motion_fraction * budget)) if changing.any() else 0
        new_m = kp.select_keypoints(labels[ci], (H, W), n_motion, valid_px & changing, 1,
                                    exclude_mask=exclude, frame_index=c, seed=cfg.seed + c)
        taken = _covered_mask(new_m.uv, (H, W), spacing)
        exclude2 = taken if exclude is None else (exclude | taken)
        new_r = kp.select_keypoints(labels[ci], (H, W), budget - len(new_m.uv), valid_px,
                                    cfg.min_points_per_entity, exclude_mask=exclude2, frame_index=c,
                                    seed=cfg.seed + c + 7919)
        new = kp.Keypoints(np.concatenate([new_m.uv, new_r.uv]),
                           np.concatenate([new_m.entity_id, new_r.entity_id]), c)
        small_uv, small_ent = np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
        if cfg.small_entity_points > 0:
            prev_ent = np.concatenate(ents) if ents else np.zeros(0, np.int32)
            small_uv, small_ent, next_small_id = _small_entity_seeds(
                ep.depth[c], ep.intrinsics, cfg, all_uv[c][all_vis[c]], prev_ent[all_vis[c]],
                next_small_id, cfg.seed + c)
        t_seed += time.perf_counter() - t0
        for pts, ids, trk in ((new.uv, new.entity_id, tracker), (small_uv, small_ent, small_tracker)):
            if len(pts) == 0:
                continue
            t0 = time.perf_counter()
            tr = trk.track(ep.color, np.full(len(pts), c), pts)
            t_track += time.perf_counter() - t0
            all_uv = np.concatenate([all_uv, tr.uv], axis=1)
            all_vis = np.concatenate([all_vis, tr.visible], axis=1)
            ents.append(ids)
            seeds.append(np.full(len(pts), c, np.int32))
    timings["keypoints"] += t_seed
    timings["tracking"] = t_track
    entity_id = np.concatenate(ents) if ents else np.zeros(0, np.int32)
    seed_frame = np.concatenate(seeds) if seeds else np.zeros(0, np.int32)

    # --- 3D: lift, world frame, slip removal
    t0 = time.perf_counter()
    xyz_cam, valid = lift.lift_tracks(all_uv, all_vis, ep.depth, ep.intrinsics)
    N = xyz_cam.shape[1]
    static = np.zeros(N, bool)
    if ep.T_world_cam is not None:
        poses, pose_ok, source = ep.T_world_cam.astype(np.float64), np.ones(T, bool), "bag"
    else:
        poses, pose_ok, static = lift.estimate_camera_poses(xyz_cam, valid, cfg.anchor_stride,
                                                            cfg.inlier_m, seed=cfg.seed)
        source = "estimated"
    valid &= pose_ok[:, None]
    xyz_world = lift.to_world(np.nan_to_num(xyz_cam), poses)
    xyz_world[~valid] = np.nan
    # a point that jumps more than max_step_m in one frame has slipped (LK dragged it across a
    # depth edge, e.g. from the table onto the passing gripper): everything after the jump, seen
    # from the seed frame outwards, belongs to another surface and is dropped
    valid = _cut_after_slips(xyz_world, valid, seed_frame, cfg.max_step_m)
    xyz_world[~valid] = np.nan

    # movement filter (mu0_core.metrics.moving_points, the one rule) on each track as seen from
    # its seed camera, over its first 64 frames from the seed frame on
    moving = np.zeros(N, bool)
    if N:
        for c in np.unique(seed_frame):
            sel = seed_frame == c
            pc = lift.world_to_camera(xyz_world[c:, sel], poses[c])  # (T - c, n, 3)
            uvp, z = lift.project(pc, ep.intrinsics)
            v = valid[c:, sel] & (z > 0)
            moving[sel] = kp.movement_filter(np.moveaxis(uvp, 0, 1), np.moveaxis(z, 0, 1), v.T, (W, H),
                                             cfg.movement_fraction, cfg.movement_depth_weight)
    per_frame = valid.sum(1)
    coverage = float(np.mean(per_frame >= cfg.min_points_per_frame)) if T else 0.0
    timings["lift_3d"] = time.perf_counter() - t0

    # --- segmentation + captions
    t0 = time.perf_counter()
    speed = motion_signal(xyz_world, valid, moving)
    segments = segment_events(speed)
    for s in segments:
        disp, counts = {}, {}
        ref = poses[s.start]
        for e in np.unique(entity_id[moving]) if moving.any() else []:
            sel = moving & (entity_id == e)
            a, b = xyz_world[s.start, sel], xyz_world[s.end - 1, sel]
            ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
            if ok.sum() == 0:
                continue
            d_world = np.median(b[ok] - a[ok], axis=0)
            disp[int(e)] = ref[:3, :3].T @ d_world
            counts[int(e)] = int(ok.sum())
        g = ep.gripper
        ev = SegmentEvidence(s.start, s.end, disp, counts,
                             None if g is None else float(g[s.start]),
                             None if g is None else float(g[s.end - 1]), ep.task)
        s.caption = captioner.caption(ev)
    timings["segment_caption"] = time.perf_counter() - t0

    return EpisodeTraces(ep.episode_id, ep.instruction, ep.task, ep.intrinsics, xyz_world, valid,
                         all_uv, entity_id.astype(np.int32), seed_frame, moving, poses, source, pose_ok,
                         static, coverage, segments, timings, captioner.name,
                         getattr(backbone, "name", type(backbone).__name__))
