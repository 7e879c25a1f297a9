"""From the model's output to what the runtime publishes (pure numpy, no ROS).

μ_0 predicts traces in `uvz` (normalised pixel coordinates + metric depth) of the reference
camera. Robots and RViz want metric 3D: this module deprojects the samples to camera xyz, refits
the B-spline control points in xyz (a spline in uvz is not a spline in xyz: perspective division
is not affine), optionally maps everything into the robot base frame (B-splines are affine
invariant, so transforming the control points transforms the curve), and describes RViz line
strips as plain data for the node to turn into messages.

Why a refit and not the model's own control points lifted to xyz (x = (u - cx) z / fx per control
point, then the spline): Trace.msg says the control points decode to `samples`, in metres, in one
frame; lifting the uvz control points gives a curve up to 3 mm away from the lifted model samples
on real predictions of checkpoints/mu0_small (docs/runtime.md "Hot path"), so the lifted samples are
fitted instead. The fit (validity-weighted, ridge 0.2, anchor pinned: `bspline.fit`) is a linear map
of the samples for a given validity pattern, so that map is cached (`_refit_map`): one matrix
product per trace instead of assembling and solving the normal equations every frame.
"""
from __future__ import annotations

import colorsys
import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from mu0_core import camera
from mu0_core.camera import CameraIntrinsics, RigidTransform
from mu0_core import bspline
from mu0_policy.inference import TraceResult
from mu0_core.traces import TraceSet

VALID_THRESHOLD = 0.5  # Trace.msg: a trace ends at the first sample with validity < 0.5


def _read_only_identity() -> RigidTransform:
    T = RigidTransform.identity()
    T.rotation.flags.writeable = False
    T.translation.flags.writeable = False
    return T


# every camera-frame TraceSet's camera_to_frame: one shared (read-only) instance, as building a
# RigidTransform validates its rotation (~50 us, every frame)
_CAMERA_IDENTITY = _read_only_identity()


