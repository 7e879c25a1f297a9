"""Camera geometry: intrinsics, rigid transforms, pixel <-> normalised <-> 3D conversions.

Pure numpy (+ scipy Rotation, OpenCV for undistortion). No ROS imports. Conventions are in
docs/interfaces.md: pixel centres at integer coordinates, optical frame x right / y down / z
forward, quaternions xyzw, T_a_b maps points from frame b to frame a.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one image size (as in sensor_msgs/CameraInfo)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple = ()

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"width/height must be positive, got {self.width}x{self.height}")
        if not (np.isfinite(self.fx) and np.isfinite(self.fy) and self.fx > 0 and self.fy > 0):
            raise ValueError(f"fx/fy must be finite and positive, got fx={self.fx} fy={self.fy}")
        if not (np.isfinite(self.cx) and np.isfinite(self.cy)):
            raise ValueError(f"cx/cy must be finite, got cx={self.cx} cy={self.cy}")
        object.__setattr__(self, "distortion", tuple(float(d) for d in self.distortion))

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        return any(d != 0.0 for d in self.distortion)

    @classmethod
    def from_K(cls, K, width, height, distortion=(), distortion_model="plumb_bob"):
        K = np.asarray(K, dtype=float).reshape(3, 3)
        return cls(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                   float(K[1, 2]), distortion_model, tuple(distortion))

    def as_array(self) -> np.ndarray:
        """(fx, fy, cx, cy) as float32 — the form stored in datasets and fed to the model."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float32)

    def scaled(self, width: int, height: int) -> "CameraIntrinsics":
        """Intrinsics of the same camera after resizing the image to (width, height)."""
        sx, sy = width / self.width, height / self.height
        # pixel centres at integers: a resize maps u -> (u + 0.5) * s - 0.5
        return CameraIntrinsics(int(width), int(height), self.fx * sx, self.fy * sy,
                                (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                                self.distortion_model, self.distortion)


@dataclass(frozen=True)
class RigidTransform:
    """A proper rigid transform T_a_b (rotation matrix + translation), mapping b-points into a."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        R = np.asarray(self.rotation, dtype=float)
        t = np.asarray(self.translation, dtype=float).reshape(-1)
        if R.shape != (3, 3):
            raise ValueError(f"rotation must be 3x3, got shape {R.shape}")
        if t.shape != (3,):
            raise ValueError(f"translation must have 3 elements, got shape {t.shape}")
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("rotation/translation must be finite")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError("rotation is not a proper rotation matrix")
        object.__setattr__(self, "rotation", R)
        object.__setattr__(self, "translation", t)

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls()

    @classmethod
    def from_quat_xyzw(cls, quat_xyzw, translation) -> "RigidTransform":
        from scipy.spatial.transform import Rotation

        q = np.asarray(quat_xyzw, dtype=float).reshape(-1)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise ValueError(f"quat_xyzw must be 4 finite numbers with non-zero norm, got {q}")
        return cls(Rotation.from_quat(q / np.linalg.norm(q)).as_matrix(), translation)

    def to_quat_xyzw(self) -> np.ndarray:
        # computed once per transform (a copy handed out): a node serialises the same static
        # extrinsic with every trace set, and scipy's matrix -> quaternion costs ~0.1 ms
        quat = self.__dict__.get("_quat_xyzw")
        if quat is None:
            from scipy.spatial.transform import Rotation

            quat = Rotation.from_matrix(self.rotation).as_quat()
            object.__setattr__(self, "_quat_xyzw", quat)
        return quat.copy()

    @classmethod
    def from_matrix(cls, M) -> "RigidTransform":
        M = np.asarray(M, dtype=float)
        if M.shape != (4, 4):
            raise ValueError(f"matrix must be 4x4, got {M.shape}")
        return cls(M[:3, :3], M[:3, 3])

    def as_matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.rotation
        M[:3, 3] = self.translation
        return M

    def apply(self, points) -> np.ndarray:
        """Map points (..., 3) from frame b into frame a."""
        p = np.asarray(points, dtype=float)
        if p.shape[-1] != 3:
            raise ValueError(f"points must have last dimension 3, got shape {p.shape}")
        return p @ self.rotation.T + self.translation

    def inverse(self) -> "RigidTransform":
        # computed once per transform: the runtime inverts the same static extrinsic every frame,
        # and each RigidTransform built validates its rotation (~50 us)
        inv = self.__dict__.get("_inverse")
        if inv is None:
            inv = RigidTransform(self.rotation.T, -self.rotation.T @ self.translation)
            object.__setattr__(self, "_inverse", inv)
        return inv

    def __matmul__(self, other: "RigidTransform") -> "RigidTransform":
        return RigidTransform(self.rotation @ other.rotation,
                              self.rotation @ other.translation + self.translation)


# ----------------------------------------------------------------------------------------------
# pixels <-> normalised image coordinates
# ----------------------------------------------------------------------------------------------
# distortion models OpenCV's (k1, k2, p1, p2[, k3[, k4, k5, k6]]) vector covers exactly
_OPENCV_MODELS = {"plumb_bob": (4, 5), "rational_polynomial": (8,)}
_UNDISTORT_ITERATIONS = 100
_UNDISTORT_EPS = 1e-14


def _check_size(width, height):
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"width/height must be positive, got {width}x{height}")


def _as_points(name: str, values, last: int, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] != last:
        raise ValueError(f"{name} must have last dimension {last}, got shape {a.shape}")
    if not allow_nan and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def pixels_to_normalized(uv_px, width, height) -> np.ndarray:
    """Pixels (..., 2) (centres at integers) -> normalised (..., 2) with the image edges at -1 / +1."""
    _check_size(width, height)
    uv = _as_points("uv_px", uv_px, 2, allow_nan=True)
    size = np.array([width, height], dtype=np.float64)
    return 2.0 * (uv + 0.5) / size - 1.0


def normalized_to_pixels(uv_n, width, height) -> np.ndarray:
    """Inverse of :func:`pixels_to_normalized`."""
    _check_size(width, height)
    uv = _as_points("uv_n", uv_n, 2, allow_nan=True)
    size = np.array([width, height], dtype=np.float64)
    return (uv + 1.0) * size / 2.0 - 0.5


# ----------------------------------------------------------------------------------------------
# pixels + depth <-> camera optical frame
# ----------------------------------------------------------------------------------------------
def _opencv_distortion(intr: CameraIntrinsics) -> np.ndarray | None:
    """OpenCV distortion vector, or None for an ideal pinhole; ValueError for unhandled models."""
    if not intr.has_distortion:
        return None
    model = intr.distortion_model
    if model not in _OPENCV_MODELS:
        raise ValueError(f"intr.distortion_model {model!r} with non-zero distortion is not handled "
                         f"(supported: {sorted(_OPENCV_MODELS)}); rectify the image first")
    n = len(intr.distortion)
    if n not in _OPENCV_MODELS[model]:
        raise ValueError(f"intr.distortion: {model} needs {_OPENCV_MODELS[model]} coefficients, got {n}")
    return np.asarray(intr.distortion, dtype=np.float64)


def _undistort(uv_px: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Pixels (N, 2) -> ideal normalised camera rays (x/z, y/z) (N, 2)."""
    dist = _opencv_distortion(intr)
    if dist is None:
        return np.stack([(uv_px[:, 0] - intr.cx) / intr.fx, (uv_px[:, 1] - intr.cy) / intr.fy], -1)
    import cv2

    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, _UNDISTORT_ITERATIONS, _UNDISTORT_EPS)
    out = cv2.undistortPoints(uv_px.reshape(-1, 1, 2), intr.K, dist, criteria=criteria)
    return out.reshape(-1, 2)


