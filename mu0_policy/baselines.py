"""Non-learned trace predictors: the paper's reference baselines, and stand-ins for the node.

* `ZeroMotionPredictor`: every query stays where it is for the whole horizon.
* `ConstantVelocityPredictor`: extrapolates the velocity of the query's history (a least-squares
  slope over the last few valid history steps and the current position); zero motion when a
  query has no usable history.

Both are deterministic, so all K samples are identical. Their control points are exact: a
clamped cubic B-spline reproduces any linear function when its control points sit on that
function at the Greville abscissae, so decoding `ctrl_uvz` with the knots returns the samples.
"""
from __future__ import annotations

import numpy as np

from mu0_core import query_geometry
from mu0_core.bspline import greville_abscissae, paper_knots
from mu0_core.query_geometry import history_valid_mask  # model/predictor.py imports it from here too
from mu0_core.trace_spec import NUM_CTRL, SPLINE_DEGREE
from mu0_policy.inference import (DEFAULT_HORIZON, DEFAULT_STEP_PERIOD, HISTORY_STEPS, TracePredictor,
                                  TraceRequest, TraceResult, check_predict_args)

DEGREE = SPLINE_DEGREE


def query_anchor_uvz(request: TraceRequest) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) current uvz of each query of a request and (N,) whether its depth is known:
    `mu0_core.query_geometry.query_anchor_uvz` (the rule training data is made with) on its fields;
    the request's `query_depth`, when the caller sampled it already, instead of sampling again."""
    return query_geometry.query_anchor_uvz(request.depth, request.query_px, request.intrinsics.width,
                                           request.intrinsics.height, request.history_uvz,
                                           z=request.query_depth)


class _LinearMotionPredictor(TracePredictor):
    """Shared machinery: a per-query constant velocity (uvz per step) -> samples and controls."""

    def __init__(self, model_id: str, horizon: int = DEFAULT_HORIZON, num_ctrl: int = NUM_CTRL,
                 step_period: float = DEFAULT_STEP_PERIOD):
        if horizon < 1:
            raise ValueError(f"horizon: must be >= 1, got {horizon}")
        if num_ctrl < DEGREE + 1:
            raise ValueError(f"num_ctrl: must be >= {DEGREE + 1}, got {num_ctrl}")
        self.model_id = model_id
        self.horizon = int(horizon)
        self.num_ctrl = int(num_ctrl)
        self.step_period = float(step_period)
        self.knots = paper_knots(self.num_ctrl, DEGREE)
        self._greville = greville_abscissae(self.knots)

    def velocities(self, request: TraceRequest, anchor: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, requests, num_samples: int = 1, seed: int | None = None) -> list[TraceResult]:
        check_predict_args(requests, num_samples)
        k = int(num_samples)
        steps = np.arange(self.horizon + 1, dtype=np.float32)
        results = []
        for req in requests:
            anchor, known = query_anchor_uvz(req)
            vel = self.velocities(req, anchor).astype(np.float32)            # (N, 3) per step
            samples = anchor[:, None, :] + steps[None, :, None] * vel[:, None, :]
            ctrl = anchor[:, None, :] + (self._greville * self.horizon)[None, :, None].astype(np.float32) * vel[:, None, :]
            validity = np.repeat(known.astype(np.float32)[:, None], self.horizon + 1, axis=1)
            results.append(TraceResult(
                samples_uvz=np.repeat(samples[None], k, axis=0),
                validity=np.repeat(validity[None], k, axis=0),
                ctrl_uvz=np.repeat(ctrl[None], k, axis=0).astype(np.float32),
                knots=self.knots.copy()))
        return results


class ZeroMotionPredictor(_LinearMotionPredictor):
    """Every query stays at its current position."""

    def __init__(self, horizon: int = DEFAULT_HORIZON, num_ctrl: int = NUM_CTRL,
                 step_period: float = DEFAULT_STEP_PERIOD):
        super().__init__("baseline/zero_motion", horizon, num_ctrl, step_period)

    def velocities(self, request, anchor):
        return np.zeros_like(anchor)


class ConstantVelocityPredictor(_LinearMotionPredictor):
    """Extrapolates each query's recent history velocity; zero motion without history.

    The velocity is the least-squares slope over the current position (time 0) and the valid
    history steps among the last `window` ones (times -window..-1); one valid history step is
    enough. A slope over several steps damps tracker jitter that a last-difference would amplify.
    """

    def __init__(self, horizon: int = DEFAULT_HORIZON, num_ctrl: int = NUM_CTRL,
                 step_period: float = DEFAULT_STEP_PERIOD, window: int = 4):
        if not 1 <= window <= HISTORY_STEPS:
            raise ValueError(f"window: must be in 1..{HISTORY_STEPS}, got {window}")
        super().__init__("baseline/constant_velocity", horizon, num_ctrl, step_period)
        self.window = int(window)

    def velocities(self, request, anchor):
        n = len(anchor)
        if request.history_uvz is None:
            return np.zeros((n, 3), np.float32)
        hist = np.asarray(request.history_uvz, np.float32)
        ok = history_valid_mask(hist)
        times = np.arange(-HISTORY_STEPS, 0, dtype=np.float64)
        vel = np.zeros((n, 3), np.float64)
        for i in range(n):
            sel = np.nonzero(ok[i, HISTORY_STEPS - self.window:])[0] + HISTORY_STEPS - self.window
            if sel.size == 0:
                continue
            t = np.concatenate([times[sel], [0.0]])
            p = np.concatenate([hist[i, sel].astype(np.float64), anchor[i:i + 1].astype(np.float64)])
            tc = t - t.mean()
            vel[i] = (tc[:, None] * (p - p.mean(axis=0))).sum(axis=0) / (tc ** 2).sum()
        return vel
