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
    tracker: str = "lk"
    fb_threshold_px: float = 1.0
    anchor_stride: int = 10               # global anchor frames for camera-motion estimation
    inlier_m: float = 0.01                # RANSAC inlier distance for static points
    max_step_m: float = 0.03              # a tracked point jumping farther in one step is a slip
    movement_threshold_px: float | None = None   # None = paper's 40 px at 640 width, scaled
    movement_depth_weight: float = kp.MOVEMENT_DEPTH_WEIGHT
    min_coverage: float = 0.6             # paper: episodes with coverage < 0.6 are skipped
    min_points_per_frame: int = 8         # a frame counts as covered with this many 3D points
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
    backbone = backbone or kp.LocalFeatureBackbone(cell_px=cfg.cell_px)
    tracker = tracker or make_tracker(cfg.tracker, fb_threshold_px=cfg.fb_threshold_px)
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
        t_seed += time.perf_counter() - t0
        if len(new.uv) == 0:
            continue
        t0 = time.perf_counter()
        tr = tracker.track(ep.color, np.full(len(new.uv), c), new.uv)
        t_track += time.perf_counter() - t0
        all_uv = np.concatenate([all_uv, tr.uv], axis=1)
        all_vis = np.concatenate([all_vis, tr.visible], axis=1)
        ents.append(new.entity_id)
        seeds.append(np.full(len(new.uv), c, np.int32))
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

    # movement filter on each track as seen from its seed camera
    moving = np.zeros(N, bool)
    if N:
        thr = cfg.movement_threshold_px
        for c in np.unique(seed_frame):
            sel = seed_frame == c
            pc = lift.world_to_camera(xyz_world[:, sel], poses[c])  # (T, n, 3)
            uvp, z = lift.project(pc, ep.intrinsics)
            v = valid[:, sel] & (z > 0)
            moving[sel] = kp.movement_filter(np.moveaxis(uvp, 0, 1), np.moveaxis(z, 0, 1), v.T,
                                             ep.intrinsics.fx, W, thr, cfg.movement_depth_weight)
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
                         static, coverage, segments, timings, captioner.name)