def _distort(xy: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """Ideal normalised rays (N, 2) -> pixels (N, 2)."""
    dist = _opencv_distortion(intr)
    if dist is None:
        return np.stack([xy[:, 0] * intr.fx + intr.cx, xy[:, 1] * intr.fy + intr.cy], -1)
    import cv2

    pts = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1).reshape(-1, 1, 3)
    uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), intr.K, dist)
    return uv.reshape(-1, 2)


def _check_intr(intr) -> CameraIntrinsics:
    if not isinstance(intr, CameraIntrinsics):
        raise ValueError(f"intr must be a CameraIntrinsics, got {type(intr).__name__}")
    return intr


def deproject(uv_px, depth_m, intr: CameraIntrinsics) -> np.ndarray:
    """Pixels (..., 2) + metric depth (...) (z along the optical axis) -> optical-frame xyz (..., 3).

    NaN depth (the depth-image convention for invalid) gives NaN points; distortion is removed
    with OpenCV for plumb_bob / rational_polynomial.
    """
    intr = _check_intr(intr)
    uv = _as_points("uv_px", uv_px, 2)
    z = np.asarray(depth_m, dtype=np.float64)
    if z.shape != uv.shape[:-1]:
        raise ValueError(f"depth_m must have shape {uv.shape[:-1]} (uv_px without the last axis), "
                         f"got {z.shape}")
    xy = _undistort(uv.reshape(-1, 2), intr).reshape(uv.shape)
    return np.concatenate([xy * z[..., None], z[..., None]], axis=-1)


