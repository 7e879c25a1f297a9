"""The trace spec: what one μ_0 trace is, in the one place every producer and consumer reads it from.

A trace of a query point is H + 1 samples (step 0 = the query now, steps 1..H the future) taken
every ``step_period`` seconds, conditioned on ``history`` past steps, and carried as D cubic
B-spline control points over the paper's knot vector. TraceExtract writes datasets with these
numbers, training reads them, the runtime builds requests with them, and the baselines and the
model decode with them; a dataset or checkpoint records its own values (they may differ from the
defaults below), so code that has a dataset index or a checkpoint config reads the numbers from
there and falls back to these only when nothing is recorded.

The defaults are the paper's (H = 32, h = 8, D = 10, cubic, interior knots of multiplicity 3)
and the sim recording period 0.0125 s (docs/interfaces.md). Pure numpy, imports nothing of ours.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HORIZON_STEPS = 32          # H: future steps after the query (a trace has H + 1 samples)
HISTORY_STEPS = 8           # h: past steps the model is conditioned on (t-8 .. t-1)
STEP_PERIOD_S = 0.0125      # seconds between two steps (the sim recorder's period)
NUM_CTRL = 10               # D: B-spline control points per trace
SPLINE_DEGREE = 3           # cubic
SUPPORTED_NUM_CTRL = (4, 7, 10)   # the authors' code: one, two or three Bézier segments


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int when it is an integer >= ``minimum`` (bools are not sizes); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def paper_knots(num_ctrl: int = NUM_CTRL, degree: int = SPLINE_DEGREE) -> np.ndarray:
    """Clamped knots whose interior knots have multiplicity ``degree`` (a chain of Bézier segments).

    D = 10 gives [0,0,0,0, 1/3,1/3,1/3, 2/3,2/3,2/3, 1,1,1,1]; D = 7 has one interior knot at 1/2;
    D = 4 is a single cubic Bézier segment.
    """
    degree = check_int("degree", degree, 1)
    num_ctrl = check_int("num_ctrl", num_ctrl, degree + 1)
    if degree == 3 and num_ctrl not in SUPPORTED_NUM_CTRL:
        raise ValueError(f"num_ctrl must be one of {SUPPORTED_NUM_CTRL} for the paper's cubic knots, "
                         f"got {num_ctrl}")
    if (num_ctrl - 1) % degree != 0:
        raise ValueError(f"num_ctrl - 1 must be a multiple of degree ({degree}) for Bézier-segment "
                         f"knots, got num_ctrl={num_ctrl}")
    segments = (num_ctrl - 1) // degree
    interior = np.repeat(np.arange(1, segments) / segments, degree)
    return np.concatenate([np.zeros(degree + 1), interior, np.ones(degree + 1)])


@dataclass(frozen=True)
class TraceSpec:
    """H, history length, step period, D and degree of a trace; the knots follow from D and degree."""

    horizon: int = HORIZON_STEPS
    history: int = HISTORY_STEPS
    step_period: float = STEP_PERIOD_S
    num_ctrl: int = NUM_CTRL
    degree: int = SPLINE_DEGREE

    def __post_init__(self):
        check_int("horizon", self.horizon, 1)
        check_int("history", self.history, 1)
        if not (np.isfinite(self.step_period) and self.step_period > 0):
            raise ValueError(f"step_period must be a positive number of seconds, got {self.step_period!r}")
        paper_knots(self.num_ctrl, self.degree)     # raises for a D the knot rule cannot make
        if self.horizon < self.num_ctrl:
            raise ValueError(f"horizon ({self.horizon}) must be >= num_ctrl ({self.num_ctrl}) so a fit is determined")

    @property
    def knots(self) -> np.ndarray:
        return paper_knots(self.num_ctrl, self.degree)

    @property
    def duration_s(self) -> float:
        """Seconds from the query to the last predicted step."""
        return self.horizon * self.step_period


TRACE_SPEC = TraceSpec()
