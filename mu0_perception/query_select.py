"""Online query selection for the running model: which pixels to ask μ_0 about, frame after frame.

Four sources of queries (`QueryTracker.mode`):
* ``objects``   — points on what stands on the work surface (`mu0_perception.tabletop`: support
  plane, objects above it, the robot's own pixels masked out by its kinematics when known), one
  entity ``object_<k>`` per connected object, every object queried; falls back to ``automatic``
  when the frame shows no surface or nothing on it. Where the action happens, so where an action
  expert needs traces;
* ``automatic`` — corner features (Shi-Tomasi) on pixels with valid depth, grouped into
  entities ``cluster_<k>`` by k-means on (u, v, depth);
* ``grid``      — a rows x cols lattice over the image (entity ``grid``);
* ``given``     — pixels from outside (mu0_msgs/QueryPoints), with their ids and entities.

``objects`` mode parses the static scene (support plane, the work surface's image region) every
``objects_refresh_frames`` frames and when queries were lost, not every frame; whether a followed
query still sits on an object is read from each frame's own depth at its pixels (the same rule as
the whole object mask), and the whole mask is built only when new queries are seeded.

Queries keep their id while the physical point is followed from frame to frame by pyramidal
Lucas-Kanade optical flow, so `QueryHistory` can hand the model each query's past positions
(the (N, 8, 3) history μ_0 is conditioned on). Lost automatic/grid queries are replaced by new
ones with fresh ids; lost given queries are simply dropped until new ones are given.

Occlusion by the robot (`update(..., hold_occluded=N)`): a query lost where the robot's own pixels
now cover it (the object the hand approaches disappears under the hand's silhouette seconds before
the grasp) is held at its last pixel with its last measured depth (`QuerySet.depth`, so it is not
read off the hand in front of it) for up to N frames, keeping its id and entity, instead of being
dropped. It resumes as an ordinary query when optical flow finds it again off the robot.
Pure numpy + OpenCV; no ROS.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_core.query_geometry import depth_at_pixels
from mu0_core.trace_spec import HISTORY_STEPS

MODES = ("objects", "automatic", "grid", "given")
OBJECT_MASK_WIDTH = 160      # `objects` mode parses the scene at <= this width (the puck stays >= 2 px)
PLANE_RETRY_FRAMES = 30      # without an extrinsic, a frame with no support plane is retried this often
OBJECTS_REFRESH_FRAMES = 5   # `objects` mode re-parses the scene (plane, surface) at least this often


@dataclass
class _Scene:
    """What `objects` mode knows of the static scene: the support plane and the work surface's
    image region at the decimated scale (factor `f`, intrinsics `intr`); plane None = no surface."""
    key: tuple
    frame: int
    f: int
    intr: CameraIntrinsics
    plane: object
    region: np.ndarray | None


@dataclass
class QuerySet:
    query_ids: np.ndarray   # (N,) uint32
    pixels: np.ndarray      # (N, 2) float32, u right / v down
    entities: list          # N strings
    depth: np.ndarray | None = None   # (N,) metres along the optical axis where the query's depth is
                                      # known without the image (NaN: read it from the image); None: all from the image

    def __post_init__(self):
        self.query_ids = np.asarray(self.query_ids, dtype=np.uint32).reshape(-1)
        self.pixels = np.asarray(self.pixels, dtype=np.float32).reshape(-1, 2)
        self.entities = [str(e) for e in self.entities]
        n = len(self.query_ids)
        if len(self.pixels) != n or len(self.entities) != n:
            raise ValueError(f"QuerySet: query_ids ({n}), pixels ({len(self.pixels)}) and entities "
                             f"({len(self.entities)}) must have the same length")
        if len(set(self.query_ids.tolist())) != n:
            raise ValueError("QuerySet.query_ids: ids must be unique")
        if self.depth is not None:
            self.depth = np.asarray(self.depth, dtype=np.float32).reshape(-1)
            if len(self.depth) != n:
                raise ValueError(f"QuerySet.depth: {len(self.depth)} values for {n} queries")

    def __len__(self) -> int:
        return len(self.query_ids)

    def subset(self, keep: np.ndarray) -> "QuerySet":
        keep = np.asarray(keep, dtype=bool)
        return QuerySet(self.query_ids[keep], self.pixels[keep], [e for e, k in zip(self.entities, keep) if k],
                        None if self.depth is None else self.depth[keep])


def to_gray(color: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(color), cv2.COLOR_RGB2GRAY)


def select_automatic(color: np.ndarray, depth: np.ndarray | None, max_points: int = 32,
                     min_distance: float = 12.0, quality: float = 0.01,
                     exclude_px: np.ndarray | None = None) -> np.ndarray:
    """Up to `max_points` corner pixels (K, 2) on valid depth, away from `exclude_px`."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    gray = to_gray(color)
    h, w = gray.shape
    mask = np.full((h, w), 255, np.uint8)
    if depth is not None:
        mask[~(np.isfinite(depth) & (depth > 0))] = 0
    border = max(2, int(min_distance // 2))
    mask[:border] = 0
    mask[-border:] = 0
    mask[:, :border] = 0
    mask[:, -border:] = 0
    if exclude_px is not None:
        for u, v in np.asarray(exclude_px).reshape(-1, 2):
            cv2.circle(mask, (int(round(u)), int(round(v))), int(min_distance), 0, -1)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=int(max_points), qualityLevel=float(quality),
                                      minDistance=float(min_distance), mask=mask, blockSize=5)
    if corners is None:
        return np.zeros((0, 2), np.float32)
    return corners.reshape(-1, 2).astype(np.float32)


def select_grid(width: int, height: int, rows: int, cols: int, margin: float = 0.1) -> np.ndarray:
    """(rows*cols, 2) pixel centres of a lattice inset by `margin` (fraction of the image)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid rows/cols must be >= 1, got {rows}x{cols}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"grid margin must be in [0, 0.5), got {margin}")
    us = np.linspace(margin * (width - 1), (1 - margin) * (width - 1), cols)
    vs = np.linspace(margin * (height - 1), (1 - margin) * (height - 1), rows)
    uu, vv = np.meshgrid(us, vs)
    return np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float32)


def cluster_entities(pixels: np.ndarray, depth: np.ndarray | None, width: int, height: int,
                     num_entities: int) -> list[str]:
    """Group points into `cluster_<k>` by k-means on (u/W, v/H, depth) — deterministic seeds."""
    n = len(pixels)
    k = min(int(num_entities), n)
    if k <= 1:
        return ["cluster_0"] * n
    z = np.zeros(n, np.float32)
    if depth is not None:
        ui = np.clip(np.rint(pixels[:, 0]).astype(int), 0, width - 1)
        vi = np.clip(np.rint(pixels[:, 1]).astype(int), 0, height - 1)
        z = np.nan_to_num(depth[vi, ui], nan=0.0)
    feats = np.stack([pixels[:, 0] / width, pixels[:, 1] / height, z], axis=1).astype(np.float32)
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-4)
    _, labels, _ = cv2.kmeans(feats, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    # relabel by first appearance so labels do not depend on k-means' internal numbering
    order = {}
    for label in labels.ravel():
        order.setdefault(int(label), len(order))
    return [f"cluster_{order[int(label)]}" for label in labels.ravel()]


def _extended(queries: QuerySet, ids: np.ndarray, pixels: np.ndarray, entities: list) -> QuerySet:
    """`queries` plus new ones (their depth read from the image: NaN where `queries` carries depths)."""
    depth = None if queries.depth is None else np.concatenate([queries.depth, np.full(len(ids), np.nan, np.float32)])
    return QuerySet(np.concatenate([queries.query_ids, ids]), np.concatenate([queries.pixels, pixels]),
                    queries.entities + list(entities), depth)


class QueryTracker:
    """Keeps a stable, tracked set of queries across frames (see module docstring)."""

    def __init__(self, mode: str = "automatic", max_points: int = 32, grid_rows: int = 4,
                 grid_cols: int = 6, grid_margin: float = 0.1, min_distance: float = 12.0,
                 num_entities: int = 4, track: bool = True, reseed_fraction: float = 0.5,
                 max_flow_error: float = 30.0, objects_refresh_frames: int = OBJECTS_REFRESH_FRAMES):
        if mode not in MODES:
            raise ValueError(f"queries mode must be one of {MODES}, got {mode!r}")
        if int(objects_refresh_frames) < 1:
            raise ValueError(f"objects_refresh_frames must be >= 1, got {objects_refresh_frames}")
        self.mode = mode
        self.max_points = int(max_points)
        self.grid_rows, self.grid_cols, self.grid_margin = int(grid_rows), int(grid_cols), float(grid_margin)
        self.min_distance = float(min_distance)
        self.num_entities = int(num_entities)
        self.track = bool(track)
        self.reseed_fraction = float(reseed_fraction)
        self.max_flow_error = float(max_flow_error)
        self.current = QuerySet(np.zeros(0), np.zeros((0, 2)), [])
        self._prev_gray: np.ndarray | None = None
        self._next_id = 0
        self._pending_given: QuerySet | None = None
        self.last_object_pixels = 0      # object pixels found at the last `objects` reseed (diagnostics)
        self._plane = None               # the last RANSAC support plane (no extrinsic), see _support_plane
        self._plane_retry_at = 0         # frame from which a failed RANSAC fit is tried again
        self.objects_refresh_frames = int(objects_refresh_frames)
        self._scene: _Scene | None = None
        self._frame = 0                  # update() calls, the clock of the two caches above
        self._seen_depth: dict = {}      # query id -> its last measured depth (hold_occluded only)
        self._held: dict = {}            # query id -> frames it has been held occluded

    def reset(self) -> None:
        self._plane, self._plane_retry_at = None, 0
        self._scene, self._frame = None, 0
        self._seen_depth, self._held = {}, {}
        self.current = QuerySet(np.zeros(0), np.zeros((0, 2)), [])
        self._prev_gray = None
        self._pending_given = None

    def set_given(self, pixels, query_ids=None, entities=None) -> QuerySet:
        """Queries from outside; they replace the current set at the next `update`."""
        pixels = np.asarray(pixels, dtype=np.float32).reshape(-1, 2)
        n = len(pixels)
        if not np.all(np.isfinite(pixels)):
            raise ValueError("given queries: pixel_u/pixel_v contain non-finite values")
        if query_ids is None or len(query_ids) == 0:
            query_ids = np.arange(n)
        if entities is None or len(entities) == 0:
            entities = ["given"] * n
        if len(query_ids) != n:
            raise ValueError(f"given queries: query_ids has {len(query_ids)} entries, pixel_u has {n}")
        if len(entities) != n:
            raise ValueError(f"given queries: entities has {len(entities)} entries, pixel_u has {n}")
        self._pending_given = QuerySet(query_ids, pixels, list(entities))
        return self._pending_given

    def _new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.uint32)
        self._next_id += n
        return ids

    def _follow(self, gray: np.ndarray) -> QuerySet:
        """Move the current queries into this frame with optical flow; drop lost ones."""
        cur = self.current
        if not self.track or self._prev_gray is None or len(cur) == 0 or self._prev_gray.shape != gray.shape:
            return cur
        prev_pts = cur.pixels.reshape(-1, 1, 2)
        next_pts, status, err = cv2.calcOpticalFlowPyrLK(self._prev_gray, gray, prev_pts, None,
                                                         winSize=(21, 21), maxLevel=3)
        next_pts = next_pts.reshape(-1, 2)
        h, w = gray.shape
        inside = ((next_pts[:, 0] >= 0) & (next_pts[:, 0] <= w - 1) & (next_pts[:, 1] >= 0)
                  & (next_pts[:, 1] <= h - 1))
        keep = (status.ravel() == 1) & inside & (err.ravel() < self.max_flow_error)
        return QuerySet(cur.query_ids[keep], next_pts[keep], [e for e, k in zip(cur.entities, keep) if k])

    def _scene_for(self, depth, intrinsics, up, force: bool = False) -> tuple[_Scene | None, np.ndarray | None]:
        """The scene (support plane + surface region, `tabletop`) on a depth image decimated to
        <= OBJECT_MASK_WIDTH px wide, re-parsed when `force`d, every `objects_refresh_frames`
        frames, or when the image size, intrinsics or `up` change; else the cached one (a static
        camera's table does not move, the objects on it are read from each frame's own depth).
        Returns (scene, the decimated frame's points when it was re-parsed now, else None);
        scene None without depth / intrinsics."""
        from mu0_perception import tabletop

        if depth is None or intrinsics is None:
            return None, None
        key = (depth.shape, intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy,
               None if up is None else tuple(np.asarray(up, float).ravel()))
        cached = self._scene
        if (not force and cached is not None and cached.key == key
                and self._frame - cached.frame < self.objects_refresh_frames):
            return cached, None
        f = max(1, int(np.ceil(depth.shape[1] / OBJECT_MASK_WIDTH)))
        small, intr = depth, intrinsics
        if f > 1:       # nearest-neighbour decimation keeps depth values real (no mixed edges)
            small = depth[::f, ::f]     # small pixel k is full pixel f * k
            intr = CameraIntrinsics(small.shape[1], small.shape[0], intrinsics.fx / f, intrinsics.fy / f,
                                    intrinsics.cx / f, intrinsics.cy / f)
        points = tabletop.backproject(small, intr)
        plane = self._support_plane(points, up)
        region = tabletop.surface_region(points, plane) if plane is not None else None
        self._scene = _Scene(key, self._frame, f, intr, plane, region)
        return self._scene, points

    def _object_mask(self, depth, scene: _Scene, exclude_mask, points=None) -> np.ndarray:
        """(h, w) bool object mask of this frame at the scene's scale (`tabletop.object_mask` with
        the scene's plane and surface), minus the robot's pixels."""
        from mu0_perception import tabletop

        f = scene.f
        if points is None:
            points = tabletop.backproject(depth[::f, ::f] if f > 1 else depth, scene.intr)
        mask = tabletop.object_mask(points, scene.plane, scene.intr, scene.region)
        if exclude_mask is not None:
            mask &= ~exclude_mask[::f, ::f][: mask.shape[0], : mask.shape[1]]
        return mask

    def _support_plane(self, points, up):
        """The work surface, refitted only when needed: with `up` the fit is a histogram (cheap, at
        every scene refresh); without it RANSAC costs ~0.1 s, so the last plane is kept while it
        still explains >= 70 % of the pixels it explained when fitted, and a failed fit is retried
        after PLANE_RETRY_FRAMES frames (a static camera's table does not move)."""
        from mu0_perception import tabletop

        if up is not None:
            return tabletop.fit_support_plane(points, up=up)
        if self._plane is not None:
            finite = np.all(np.isfinite(points), axis=-1)
            h = self._plane.height(np.where(finite[..., None], points, 0.0))
            explained = (finite & (np.abs(h) < 0.006)).sum() / max(1, finite.sum())
            if explained >= 0.7 * self._plane.inlier_fraction:
                return self._plane
        elif self._frame < self._plane_retry_at:
            return None
        self._plane = tabletop.fit_support_plane(points)
        if self._plane is None:
            self._plane_retry_at = self._frame + PLANE_RETRY_FRAMES
        return self._plane

    def _on_objects(self, followed: QuerySet, depth: np.ndarray, scene: _Scene, exclude_mask) -> np.ndarray:
        """Which followed queries still sit on an object (1 px tolerance at the mask's scale): a
        point tracked off a small object onto the table no longer tells where the object goes.
        Evaluated on this frame's depth at the 3 x 3 mask pixels around each query only (the
        object mask's rule, `tabletop.stands_on_surface`, with the scene's plane and surface):
        the same answer as the dilated whole-frame mask, without building it every frame."""
        from mu0_perception import tabletop

        f, intr = scene.f, scene.intr
        h, w = intr.height, intr.width
        ui = np.clip(np.rint(followed.pixels[:, 0] / f).astype(int), 0, w - 1)
        vi = np.clip(np.rint(followed.pixels[:, 1] / f).astype(int), 0, h - 1)
        offs = np.array([-1, 0, 1])
        uu = (ui[:, None, None] + offs[None, None, :]).repeat(3, axis=1).reshape(len(ui), 9)
        vv = (vi[:, None, None] + offs[None, :, None]).repeat(3, axis=2).reshape(len(vi), 9)
        inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        uu, vv = np.clip(uu, 0, w - 1), np.clip(vv, 0, h - 1)
        points = tabletop.lift_pixels(depth[vv * f, uu * f], intr, uu, vv)   # mask pixel k is full pixel f * k
        on = tabletop.stands_on_surface(points.reshape(-1, 3), scene.plane, intr, scene.region).reshape(uu.shape)
        on &= inside
        if exclude_mask is not None:
            on &= ~exclude_mask[vv * f, uu * f]
        return on.any(axis=1)

    def _select_objects(self, mask: np.ndarray, f: int, followed: QuerySet,
                        budget: int) -> tuple[np.ndarray, list]:
        """New query pixels on the objects of `mask` (away from followed queries), and their entities."""
        from mu0_perception import tabletop

        mask = mask.copy()
        for u, v in followed.pixels:    # room around the queries we already follow
            cv2.circle(mask.view(np.uint8), (int(round(u / f)), int(round(v / f))),
                       max(1, int(self.min_distance / f // 2)), 0, -1)
        self.last_object_pixels = int(mask.sum())
        min_area = max(2, int(2e-4 * mask.size))
        segments = tabletop.object_segments(mask, min_area=min_area)
        per_segment = tabletop.allocate_queries(segments, budget, min_distance=max(2.0, self.min_distance / 4 / f))
        pixels = [p * f for seg in per_segment for p in seg]
        entities = [f"object_{k}" for k, seg in enumerate(per_segment) for _ in range(len(seg))]
        return np.asarray(pixels, np.float32).reshape(-1, 2), entities

    def _hold_occluded(self, previous: QuerySet, followed: QuerySet, exclude_mask: np.ndarray,
                       max_frames: int) -> QuerySet:
        """`followed` plus the queries of `previous` lost this frame at a pixel the robot now covers
        (held there with their last measured depth, at most `max_frames` frames in a row)."""
        h, w = exclude_mask.shape
        kept = set(followed.query_ids.tolist())
        held_ids, held_px, held_ent, held_z = [], [], [], []
        for qid, px, ent in zip(previous.query_ids.tolist(), previous.pixels, previous.entities):
            if qid in kept or qid not in self._seen_depth or self._held.get(qid, 0) >= max_frames:
                continue
            u, v = int(np.clip(np.rint(px[0]), 0, w - 1)), int(np.clip(np.rint(px[1]), 0, h - 1))
            if exclude_mask[v, u]:
                held_ids.append(qid)
                held_px.append(px)
                held_ent.append(ent)
                held_z.append(self._seen_depth[qid])
        self._held = {q: self._held.get(q, 0) + 1 for q in held_ids}
        if not held_ids:
            return followed
        depth = np.full(len(followed), np.nan, np.float32) if followed.depth is None else followed.depth
        return QuerySet(np.concatenate([followed.query_ids, np.asarray(held_ids, np.uint32)]),
                        np.concatenate([followed.pixels, np.asarray(held_px, np.float32).reshape(-1, 2)]),
                        followed.entities + held_ent, np.concatenate([depth, np.asarray(held_z, np.float32)]))

    def update(self, color: np.ndarray, depth: np.ndarray | None, intrinsics=None, up=None,
               exclude_mask: np.ndarray | None = None, hold_occluded: int = 0) -> QuerySet:
        """Queries for this frame (ids stable for points that were followed).

        `objects` mode uses `intrinsics` (to lift depth to 3D), `up` (the base frame's z axis in the
        camera frame, from the extrinsic; optional) and `exclude_mask` ((H, W) bool, the robot's own
        pixels: no query is placed there and followed queries that enter it are dropped). With
        `hold_occluded` > 0 (frames) and an `exclude_mask`, a query lost under the robot is held
        (module docstring); the returned set's `depth` then carries the held queries' depths."""
        gray = to_gray(color)
        h, w = gray.shape
        previous = self.current
        if self._pending_given is not None:
            followed, self._pending_given = self._pending_given, None
        else:
            followed = self._follow(gray)
        if exclude_mask is not None and len(followed) and self.mode != "given":
            ui = np.clip(np.rint(followed.pixels[:, 0]).astype(int), 0, w - 1)
            vi = np.clip(np.rint(followed.pixels[:, 1]).astype(int), 0, h - 1)
            followed = followed.subset(~exclude_mask[vi, ui])
        mode = self.mode
        if mode == "objects":
            before = len(self.current)
            scene, points = self._scene_for(depth, intrinsics, up)
            refreshed = points is not None
            if scene is not None and scene.plane is not None and len(followed):
                followed = followed.subset(self._on_objects(followed, depth, scene, exclude_mask))
        remember = int(hold_occluded) > 0 and self.mode != "given"
        if remember and exclude_mask is not None:
            followed = self._hold_occluded(previous, followed, exclude_mask, int(hold_occluded))
        if mode == "objects" and len(followed) < self.reseed_fraction * self.max_points:
            fresh, labels = np.zeros((0, 2), np.float32), []
            # seeding needs this frame's whole object mask (the objects move), but the plane and
            # surface it stands on are the cached scene's, re-parsed now only when queries were lost
            # in this frame (the scene may have changed under them, e.g. the camera now sees a wall)
            if scene is not None:
                if not refreshed and len(followed) < before:
                    scene, points = self._scene_for(depth, intrinsics, up, force=True)
                if scene.plane is not None:
                    fresh, labels = self._select_objects(self._object_mask(depth, scene, exclude_mask, points),
                                                         scene.f, followed, self.max_points - len(followed))
            if len(fresh):
                followed = _extended(followed, self._new_ids(len(fresh)), fresh, labels)
            elif len(followed) == 0:
                mode = "automatic"      # no surface / nothing on it: corners rather than no queries
        if mode == "automatic" and len(followed) < self.reseed_fraction * self.max_points:
            exclude_px = followed.pixels
            fresh = select_automatic(color, depth, self.max_points - len(followed), self.min_distance,
                                     exclude_px=exclude_px)
            if exclude_mask is not None and len(fresh):
                fresh = fresh[~exclude_mask[np.clip(np.rint(fresh[:, 1]).astype(int), 0, h - 1),
                                            np.clip(np.rint(fresh[:, 0]).astype(int), 0, w - 1)]]
            if len(fresh):
                labels = cluster_entities(np.concatenate([followed.pixels, fresh]), depth, w, h,
                                          self.num_entities)[len(followed):]
                if len(followed):  # a new point joins the entity of its nearest surviving query
                    d = np.linalg.norm(fresh[:, None] - followed.pixels[None], axis=2)
                    labels = [followed.entities[j] for j in d.argmin(axis=1)]
                followed = _extended(followed, self._new_ids(len(fresh)), fresh, labels)
        elif mode == "grid" and len(followed) < self.grid_rows * self.grid_cols:
            lattice = select_grid(w, h, self.grid_rows, self.grid_cols, self.grid_margin)
            if len(followed):
                d = np.linalg.norm(lattice[:, None] - followed.pixels[None], axis=2).min(axis=1)
                lattice = lattice[d > self.min_distance]
            lattice = lattice[: self.grid_rows * self.grid_cols - len(followed)]
            followed = _extended(followed, self._new_ids(len(lattice)), lattice, ["grid"] * len(lattice))
        if remember:      # remember where each visible query was measured, for when the robot covers it
            visible = np.isnan(followed.depth) if followed.depth is not None else np.ones(len(followed), bool)
            z = depth_at_pixels(depth, followed.pixels[visible])
            seen = {q: self._seen_depth[q] for q in followed.query_ids.tolist() if q in self._seen_depth}
            seen.update({q: float(d) for q, d in zip(followed.query_ids[visible].tolist(), z) if np.isfinite(d) and d > 0})
            self._seen_depth = seen
        self._prev_gray = gray
        self.current = followed
        self._frame += 1
        return followed


class QueryHistory:
    """Per-query_id past positions (stamp, uvz) -> the model's (N, 8, 3) history.

    History step j (0..7) is the query's uvz at `now - (8 - j) * step_period`, linearly
    interpolated between the observations kept for that id; a time before the first observation
    of the id, or whose nearest observation is a frame where the query had no depth (added as a NaN
    row), is NaN (invalid — the predictor masks it), as TraceExtract marks such steps in training.
    Ids not seen for `forget_after_ns` are forgotten. With a static camera the reference camera of every step is the current one.
    """

    def __init__(self, max_observations: int = 32, forget_after_ns: int = 2_000_000_000):
        # Per id, the newest `max_observations` observations, right-aligned (oldest ... newest) in
        # fixed-size arrays with NaN stamps as padding, so `history` gathers all asked ids with one
        # fancy index and interpolates them together (a Python loop per query cost ~1 ms per frame
        # for 24 queries; issue 14).
        self.max_observations = int(max_observations)
        self.forget_after_ns = int(forget_after_ns)
        self._row: dict[int, int] = {}                   # query id -> row of the arrays below
        self._free: list[int] = []                       # rows of forgotten ids, reused
        self._t = np.empty((0, self.max_observations))   # stamps (ns, float64); NaN = no observation
        self._p = np.empty((0, self.max_observations, 3))
        self._last = np.empty(0, np.int64)               # newest stamp per row (int: exact comparisons)

    def __len__(self) -> int:
        return len(self._row)

    def reset(self) -> None:
        self.__init__(self.max_observations, self.forget_after_ns)

    def _new_row(self) -> int:
        if self._free:
            r = self._free.pop()
        else:
            r = len(self._t)
            grow = max(8, r)
            self._t = np.concatenate([self._t, np.full((grow, self.max_observations), np.nan)])
            self._p = np.concatenate([self._p, np.full((grow, self.max_observations, 3), np.nan)])
            self._last = np.concatenate([self._last, np.full(grow, np.iinfo(np.int64).min)])
            self._free.extend(range(r + grow - 1, r, -1))
        self._t[r] = np.nan
        self._p[r] = np.nan
        self._last[r] = np.iinfo(np.int64).min
        return r

    def add(self, stamp_ns: int, query_ids: np.ndarray, uvz: np.ndarray) -> None:
        uvz = np.asarray(uvz, dtype=np.float64).reshape(-1, 3)
        stamp_ns = int(stamp_ns)
        rows, keep = [], []
        for i, qid in enumerate(np.asarray(query_ids).tolist()):
            r = self._row.get(int(qid))
            if r is None:
                r = self._row[int(qid)] = self._new_row()
            elif stamp_ns <= self._last[r] or r in rows:
                continue  # repeated or out-of-order frame (or the id twice): history is monotone in time
            rows.append(r)
            keep.append(i)
        if rows:
            r = np.asarray(rows)
            self._t[r, :-1] = self._t[r, 1:]
            self._p[r, :-1] = self._p[r, 1:]
            self._t[r, -1] = float(stamp_ns)
            self._p[r, -1] = uvz[keep]
            self._last[r] = stamp_ns
        stale = [q for q, r in self._row.items() if stamp_ns - self._last[r] > self.forget_after_ns]
        for qid in stale:
            self._free.append(self._row.pop(qid))

    def history(self, query_ids: np.ndarray, now_ns: int, step_period: float,
                steps: int = HISTORY_STEPS) -> np.ndarray:
        if step_period <= 0:
            raise ValueError(f"step_period must be positive, got {step_period}")
        ids = np.asarray(query_ids).tolist()
        out = np.full((len(ids), steps, 3), np.nan, np.float32)
        idx = np.array([i for i, q in enumerate(ids) if int(q) in self._row], dtype=np.int64)
        if not len(idx) or steps < 1:
            return out
        rows = np.array([self._row[int(ids[i])] for i in idx])
        times = now_ns - np.arange(steps, 0, -1) * step_period * 1e9      # t-8 .. t-1
        t_obs, p_obs = self._t[rows], self._p[rows]                          # (n, M), (n, M, 3)
        kept = np.isfinite(t_obs)
        seen = kept & np.isfinite(p_obs).all(-1)          # NaN rows: frames where the query had no depth
        first = np.where(kept, t_obs, np.inf).min(1)
        last = np.maximum(self._last[rows].astype(np.float64), float(now_ns))
        usable = (times[None] >= first[:, None]) & (times[None] <= last[:, None])      # (n, S)
        # a step whose nearest frame had no depth stays invalid (TraceExtract's rule); ties go to the
        # older frame
        dist = np.abs(times[None, :, None] - np.where(kept, t_obs, np.inf)[:, None, :])   # (n, S, M)
        nearest = dist.argmin(-1)
        usable &= np.take_along_axis(seen, nearest, 1) & seen.any(1, keepdims=True)
        # linear interpolation between the seen observations (np.interp per row, clamped at the ends)
        order = np.argsort(~seen, axis=1, kind="stable")   # seen first, each in time order
        ts = np.where(np.take_along_axis(seen, order, 1), np.take_along_axis(t_obs, order, 1), np.inf)
        ps = np.take_along_axis(p_obs, order[..., None], 1)
        count = seen.sum(1)
        after = (ts[:, None, :] <= times[None, :, None]).sum(-1)                     # (n, S)
        lo = np.clip(after - 1, 0, np.maximum(count - 1, 0)[:, None])
        hi = np.clip(after, 0, np.maximum(count - 1, 0)[:, None])
        t_lo, t_hi = np.take_along_axis(ts, lo, 1), np.take_along_axis(ts, hi, 1)
        p_lo = np.take_along_axis(ps, lo[..., None], 1)
        p_hi = np.take_along_axis(ps, hi[..., None], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(hi > lo, (times[None] - t_lo) / (t_hi - t_lo), 0.0)
        value = p_lo + w[..., None] * (p_hi - p_lo)
        out[idx] = np.where(usable[..., None], value, np.nan).astype(np.float32)
        return out