def project(xyz, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Optical-frame points (..., 3) -> (pixels (..., 2), depth_m (...)).

    Points with z <= 0 (on or behind the camera plane) get NaN pixels; their depth is returned.
    """
    intr = _check_intr(intr)
    p = _as_points("xyz", xyz, 3)
    z = p[..., 2]
    front = z > 0
    safe_z = np.where(front, z, 1.0)
    xy = p[..., :2] / safe_z[..., None]
    uv = _distort(xy.reshape(-1, 2), intr).reshape(xy.shape)
    uv = np.where(front[..., None], uv, np.nan)
    return uv, z.copy()


def uvz_to_xyz(uvz, intr: CameraIntrinsics) -> np.ndarray:
    """(u_n, v_n, depth_m) (..., 3) in the image of ``intr`` -> optical-frame xyz (..., 3)."""
    intr = _check_intr(intr)
    a = _as_points("uvz", uvz, 3, allow_nan=True)
    if not np.all(np.isfinite(a[..., :2])):
        raise ValueError("uvz: u_n / v_n contain NaN or inf")
    uv_px = normalized_to_pixels(a[..., :2], intr.width, intr.height)
    return deproject(uv_px, a[..., 2], intr)


def xyz_to_uvz(xyz, intr: CameraIntrinsics) -> np.ndarray:
    """Optical-frame xyz (..., 3) -> (u_n, v_n, depth_m) (..., 3); z <= 0 gives NaN u_n, v_n."""
    uv_px, z = project(xyz, intr)
    uv_n = pixels_to_normalized(uv_px, intr.width, intr.height)
    return np.concatenate([uv_n, z[..., None]], axis=-1)


# ----------------------------------------------------------------------------------------------
# arc-length reparameterisation
# ----------------------------------------------------------------------------------------------
def arc_length_reparameterize(points, valid=None, num_samples: int = 33) -> np.ndarray:
    """Resample a trace at ``num_samples`` points equally spaced along its arc length.

    points: (..., T, C); valid: (..., T) bool (None = finite rows). Invalid rows are skipped (the
    path runs straight between the valid ones). The first and last samples are the first and last
    valid points; a trace that never moves repeats its point. Every trace needs >= 1 valid row.
    Batched over leading dims (no Python loop over traces).
    """
    P = np.asarray(points, dtype=np.float64)
    if P.ndim < 2 or P.shape[-2] < 1 or P.shape[-1] < 1:
        raise ValueError(f"points must be (..., T, C), got shape {P.shape}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    finite = np.isfinite(P).all(axis=-1)
    if valid is None:
        v = finite
    else:
        v = np.asarray(valid)
        if v.shape != P.shape[:-1]:
            raise ValueError(f"valid must have shape {P.shape[:-1]}, got {v.shape}")
        v = v.astype(bool) & finite
    if not np.all(v.any(axis=-1)):
        raise ValueError("valid: every trace needs at least one valid (finite) point")
    lead, T, C = P.shape[:-2], P.shape[-2], P.shape[-1]
    P2 = P.reshape(-1, T, C)
    v2 = v.reshape(-1, T)
    n = P2.shape[0]
    # fill invalid rows with the previous valid one (leading invalid rows: the first valid one) so
    # they add zero length; then interpolate on the cumulative length
    idx = np.where(v2, np.arange(T)[None, :], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    first = v2.argmax(axis=1)
    idx = np.where(idx < 0, first[:, None], idx)
    filled = np.take_along_axis(P2, idx[..., None], axis=1)
    seg = np.linalg.norm(np.diff(filled, axis=1), axis=-1)          # (n, T-1)
    s = np.concatenate([np.zeros((n, 1)), np.cumsum(seg, axis=1)], axis=1)
    total = s[:, -1]
    targets = np.linspace(0.0, 1.0, int(num_samples))[None, :] * total[:, None]  # (n, S)
    # segment index per target: last j with s[j] <= target (ties -> earliest segment with length)
    j = (s[:, None, :] <= targets[:, :, None]).sum(axis=-1) - 1        # (n, S)
    j = np.clip(j, 0, max(T - 2, 0))
    if T == 1:
        return np.broadcast_to(P2[:, :1], (n, int(num_samples), C)).reshape(*lead, int(num_samples), C).copy()
    s0 = np.take_along_axis(s, j, axis=1)
    L = np.take_along_axis(seg, j, axis=1)
    frac = np.divide(targets - s0, L, out=np.zeros_like(L), where=L > 0)
    frac = np.clip(frac, 0.0, 1.0)
    a = np.take_along_axis(filled, j[..., None], axis=1)
    b = np.take_along_axis(filled, (j + 1)[..., None], axis=1)
    out = a + frac[..., None] * (b - a)
    # static traces: every sample is the (only) position
    out = np.where((total > 0)[:, None, None], out, filled[:, :1])
    return out.reshape(*lead, int(num_samples), C)