def _hold_last_finite(xyz: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Replace non-finite rows of each (T, 3) trace by the last finite one before them (step 0
    stays as it is). One gather (the index of the last ok step at or before each step) instead of
    a Python loop over N x T steps: the same values, copied."""
    t = np.arange(xyz.shape[1])
    held = np.where(ok, t[None, :], 0)
    held[:, 0] = 0
    src = np.maximum.accumulate(held, axis=1)
    return np.take_along_axis(xyz, src[..., None], axis=1)


def _finite_xyz(a: np.ndarray) -> np.ndarray:
    """`np.isfinite(a).all(-1)` for (..., 3) arrays, column by column (numpy's reduction over a
    length-3 axis costs more than the three comparisons)."""
    return np.isfinite(a[..., 0]) & np.isfinite(a[..., 1]) & np.isfinite(a[..., 2])


_CACHE_SIZE = 256      # validity patterns kept (a pattern is almost always "valid up to step k")
_basis_cache: OrderedDict = OrderedDict()
_map_cache: OrderedDict = OrderedDict()


def _cached(cache: OrderedDict, key, make):
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def _basis(num_ctrl: int, horizon: int, knots: np.ndarray) -> tuple[tuple, np.ndarray]:
    """The basis matrix for these knots (validated by bspline on first use) and its cache key."""
    key = (num_ctrl, horizon, knots.tobytes())
    return key, _cached(_basis_cache, key, lambda: bspline.basis_matrix(num_ctrl, horizon, knots=knots))


def _refit_map(basis: np.ndarray, used: np.ndarray, ridge: float) -> np.ndarray:
    """(D, H+1) matrix L with `bspline.fit(X, basis, valid=used, ridge=ridge) == L @ X` (X with
    zeros at unused steps): the fit's normal equations depend only on the basis, the ridge and
    which steps are used, so they are solved once per validity pattern instead of every frame."""
    D = basis.shape[1]
    Bs, b0, R, r0 = bspline._fit_system(basis, float(ridge), True)
    w = used.astype(np.float64)
    A = (Bs * w[:, None]).T @ Bs + R
    # the ridge makes A positive definite; without one, too few used steps leave it singular and
    # bspline.fit takes the minimum-norm solution: the pseudo-inverse does the same
    A_inv = np.linalg.inv(A) if ridge > 0 else np.linalg.pinv(A)
    G = A_inv @ (Bs.T * w[None, :])                     # (D-1, H+1)
    L = np.zeros((D, basis.shape[0]))
    L[0, 0] = 1.0                                        # control point 0 is the anchor sample
    L[1:] = G
    L[1:, 0] -= G @ b0 + A_inv @ r0                      # the pinned anchor's pull on the others
    return L


def _refit(xyz: np.ndarray, used: np.ndarray, basis_key: tuple, basis: np.ndarray, ridge: float) -> np.ndarray:
    """`bspline.fit(xyz, basis, valid=used, ridge=ridge)` for (N, H+1, 3) traces and (N, H+1) bool
    `used` (step 0 always used), through cached per-pattern maps (`_refit_map`)."""
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
    used = used.copy()
    used[:, 0] = True
    X = np.where(used[..., None], xyz, 0.0)
    groups: dict[bytes, list] = {}
    for i, row in enumerate(np.packbits(used, axis=1)):
        groups.setdefault(row.tobytes(), []).append(i)
    ctrl = np.empty((len(X), basis.shape[1], 3))
    for pattern, rows in groups.items():
        L = _cached(_map_cache, (basis_key, float(ridge), pattern),
                    lambda: _refit_map(basis, used[rows[0]], ridge))
        ctrl[rows] = np.matmul(L, X[rows])
    return ctrl


def result_to_trace_set(result: TraceResult, *, query_ids, entities, pixels, intrinsics: CameraIntrinsics,
                        stamp_ns: int, camera_frame_id: str, instruction: str, model_id: str,
                        step_period: float, sample_index: int = 0, ridge: float = bspline.DEFAULT_RIDGE
                        ) -> TraceSet:
    """One TraceResult (uvz, K samples) -> a TraceSet in the camera optical frame (metres).

    Uses sample `sample_index` of the K. Samples whose deprojection is not finite (depth <= 0 or
    NaN) get validity 0 and are held at the previous point so every number stays finite.
    """
    uvz = np.asarray(result.samples_uvz, dtype=np.float64)
    if uvz.ndim != 4 or uvz.shape[-1] != 3:
        raise ValueError(f"result.samples_uvz: expected (K, N, H+1, 3), got {uvz.shape}")
    if not 0 <= sample_index < uvz.shape[0]:
        raise ValueError(f"sample_index {sample_index} out of range for K={uvz.shape[0]}")
    uvz = uvz[sample_index]
    n, t1, _ = uvz.shape
    validity = np.clip(np.nan_to_num(np.asarray(result.validity, np.float64)[sample_index]), 0.0, 1.0)
    if validity.shape != (n, t1):
        raise ValueError(f"result.validity: expected (K, {n}, {t1}), got {np.shape(result.validity)}")
    query_ids = np.asarray(query_ids, dtype=np.uint32).reshape(-1)
    if len(query_ids) != n or len(entities) != n or len(pixels) != n:
        raise ValueError(f"query_ids/entities/pixels must have N={n} entries (the result's queries)")
    depth_ok = _finite_xyz(uvz) & (uvz[..., 2] > 0)
    if n and not depth_ok[:, 0].all():
        raise ValueError("result.samples_uvz: anchor (step 0) depth must be finite and positive; "
                         "drop queries without depth before postprocessing")
    xyz = np.zeros_like(uvz)
    if n:
        safe = np.where(depth_ok[..., None], uvz, 1.0)
        xyz = camera.uvz_to_xyz(safe, intrinsics)
        finite = depth_ok & _finite_xyz(xyz)
        validity = np.where(finite, validity, 0.0)
        xyz = _hold_last_finite(np.where(finite[..., None], xyz, np.nan), finite)
    horizon = t1 - 1
    knots = np.asarray(result.knots, dtype=np.float64)
    num_ctrl = len(knots) - bspline.DEFAULT_DEGREE - 1
    basis_key, basis = _basis(num_ctrl, horizon, knots)
    # the lifted samples refitted (see the module docstring for why not the model's own control
    # points); exactly bspline.fit with validity weights, through cached per-pattern maps
    ctrl = _refit(xyz, validity >= VALID_THRESHOLD, basis_key, basis, ridge) if n else np.zeros((0, num_ctrl, 3))
    samples = bspline.decode(ctrl, basis) if n else np.zeros((0, t1, 3))
    confidence = validity[:, 1:].mean(axis=1) if n else np.zeros(0)
    return TraceSet(
        stamp_ns=int(stamp_ns), frame_id=camera_frame_id, instruction=instruction, model_id=model_id,
        horizon_steps=horizon, step_period=float(step_period), query_ids=query_ids,
        entities=[str(e) for e in entities], pixels=np.asarray(pixels, np.float32).reshape(n, 2),
        positions=samples[:, 0].copy(), knots=knots, control_points=ctrl, samples=samples,
        validity=validity.astype(np.float32), confidence=confidence.astype(np.float32),
        degree=bspline.DEFAULT_DEGREE, camera_to_frame=_CAMERA_IDENTITY)


_last_composed: tuple | None = None     # (target_from_camera, camera_to_frame, the composition)


def _composed(target_from_camera: RigidTransform, camera_to_frame: RigidTransform) -> RigidTransform:
    """`target_from_camera @ camera_to_frame.inverse()`, remembered for the last pair of transform
    objects: the runtime maps every frame's camera-frame set with the same static extrinsic, and
    each RigidTransform built validates its rotation."""
    global _last_composed
    last = _last_composed
    if last is not None and last[0] is target_from_camera and last[1] is camera_to_frame:
        return last[2]
    value = target_from_camera @ camera_to_frame.inverse()
    _last_composed = (target_from_camera, camera_to_frame, value)
    return value


def transform_trace_set(traces: TraceSet, target_from_camera: RigidTransform, frame_id: str) -> TraceSet:
    """The same traces expressed in another frame (e.g. base_link, given T_base_cam)."""
    if not isinstance(target_from_camera, RigidTransform):
        raise ValueError(f"target_from_camera must be a RigidTransform, got {type(target_from_camera).__name__}")
    # the set may already be in a non-camera frame: compose with its own camera_to_frame
    to_target = _composed(target_from_camera, traces.camera_to_frame)
    return TraceSet(
        stamp_ns=traces.stamp_ns, frame_id=frame_id, instruction=traces.instruction, model_id=traces.model_id,
        horizon_steps=traces.horizon_steps, step_period=traces.step_period, query_ids=traces.query_ids.copy(),
        entities=list(traces.entities), pixels=traces.pixels.copy(),
        positions=to_target.apply(traces.positions) if len(traces) else traces.positions.copy(),
        knots=traces.knots.copy(),
        control_points=to_target.apply(traces.control_points) if len(traces) else traces.control_points.copy(),
        samples=to_target.apply(traces.samples) if len(traces) else traces.samples.copy(),
        validity=traces.validity.copy(), confidence=traces.confidence.copy(), degree=traces.degree,
        camera_to_frame=target_from_camera)


def valid_length(validity: np.ndarray, threshold: float = VALID_THRESHOLD) -> np.ndarray:
    """(N, T) -> (N,) number of leading samples before the first one under `threshold`."""
    below = np.asarray(validity) < threshold
    first = np.where(below.any(axis=1), below.argmax(axis=1), below.shape[1])
    return first.astype(int)


def time_colors(num: int, alpha: float = 1.0) -> np.ndarray:
    """(num, 4) RGBA from blue (now) through green to red (end of horizon)."""
    return _time_colors(int(num), float(alpha)).copy()


@functools.lru_cache(maxsize=16)
def _time_colors(num: int, alpha: float) -> np.ndarray:
    # the same few horizons every frame; callers get copies (colorsys per point is ~0.1 ms)
    hues = np.linspace(2.0 / 3.0, 0.0, max(num, 1))[:num]
    colors = np.array([(*colorsys.hsv_to_rgb(h, 1.0, 1.0), alpha) for h in hues], dtype=np.float32).reshape(num, 4)
    colors.flags.writeable = False
    return colors


@dataclass
class LineStrip:
    """A visualization_msgs/Marker LINE_STRIP as plain data."""
    namespace: str         # one per entity
    marker_id: int         # the query id
    frame_id: str
    stamp_ns: int
    points: np.ndarray     # (M, 3) metres
    colors: np.ndarray     # (M, 4) RGBA in [0, 1], per point (colour by time)
    width: float


def trace_line_strips(traces: TraceSet, width: float = 0.006,
                      threshold: float = VALID_THRESHOLD) -> list[LineStrip]:
    """One line strip per trace (only its valid prefix; traces with < 2 valid points are left out)."""
    lengths = valid_length(traces.validity, threshold)
    colors = _time_colors(traces.horizon_steps + 1, 1.0)
    strips = []
    for i in range(len(traces)):
        m = int(lengths[i])
        if m < 2:
            continue
        strips.append(LineStrip(namespace=traces.entities[i], marker_id=int(traces.query_ids[i]),
                                frame_id=traces.frame_id, stamp_ns=traces.stamp_ns,
                                points=np.asarray(traces.samples[i, :m], np.float64),
                                colors=colors[:m].copy(), width=float(width)))
    return strips
