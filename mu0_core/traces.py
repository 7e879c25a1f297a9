"""TraceSet: the core (ROS-free) form of mu0_msgs/TraceArray — all traces from one camera frame."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mu0_core.camera import RigidTransform


@dataclass
class TraceSet:
    stamp_ns: int                  # stamp of the SOURCE camera frame
    frame_id: str                  # frame the points are expressed in
    instruction: str
    model_id: str
    horizon_steps: int             # H (samples have H + 1 rows)
    step_period: float             # seconds between samples
    query_ids: np.ndarray          # (N,) uint32
    entities: list                 # N strings
    pixels: np.ndarray             # (N, 2) float32, source image pixels
    positions: np.ndarray          # (N, 3) metres (== samples[:, 0])
    knots: np.ndarray              # (D + degree + 1,) shared by all traces
    control_points: np.ndarray     # (N, D, 3) metres
    samples: np.ndarray            # (N, H + 1, 3) metres
    validity: np.ndarray           # (N, H + 1) in [0, 1]
    confidence: np.ndarray         # (N,)
    degree: int = 3
    camera_to_frame: RigidTransform = field(default_factory=RigidTransform.identity)

    def __post_init__(self):
        n = len(self.query_ids)
        checks = {
            "entities": (len(self.entities), n),
            "pixels": (np.shape(self.pixels), (n, 2)),
            "positions": (np.shape(self.positions), (n, 3)),
            "samples": (np.shape(self.samples), (n, self.horizon_steps + 1, 3)),
            "validity": (np.shape(self.validity), (n, self.horizon_steps + 1)),
            "confidence": (np.shape(self.confidence), (n,)),
        }
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"TraceSet.{name}: expected shape {want}, got {got}")
        cp = np.shape(self.control_points)
        if len(cp) != 3 or cp[0] != n or cp[2] != 3:
            raise ValueError(f"TraceSet.control_points: expected (N={n}, D, 3), got {cp}")
        if len(self.knots) != cp[1] + self.degree + 1:
            raise ValueError(f"TraceSet.knots: expected {cp[1] + self.degree + 1} knots, got {len(self.knots)}")

    def __len__(self) -> int:
        return len(self.query_ids)
