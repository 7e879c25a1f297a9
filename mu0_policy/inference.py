"""Inference API of trace predictors (the contract in docs/interfaces.md "Inference API").

A `TracePredictor` maps batched (image, depth, intrinsics, instruction, query pixels, history)
requests to future interaction traces: K sampled traces per query as absolute `uvz`
(normalised u, v and depth in metres, in the request's camera), per-step validity
probabilities, and the cubic B-spline control points the samples were decoded from.

Implementations: the μ_0 model (`mu0_policy.model.predictor`, torch or onnxruntime backend)
and the non-learned baselines in `mu0_policy.baselines`; `mu0_policy.predictors.make_predictor`
builds either. Nothing here imports ROS (nor torch).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_core.query_geometry import depth_at_pixels, pixels_to_normalized  # noqa: F401
from mu0_core.trace_spec import HISTORY_STEPS, HORIZON_STEPS, STEP_PERIOD_S

# the trace spec's defaults under the names this API has always exported (mu0_core/trace_spec.py)
DEFAULT_HORIZON = HORIZON_STEPS
DEFAULT_STEP_PERIOD = STEP_PERIOD_S
BACKENDS = ("torch", "onnxruntime")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class TraceRequest:
    color: np.ndarray                     # (H, W, 3) uint8 RGB
    depth: np.ndarray | None              # (H, W) float32 metres, NaN invalid
    intrinsics: CameraIntrinsics
    instruction: str
    query_px: np.ndarray                  # (N, 2) float pixels
    history_uvz: np.ndarray | None = None  # (N, 8, 3), None = no history
    # (N,) metres: the depth at query_px already sampled by mu0_core.query_geometry.depth_at_pixels
    # (NaN = the pixel has none), so a caller that sampled it (the runtime: it drops depthless
    # queries first) does not make the predictor sample the image a second time; it wins over
    # `depth` for the anchor. None = the predictor samples `depth` (training, eval, API callers).
    query_depth: np.ndarray | None = None

    def validate(self) -> None:
        """Raise ValueError naming the field when the request breaks the contract."""
        color = np.asarray(self.color)
        if color.ndim != 3 or color.shape[2] != 3 or color.dtype != np.uint8:
            raise ValueError(f"TraceRequest.color: expected uint8 (H, W, 3), got {color.dtype} {color.shape}")
        h, w = color.shape[:2]
        if self.depth is not None:
            depth = np.asarray(self.depth)
            if depth.shape != (h, w):
                raise ValueError(f"TraceRequest.depth: expected shape {(h, w)} matching color, got {depth.shape}")
        if not isinstance(self.intrinsics, CameraIntrinsics):
            raise ValueError(f"TraceRequest.intrinsics: expected CameraIntrinsics, got {type(self.intrinsics).__name__}")
        if (self.intrinsics.width, self.intrinsics.height) != (w, h):
            raise ValueError(
                f"TraceRequest.intrinsics: size {self.intrinsics.width}x{self.intrinsics.height} "
                f"does not match color {w}x{h}")
        if not isinstance(self.instruction, str):
            raise ValueError(f"TraceRequest.instruction: expected str, got {type(self.instruction).__name__}")
        q = np.asarray(self.query_px)
        if q.ndim != 2 or q.shape[1] != 2:
            raise ValueError(f"TraceRequest.query_px: expected (N, 2), got {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError("TraceRequest.query_px: contains non-finite values")
        if self.history_uvz is not None:
            hist = np.asarray(self.history_uvz)
            if hist.shape != (q.shape[0], HISTORY_STEPS, 3):
                raise ValueError(
                    f"TraceRequest.history_uvz: expected {(q.shape[0], HISTORY_STEPS, 3)}, got {hist.shape}")
        if self.query_depth is not None:
            z = np.asarray(self.query_depth)
            if z.shape != (q.shape[0],) or not np.issubdtype(z.dtype, np.floating):
                raise ValueError(f"TraceRequest.query_depth: expected float ({q.shape[0]},), got {z.dtype} {z.shape}")
            with np.errstate(invalid="ignore"):
                bad = ~(np.isnan(z) | (np.isfinite(z) & (z > 0)))
            if bad.any():   # depth_at_pixels gives a measurement (finite, > 0) or NaN, nothing else
                raise ValueError("TraceRequest.query_depth: values must be finite and > 0, or NaN (no depth)")

    @property
    def num_queries(self) -> int:
        return int(np.asarray(self.query_px).shape[0])


@dataclass
class TraceResult:
    samples_uvz: np.ndarray   # (K, N, H+1, 3) absolute uvz in the request's camera
    validity: np.ndarray      # (K, N, H+1) probability
    ctrl_uvz: np.ndarray      # (K, N, D, 3) absolute uvz control points
    knots: np.ndarray         # (D + 4,)


class TracePredictor(ABC):
    model_id: str
    horizon: int
    step_period: float
    num_ctrl: int
    # what a history step of the training data meant (mu0_perception.query_history): "synchronous"
    # (equal scene progress, the authors' rule) or "arc_length" / "time" (time-spaced at step_period)
    history_parameterization: str = "arc_length"

    @abstractmethod
    def predict(self, requests: list[TraceRequest], num_samples: int = 1,
                seed: int | None = None) -> list[TraceResult]:
        """One TraceResult per request, each with `num_samples` samples."""

    def reset(self) -> None:
        """Drop any per-episode state (caches keyed on instructions are kept)."""


def check_predict_args(requests, num_samples) -> None:
    """Shared argument checks for `TracePredictor.predict` implementations."""
    if not isinstance(requests, (list, tuple)):
        raise ValueError(f"requests: expected a list of TraceRequest, got {type(requests).__name__}")
    for i, r in enumerate(requests):
        if not isinstance(r, TraceRequest):
            raise ValueError(f"requests[{i}]: expected TraceRequest, got {type(r).__name__}")
        r.validate()
    if int(num_samples) < 1:
        raise ValueError(f"num_samples: must be >= 1, got {num_samples}")


# Query geometry is mu0_core.query_geometry's (the rule training data is made with);
# `pixels_to_normalized` above and this name stay importable from here for the runtime's callers.
sample_depth_at = depth_at_pixels
