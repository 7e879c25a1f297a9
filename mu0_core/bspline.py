"""Clamped cubic B-splines for interaction traces (numpy core, torch twins for the model).

A trace of H + 1 samples (step 0 = the anchor, i.e. the query's current position) is represented
by D control points P through a fixed basis matrix B of shape (H + 1, D), sampled at t = i / H:
``samples = B @ P``. Because the knot vector is clamped, row 0 of B is (1, 0, ..., 0), so
``samples[0] == P[0]`` (the trace starts at the anchor) and ``samples[H] == P[D-1]``.

Fitting (samples -> control points) follows the paper / authors' code (Yoonkyo/mu0):
weighted least squares with per-step validity as weights plus a Tikhonov term on first differences
of consecutive control points. The objective is

    sum_i w_i * ||B_i P - X_i||^2  +  ridge^2 * sum_j ||P_{j+1} - P_j||^2

(``ridge`` scales the difference operator that is stacked under the weighted basis, as the
authors do, so ridge = 0.2 weighs squared differences by 0.04). By default control point 0 is
pinned to the anchor sample exactly (the authors only pull it there with a weight-1 row; pinning
keeps the decoded trace starting at the query point bit-for-bit).

``TraceNormalizer`` maps absolute traces to the model's target space: anchor-relative, divided
per axis by the corpus 95th percentile of |p_t - p_anchor| (u_n, v_n in normalised image units,
depth in metres), fitted, then clipped to |P| <= 1.5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the knot rule and the default sizes are the trace spec's; re-exported for callers of bspline
from mu0_core.trace_spec import (HORIZON_STEPS, NUM_CTRL, SPLINE_DEGREE, SUPPORTED_NUM_CTRL,  # noqa: F401
                                 check_int, paper_knots)

DEFAULT_DEGREE = SPLINE_DEGREE
DEFAULT_HORIZON = HORIZON_STEPS
DEFAULT_RIDGE = 0.2
DEFAULT_CLIP = 1.5
DEFAULT_PERCENTILE = 95.0


# ----------------------------------------------------------------------------------------------
# knots and basis
# ----------------------------------------------------------------------------------------------
def uniform_clamped_knots(num_ctrl: int, degree: int = 3) -> np.ndarray:
    """Clamped knots with simple (multiplicity-1) uniformly spaced interior knots: C^(degree-1)."""
    degree = check_int("degree", degree, 1)
    num_ctrl = check_int("num_ctrl", num_ctrl, degree + 1)
    spans = num_ctrl - degree
    interior = np.arange(1, spans) / spans
    return np.concatenate([np.zeros(degree + 1), interior, np.ones(degree + 1)])


def greville_abscissae(knots: np.ndarray, degree: int = 3) -> np.ndarray:
    """Parameter value 'owned' by each control point: mean of the `degree` knots after it."""
    num_ctrl = len(knots) - degree - 1
    return np.array([knots[i + 1:i + degree + 1].mean() for i in range(num_ctrl)])


def _check_knots(knots, num_ctrl: int, degree: int) -> np.ndarray:
    k = np.asarray(knots, dtype=np.float64)
    if k.ndim != 1 or k.shape[0] != num_ctrl + degree + 1:
        raise ValueError(f"knots must be 1-D with num_ctrl + degree + 1 = {num_ctrl + degree + 1} "
                         f"entries, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("knots must be finite")
    if np.any(np.diff(k) < 0):
        raise ValueError("knots must be non-decreasing")
    if not (np.all(k[: degree + 1] == 0.0) and np.all(k[-degree - 1:] == 1.0)):
        raise ValueError(f"knots must be clamped on [0, 1] (first and last {degree + 1} equal to 0 "
                         f"and 1), got {k.tolist()}")
    interior_counts = np.unique(k[degree + 1: -degree - 1], return_counts=True)[1]
    if np.any(interior_counts > degree) or np.any((k[degree + 1: -degree - 1] <= 0) | (k[degree + 1: -degree - 1] >= 1)):
        raise ValueError(f"knots: interior knots must lie in (0, 1) with multiplicity <= degree ({degree})")
    return k


def basis_functions(t, knots, degree: int = 3, derivative: int = 0) -> np.ndarray:
    """All B-spline basis functions (or their ``derivative``-th derivative) at parameters ``t``.

    t: (T,) in [0, 1]; returns (T, len(knots) - degree - 1). Spans are half-open [k_i, k_{i+1})
    except that t = 1 belongs to the last non-empty span, so the curve ends at the last control
    point. At a knot the derivative is the right-hand limit (left-hand at t = 1).
    """
    knots = np.asarray(knots, dtype=np.float64)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError(f"t must be a finite 1-D array, got shape {t.shape}")
    if np.any(t < knots[0]) or np.any(t > knots[-1]):
        raise ValueError(f"t must lie in [{knots[0]}, {knots[-1]}]")
    derivative = check_int("derivative", derivative, 0)
    n_funcs0 = len(knots) - 1
    # degree-0 indicators on every knot span
    left, right = knots[:-1], knots[1:]
    N = ((t[:, None] >= left[None, :]) & (t[:, None] < right[None, :])).astype(np.float64)
    last_span = int(np.nonzero(right > left)[0][-1])
    at_end = t >= knots[-1]
    N[at_end, :] = 0.0
    N[at_end, last_span] = 1.0
    lower = degree - derivative  # build plain basis up to this degree, then differentiate
    for p in range(1, degree + 1):
        n_funcs = n_funcs0 - p
        d1 = knots[p: p + n_funcs] - knots[:n_funcs]             # k_{i+p} - k_i
        d2 = knots[p + 1: p + 1 + n_funcs] - knots[1: 1 + n_funcs]  # k_{i+p+1} - k_{i+1}
        inv1 = np.divide(1.0, d1, out=np.zeros_like(d1), where=d1 > 0)
        inv2 = np.divide(1.0, d2, out=np.zeros_like(d2), where=d2 > 0)
        if p <= lower:
            a = (t[:, None] - knots[None, :n_funcs]) * inv1
            b = (knots[None, p + 1: p + 1 + n_funcs] - t[:, None]) * inv2
        else:  # derivative step: N'_{i,p} = p/d1 N_{i,p-1} - p/d2 N_{i+1,p-1}
            a = np.broadcast_to(p * inv1, (t.shape[0], n_funcs))
            b = np.broadcast_to(-p * inv2, (t.shape[0], n_funcs))
        N = a * N[:, :n_funcs] + b * N[:, 1: n_funcs + 1]
    return N


def basis_matrix(num_ctrl: int = NUM_CTRL, horizon: int = DEFAULT_HORIZON, degree: int = 3,
                 knots=None, derivative: int = 0) -> np.ndarray:
    """(horizon + 1, num_ctrl) float64 basis, row i at t = i / horizon; row 0 is the anchor row.

    ``knots=None`` uses :func:`paper_knots`. ``derivative`` > 0 gives d^k/dt^k of the basis
    (t in [0, 1] over the whole horizon).
    """
    degree = check_int("degree", degree, 1)
    num_ctrl = check_int("num_ctrl", num_ctrl, degree + 1)
    horizon = check_int("horizon", horizon, 1)
    if horizon < num_ctrl:
        raise ValueError(f"horizon must be >= num_ctrl ({num_ctrl}) so a fit is determined, "
                         f"got horizon={horizon}")
    k = paper_knots(num_ctrl, degree) if knots is None else _check_knots(knots, num_ctrl, degree)
    t = np.arange(horizon + 1, dtype=np.float64) / horizon
    return basis_functions(t, k, degree, derivative)


def first_difference_matrix(num_ctrl: int) -> np.ndarray:
    """(num_ctrl - 1, num_ctrl) operator with rows [.., -1, 1, ..]: (Gamma P)_j = P_{j+1} - P_j."""
    num_ctrl = check_int("num_ctrl", num_ctrl, 2)
    G = np.zeros((num_ctrl - 1, num_ctrl))
    idx = np.arange(num_ctrl - 1)
    G[idx, idx] = -1.0
    G[idx, idx + 1] = 1.0
    return G


# ----------------------------------------------------------------------------------------------
# decode / fit (numpy)
# ----------------------------------------------------------------------------------------------
def _check_basis(basis) -> np.ndarray:
    B = np.asarray(basis)
    if B.ndim != 2 or B.shape[0] < 2 or B.shape[1] < 2:
        raise ValueError(f"basis must be 2-D (H+1, D), got shape {B.shape}")
    if B.shape[0] - 1 < B.shape[1]:
        raise ValueError(f"basis has H={B.shape[0] - 1} < D={B.shape[1]}; H must be >= D")
    return B


def decode(ctrl, basis) -> np.ndarray:
    """Control points (..., D, C) -> samples (..., H+1, C) through basis (H+1, D)."""
    B = _check_basis(basis)
    P = np.asarray(ctrl)
    if P.ndim < 2 or P.shape[-2] != B.shape[1]:
        raise ValueError(f"ctrl must be (..., D={B.shape[1]}, C), got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("ctrl contains NaN or inf")
    dtype = np.result_type(P.dtype, np.float32)
    return np.matmul(B.astype(dtype, copy=False), P.astype(dtype, copy=False))


def _fit_weights(samples_shape, valid, what="valid"):
    lead = samples_shape[:-1]
    if valid is None:
        return np.ones(lead, dtype=np.float64)
    w = np.asarray(valid)
    if w.shape != tuple(lead):
        raise ValueError(f"{what} must have shape {tuple(lead)} (samples without the last axis), "
                         f"got {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{what} weights must be finite and >= 0")
    return w


def _fit_system(B: np.ndarray, ridge: float, pin_anchor: bool):
    """Pieces of the normal equations that do not depend on the data."""
    D = B.shape[1]
    G = first_difference_matrix(D)
    R = (ridge ** 2) * (G.T @ G)                         # (D, D) regulariser
    if pin_anchor:
        return B[:, 1:], B[:, 0], R[1:, 1:], R[1:, 0]
    return B, None, R, None


def fit(samples, basis, valid=None, ridge: float = DEFAULT_RIDGE, pin_anchor: bool = True) -> np.ndarray:
    """Samples (..., H+1, C) -> control points (..., D, C) by weighted ridge least squares.

    valid: (..., H+1) bool or non-negative weights (None = all ones); a step with weight 0 has no
    influence and may hold NaN. pin_anchor: control point 0 is set to ``samples[..., 0, :]``
    exactly and the rest are solved for (step 0 must then be finite); otherwise all D points are
    solved with step 0 weighted like any other step.
    """
    B = _check_basis(basis).astype(np.float64)
    X = np.asarray(samples, dtype=np.float64)
    H1, D = B.shape
    if X.ndim < 2 or X.shape[-2] != H1:
        raise ValueError(f"samples must be (..., H+1={H1}, C), got shape {X.shape}")
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
    w = _fit_weights(X.shape, valid)
    used = w > 0
    if pin_anchor:
        used = used.copy()
        used[..., 0] = True
    if not np.all(np.isfinite(X[used])):
        raise ValueError("samples contain NaN or inf at steps with non-zero validity weight"
                         + (" (or at the anchor step 0)" if pin_anchor else ""))
    X = np.where(used[..., None], X, 0.0)
    Bs, b0, R, r0 = _fit_system(B, float(ridge), pin_anchor)
    # normal equations per trace: (Bs^T W Bs + R) Q = Bs^T W (X - b0 p0) - r0 p0
    A = np.einsum("...t,td,te->...de", w, Bs, Bs) + R
    if pin_anchor:
        p0 = X[..., 0, :]
        resid = X - b0[:, None] * p0[..., None, :]
        rhs = np.einsum("...t,td,...tc->...dc", w, Bs, resid) - r0[:, None] * p0[..., None, :]
    else:
        rhs = np.einsum("...t,td,...tc->...dc", w, Bs, X)
    try:
        Q = np.linalg.solve(A, rhs)
    except np.linalg.LinAlgError:
        # rank-deficient only when ridge == 0 and too few steps are valid: minimum-norm solution
        Q = np.matmul(np.linalg.pinv(A), rhs)
    if pin_anchor:
        Q = np.concatenate([p0[..., None, :], Q], axis=-2)
    return Q


def enough_valid_steps(valid, num_ctrl: int) -> np.ndarray:
    """(..., H+1) validity -> (...,) bool: at least ``num_ctrl`` valid FUTURE steps (the paper's
    rule for a keypoint to enter the loss)."""
    v = np.asarray(valid, dtype=bool)
    if v.ndim < 1 or v.shape[-1] < 2:
        raise ValueError(f"valid must be (..., H+1), got shape {v.shape}")
    return v[..., 1:].sum(axis=-1) >= num_ctrl


# ----------------------------------------------------------------------------------------------
# torch twins
# ----------------------------------------------------------------------------------------------
def _torch():
    import torch

    return torch


def _as_basis_tensor(basis, like):
    torch = _torch()
    B = torch.as_tensor(basis, dtype=like.dtype, device=like.device)
    if B.ndim != 2 or B.shape[0] - 1 < B.shape[1]:
        raise ValueError(f"basis must be 2-D (H+1, D) with H >= D, got shape {tuple(B.shape)}")
    return B


def decode_torch(ctrl, basis):
    """Torch twin of :func:`decode` (differentiable): (..., D, C) -> (..., H+1, C)."""
    torch = _torch()
    if not torch.is_tensor(ctrl):
        ctrl = torch.as_tensor(ctrl)
    if not ctrl.is_floating_point():
        ctrl = ctrl.float()
    B = _as_basis_tensor(basis, ctrl)
    if ctrl.ndim < 2 or ctrl.shape[-2] != B.shape[1]:
        raise ValueError(f"ctrl must be (..., D={B.shape[1]}, C), got shape {tuple(ctrl.shape)}")
    return torch.matmul(B, ctrl)


def fit_torch(samples, basis, valid=None, ridge: float = DEFAULT_RIDGE, pin_anchor: bool = True):
    """Torch twin of :func:`fit` (differentiable w.r.t. samples): (..., H+1, C) -> (..., D, C)."""
    torch = _torch()
    if not torch.is_tensor(samples):
        samples = torch.as_tensor(samples)
    if not samples.is_floating_point():
        samples = samples.double()
    B = _as_basis_tensor(basis, samples)
    H1, D = B.shape
    X = samples
    if X.ndim < 2 or X.shape[-2] != H1:
        raise ValueError(f"samples must be (..., H+1={H1}, C), got shape {tuple(X.shape)}")
    if not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
    if valid is None:
        w = torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
    else:
        w = torch.as_tensor(valid, device=X.device)
        if tuple(w.shape) != tuple(X.shape[:-1]):
            raise ValueError(f"valid must have shape {tuple(X.shape[:-1])}, got {tuple(w.shape)}")
        w = w.to(X.dtype)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("valid weights must be finite and >= 0")
    used = w > 0
    if pin_anchor:
        used = used.clone()
        used[..., 0] = True
    if not bool(torch.isfinite(X[used]).all()):
        raise ValueError("samples contain NaN or inf at steps with non-zero validity weight")
    X = torch.where(used[..., None], X, torch.zeros((), dtype=X.dtype, device=X.device))
    Bs_np, b0_np, R_np, r0_np = _fit_system(np.zeros((H1, D)), float(ridge), pin_anchor)
    R = torch.as_tensor(R_np, dtype=X.dtype, device=X.device)
    if pin_anchor:
        Bs, b0 = B[:, 1:], B[:, 0]
        r0 = torch.as_tensor(r0_np, dtype=X.dtype, device=X.device)
    else:
        Bs = B
    A = torch.einsum("...t,td,te->...de", w, Bs, Bs) + R
    if pin_anchor:
        p0 = X[..., 0, :]
        resid = X - b0[:, None] * p0[..., None, :]
        rhs = torch.einsum("...t,td,...tc->...dc", w, Bs, resid) - r0[:, None] * p0[..., None, :]
    else:
        rhs = torch.einsum("...t,td,...tc->...dc", w, Bs, X)
    Q = torch.linalg.solve(A, rhs) if ridge > 0 else torch.linalg.pinv(A) @ rhs
    if pin_anchor:
        Q = torch.cat([p0[..., None, :], Q], dim=-2)
    return Q


# ----------------------------------------------------------------------------------------------
# normaliser: absolute traces <-> the model's normalised anchor-relative control points
# ----------------------------------------------------------------------------------------------
@dataclass
class TraceNormalizer:
    """Anchor-relative, per-axis scaled, fitted and clipped control points (the model's targets).

    scale: (C,) per-axis scale — the ``percentile`` of |p_t - p_anchor| over all valid future
    steps of the corpus (u_n, v_n in normalised image units, depth in metres), as in the authors'
    ``trace_delta_stats``. In normalised space control point 0 is the anchor, i.e. exactly 0.
    """

    scale: np.ndarray
    num_ctrl: int = NUM_CTRL
    horizon: int = DEFAULT_HORIZON
    degree: int = DEFAULT_DEGREE
    ridge: float = DEFAULT_RIDGE
    clip: float = DEFAULT_CLIP
    percentile: float = DEFAULT_PERCENTILE
    knots: np.ndarray | None = None
    _basis: np.ndarray = field(init=False, repr=False)
    _torch_basis: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        s = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError(f"scale must be a non-empty vector of finite positive numbers, got {s}")
        self.scale = s
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be finite and > 0, got {self.clip}")
        if not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be finite and >= 0, got {self.ridge}")
        k = paper_knots(self.num_ctrl, self.degree) if self.knots is None else self.knots
        self.knots = _check_knots(k, check_int("num_ctrl", self.num_ctrl, self.degree + 1), self.degree)
        self._basis = basis_matrix(self.num_ctrl, self.horizon, self.degree, self.knots)

    @property
    def basis(self) -> np.ndarray:
        return self._basis

    @property
    def num_axes(self) -> int:
        return int(self.scale.shape[0])

    def _check_samples(self, samples_abs, valid):
        X = np.asarray(samples_abs, dtype=np.float64)
        if X.ndim < 2 or X.shape[-2:] != (self.horizon + 1, self.num_axes):
            raise ValueError(f"samples_abs must be (..., H+1={self.horizon + 1}, C={self.num_axes}), "
                             f"got shape {X.shape}")
        if valid is None:
            v = np.isfinite(X).all(axis=-1)
        else:
            v = np.asarray(valid)
            if v.shape != X.shape[:-1]:
                raise ValueError(f"valid must have shape {X.shape[:-1]}, got {v.shape}")
            v = v.astype(bool) & np.isfinite(X).all(axis=-1)
        return X, v

    def encode(self, samples_abs, valid=None) -> np.ndarray:
        """Absolute traces (..., H+1, C) + validity (..., H+1) -> normalised ctrl (..., D, C) float32.

        Traces with an invalid anchor (step 0) or fewer than D valid future steps get all-zero
        control points (they must not enter a loss; see :func:`enough_valid_steps`).
        """
        X, v = self._check_samples(samples_abs, valid)
        usable = v[..., 0] & enough_valid_steps(v, self.num_ctrl)
        anchor = np.where(v[..., 0:1, None], X[..., 0:1, :], 0.0)
        rel = np.where(v[..., None], (X - anchor) / self.scale, 0.0)
        w = v & usable[..., None]
        w[..., 0] = True  # the anchor (0 in relative space) is always an exact constraint
        P = fit(rel, self._basis, w.astype(np.float64), self.ridge, pin_anchor=True)
        P = np.clip(P, -self.clip, self.clip)
        P[~usable] = 0.0
        return P.astype(np.float32)

    def decode(self, ctrl_norm, anchor) -> np.ndarray:
        """Normalised ctrl (..., D, C) + anchor (..., C) -> absolute samples (..., H+1, C)."""
        P = np.asarray(ctrl_norm, dtype=np.float64)
        a = np.asarray(anchor, dtype=np.float64)
        if P.ndim < 2 or P.shape[-2:] != (self.num_ctrl, self.num_axes):
            raise ValueError(f"ctrl_norm must be (..., D={self.num_ctrl}, C={self.num_axes}), "
                             f"got shape {P.shape}")
        if a.shape != P.shape[:-2] + (self.num_axes,):
            raise ValueError(f"anchor must have shape {P.shape[:-2] + (self.num_axes,)}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("anchor contains NaN or inf")
        return decode(P, self._basis) * self.scale + a[..., None, :]

    def ctrl_to_abs(self, ctrl_norm, anchor) -> np.ndarray:
        """Normalised ctrl -> absolute control points (..., D, C) (what TraceSet/Trace carry)."""
        P = np.asarray(ctrl_norm, dtype=np.float64)
        a = np.asarray(anchor, dtype=np.float64)
        return P * self.scale + a[..., None, :]

    def decode_torch(self, ctrl_norm, anchor):
        """Torch twin of :meth:`decode` (differentiable)."""
        torch = _torch()
        P = ctrl_norm if torch.is_tensor(ctrl_norm) else torch.as_tensor(ctrl_norm, dtype=torch.float32)
        a = torch.as_tensor(anchor, dtype=P.dtype, device=P.device)
        if P.ndim < 2 or tuple(P.shape[-2:]) != (self.num_ctrl, self.num_axes):
            raise ValueError(f"ctrl_norm must be (..., D={self.num_ctrl}, C={self.num_axes}), "
                             f"got shape {tuple(P.shape)}")
        if tuple(a.shape) != tuple(P.shape[:-2]) + (self.num_axes,):
            raise ValueError(f"anchor must have shape {tuple(P.shape[:-2]) + (self.num_axes,)}, "
                             f"got {tuple(a.shape)}")
        key = (P.dtype, P.device)
        if key not in self._torch_basis:
            self._torch_basis[key] = (torch.as_tensor(self._basis, dtype=P.dtype, device=P.device),
                                      torch.as_tensor(self.scale, dtype=P.dtype, device=P.device))
        B, s = self._torch_basis[key]
        return torch.matmul(B, P) * s + a[..., None, :]

    @classmethod
    def from_corpus(cls, traces, valid=None, num_ctrl: int = NUM_CTRL, percentile: float = DEFAULT_PERCENTILE,
                    min_scale: float = 1e-6, **kwargs) -> "TraceNormalizer":
        """Per-axis scale from a corpus of absolute traces (M, H+1, C) (any leading dims).

        The scale is the ``percentile`` of |p_t - p_0| over steps t >= 1 where both p_t and the
        anchor p_0 are valid and finite; an axis that never moves gets ``min_scale``.
        """
        X = np.asarray(traces, dtype=np.float64)
        if X.ndim < 2 or X.shape[-2] < 2:
            raise ValueError(f"traces must be (..., H+1, C), got shape {X.shape}")
        v = np.isfinite(X).all(axis=-1)
        if valid is not None:
            vv = np.asarray(valid)
            if vv.shape != X.shape[:-1]:
                raise ValueError(f"valid must have shape {X.shape[:-1]}, got {vv.shape}")
            v &= vv.astype(bool)
        if not (0 < percentile <= 100):
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        pair = v[..., 1:] & v[..., :1]
        if not pair.any():
            raise ValueError("traces/valid: no valid (anchor, future step) pair in the corpus")
        with np.errstate(invalid="ignore"):
            delta = np.abs(X[..., 1:, :] - X[..., :1, :])
        d = delta[pair]                                     # (K, C)
        scale = np.maximum(np.percentile(d, percentile, axis=0), min_scale)
        horizon = kwargs.pop("horizon", X.shape[-2] - 1)
        return cls(scale=scale, num_ctrl=num_ctrl, horizon=horizon, percentile=percentile, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": [float(s) for s in self.scale],
            "num_ctrl": int(self.num_ctrl),
            "horizon": int(self.horizon),
            "degree": int(self.degree),
            "ridge": float(self.ridge),
            "clip": float(self.clip),
            "percentile": float(self.percentile),
            "knots": [float(k) for k in self.knots],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TraceNormalizer":
        if not isinstance(d, dict):
            raise ValueError(f"normalizer must be a dict, got {type(d).__name__}")
        if "scale" not in d:
            raise ValueError("normalizer.scale is missing")
        known = {"scale", "num_ctrl", "horizon", "degree", "ridge", "clip", "percentile", "knots"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"normalizer has unknown fields {sorted(unknown)}")
        kwargs = {}
        for name, typ in (("num_ctrl", int), ("horizon", int), ("degree", int), ("ridge", float),
                          ("clip", float), ("percentile", float)):
            if name in d:
                try:
                    kwargs[name] = typ(d[name])
                except (TypeError, ValueError):
                    raise ValueError(f"normalizer.{name} must be {typ.__name__}, got {d[name]!r}") from None
        try:
            scale = np.asarray(d["scale"], dtype=np.float64)
            knots = None if d.get("knots") is None else np.asarray(d["knots"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("normalizer.scale / normalizer.knots must be lists of numbers") from None
        try:
            return cls(scale=scale, knots=knots, **kwargs)
        except ValueError as e:
            raise ValueError(f"normalizer: {e}") from None
