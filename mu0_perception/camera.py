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
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(self.rotation).as_quat()

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
        return RigidTransform(self.rotation.T, -self.rotation.T @ self.translation)

    def __matmul__(self, other: "RigidTransform") -> "RigidTransform":
        return RigidTransform(self.rotation @ other.rotation,
                              self.rotation @ other.translation + self.translation)
