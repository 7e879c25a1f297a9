"""B-spline trace parametrisation: knots, basis, decode, fit, normaliser (numpy and torch)."""
import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from mu0_core import bspline as bs

T33 = np.arange(33) / 32.0


def circle(t, radius=0.3, centre=(0.1, -0.2), depth=(0.8, 0.1)):
    ang = 1.5 * np.pi * t
    return np.stack([centre[0] + radius * np.cos(ang), centre[1] + radius * np.sin(ang),
                     depth[0] + depth[1] * t], axis=-1)


def parabola(t):
    return np.stack([-0.5 + 0.8 * t, 0.3 - 1.2 * t + 1.1 * t ** 2, 0.6 - 0.2 * t ** 2], axis=-1)


# ----------------------------------------------------------------------------------- knots
def test_paper_knots_match_the_paper():
    np.testing.assert_allclose(bs.paper_knots(10), [0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3,
                                                    1, 1, 1, 1])
    np.testing.assert_allclose(bs.paper_knots(7), [0, 0, 0, 0, .5, .5, .5, 1, 1, 1, 1])
    np.testing.assert_allclose(bs.paper_knots(4), [0, 0, 0, 0, 1, 1, 1, 1])


def test_uniform_clamped_knots():
    k = bs.uniform_clamped_knots(6)
    np.testing.assert_allclose(k, [0, 0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1])
    assert len(bs.uniform_clamped_knots(10, degree=2)) == 13


@pytest.mark.parametrize("num_ctrl", [4, 7, 10])
def test_basis_partition_of_unity_and_clamping(num_ctrl):
    B = bs.basis_matrix(num_ctrl, 32)
    assert B.shape == (33, num_ctrl)
    np.testing.assert_allclose(B.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(B >= -1e-15)
    # clamped: the anchor row picks control point 0, the last row the last control point
    np.testing.assert_array_equal(B[0], np.eye(num_ctrl)[0])
    np.testing.assert_allclose(B[-1], np.eye(num_ctrl)[-1], atol=1e-15)
    P = np.random.default_rng(0).normal(size=(num_ctrl, 3))
    S = bs.decode(P, B)
    np.testing.assert_array_equal(S[0], P[0])
    np.testing.assert_allclose(S[-1], P[-1], atol=1e-14)


def test_uniform_basis_partition_of_unity():
    B = bs.basis_matrix(9, 40, knots=bs.uniform_clamped_knots(9))
    np.testing.assert_allclose(B.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("knots_fn", ["paper", "uniform"])
@pytest.mark.parametrize("num_ctrl", [4, 7, 10])
def test_decode_agrees_with_scipy(knots_fn, num_ctrl):
    knots = bs.paper_knots(num_ctrl) if knots_fn == "paper" else bs.uniform_clamped_knots(num_ctrl)
    B = bs.basis_matrix(num_ctrl, 32, knots=knots)
    P = np.random.default_rng(num_ctrl).normal(size=(4, 5, num_ctrl, 3))
    got = bs.decode(P, B)
    assert got.shape == (4, 5, 33, 3)
    ref = BSpline(knots, np.moveaxis(P, -2, 0), 3)(T33)          # (33, 4, 5, 3)
    np.testing.assert_allclose(got, np.moveaxis(ref, 0, -2), atol=1e-9, rtol=0)


@pytest.mark.parametrize("knots_fn", ["paper", "uniform"])
def test_first_derivative_agrees_with_scipy(knots_fn):
    knots = bs.paper_knots(10) if knots_fn == "paper" else bs.uniform_clamped_knots(10)
    dB = bs.basis_matrix(10, 32, knots=knots, derivative=1)
    P = np.random.default_rng(1).normal(size=(10, 2))
    ref = BSpline(knots, P, 3).derivative(1)(T33[:-1])
    np.testing.assert_allclose((dB @ P)[:-1], ref, atol=1e-9)


def _jump(knots, P, t, derivative, eps=1e-9):
    left = bs.basis_functions([t - eps], knots, 3, derivative) @ P
    right = bs.basis_functions([t + eps], knots, 3, derivative) @ P
    return float(np.abs(left - right).max())


def test_derivative_continuity_follows_knot_multiplicity():
    rng = np.random.default_rng(2)
    # simple interior knots: C^2 at every knot
    k_uni = bs.uniform_clamped_knots(10)
    P = rng.normal(size=(10, 3))
    for t in np.unique(k_uni[4:-4]):
        for d in (0, 1, 2):
            # a continuous d-th derivative changes by at most ~2 eps |f^(d+1)| across t +- eps
            slope = max(np.abs(bs.basis_functions([t - 1e-9, t + 1e-9], k_uni, 3, d + 1) @ P).max(), 1.0)
            assert _jump(k_uni, P, t, d) < 4e-9 * slope + 1e-9, (t, d)
        # third derivative is piecewise constant and does jump
        assert _jump(k_uni, P, t, 3) > 1e-3
    # the paper's multiplicity-3 knots: only C^0 at 1/3 and 2/3 (Bezier joints)
    k_pap = bs.paper_knots(10)
    for t in (1 / 3, 2 / 3):
        assert _jump(k_pap, P, t, 0) < 1e-6
        assert _jump(k_pap, P, t, 1) > 1e-3
    # ...unless the control polygon is collinear and evenly spaced through the joint (G1/C1 case)
    P_line = np.linspace(0, 1, 10)[:, None] * np.array([1.0, 2.0, -1.0])
    for t in (1 / 3, 2 / 3):
        assert _jump(k_pap, P_line, t, 1) < 1e-6


# ------------------------------------------------------------------------------------ fit
@pytest.mark.parametrize("curve", [circle, parabola])
def test_fit_then_decode_reproduces_smooth_curves(curve):
    x = curve(T33)
    B = bs.basis_matrix(10, 32)
    # without the regulariser a cubic spline with 3 segments reproduces a parabola exactly and a
    # 3/4 circle of radius 0.3 to well under 1e-3 (stated tolerance)
    P0 = bs.fit(x, B, ridge=0.0)
    tol0 = 1e-12 if curve is parabola else 1e-3
    assert np.abs(bs.decode(P0, B) - x).max() < tol0
    # with the paper's lambda = 0.2 the first-difference term shrinks the polygon slightly: < 2 %
    # of the curve's extent
    P = bs.fit(x, B)
    extent = np.ptp(x, axis=0).max()
    assert np.abs(bs.decode(P, B) - x).max() < 0.02 * extent
    np.testing.assert_array_equal(P[0], x[0])  # anchor pinned exactly


def test_fit_is_batched():
    xs = np.stack([circle(T33, radius=r) for r in (0.1, 0.2, 0.3)])[None].repeat(2, axis=0)
    B = bs.basis_matrix(10, 32)
    P = bs.fit(xs, B)
    assert P.shape == (2, 3, 10, 3)
    for i in range(3):
        np.testing.assert_allclose(P[1, i], bs.fit(xs[1, i], B), atol=1e-12)


def test_masked_step_does_not_pull_the_fit():
    x = parabola(T33)
    B = bs.basis_matrix(10, 32)
    corrupted = x.copy()
    corrupted[12] += 5.0          # a wild outlier
    corrupted[20] = np.nan        # and a missing step
    valid = np.ones(33, bool)
    valid[[12, 20]] = False
    P_masked = bs.fit(corrupted, B, valid)
    P_clean = bs.fit(x, B, valid)
    np.testing.assert_allclose(P_masked, P_clean, atol=1e-12)
    # the same outlier with weight 1 does pull it
    P_pulled = bs.fit(np.where(np.isnan(corrupted), x, corrupted), B)
    assert np.abs(P_pulled - P_clean).max() > 0.1


def test_regulariser_pulls_control_points_together():
    x = circle(T33)
    B = bs.basis_matrix(10, 32)
    spread = [np.linalg.norm(np.diff(bs.fit(x, B, ridge=r), axis=0), axis=-1).sum()
              for r in (0.0, 0.2, 1.0, 5.0)]
    assert spread[0] > spread[1] > spread[2] > spread[3]
    # and it keeps the fit defined when fewer than D steps are valid
    valid = np.zeros(33, bool)
    valid[:4] = True
    P = bs.fit(x, B, valid, ridge=0.2)
    assert np.all(np.isfinite(P))


def test_fit_without_pinned_anchor_matches_augmented_lstsq():
    x = circle(T33)
    B = bs.basis_matrix(10, 32)
    w = np.ones(33)
    w[5:9] = 0
    G = bs.first_difference_matrix(10)
    A = np.vstack([B * w[:, None], 0.2 * G])
    rhs = np.vstack([x * w[:, None], np.zeros((9, 3))])
    ref = np.linalg.lstsq(A, rhs, rcond=None)[0]
    np.testing.assert_allclose(bs.fit(x, B, w > 0, pin_anchor=False), ref, atol=1e-10)


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(3)
    x = circle(T33)[None] + 0.01 * rng.normal(size=(6, 33, 3))
    valid = rng.random((6, 33)) > 0.2
    B = bs.basis_matrix(10, 32)
    P_np = bs.fit(x, B, valid)
    P_t = bs.fit_torch(torch.tensor(x), B, torch.tensor(valid))
    np.testing.assert_allclose(P_t.numpy(), P_np, atol=1e-10)
    np.testing.assert_allclose(bs.decode_torch(torch.tensor(P_np), torch.as_tensor(B)).numpy(),
                               bs.decode(P_np, B), atol=1e-12)
    # float32 torch within float32 precision
    P32 = bs.fit_torch(torch.tensor(x, dtype=torch.float32), B, torch.tensor(valid))
    assert P32.dtype == torch.float32
    np.testing.assert_allclose(P32.numpy(), P_np, atol=1e-4)


def test_fit_torch_is_differentiable():
    x = torch.tensor(circle(T33), requires_grad=True)
    P = bs.fit_torch(x, bs.basis_matrix(10, 32))
    P.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- normaliser
def _corpus(rng, n=64):
    t = T33
    traces = []
    for _ in range(n):
        a = rng.uniform(-0.5, 0.5, size=3) + np.array([0, 0, 1.0])
        v = rng.normal(scale=[0.3, 0.2, 0.05])
        acc = rng.normal(scale=[0.2, 0.2, 0.02])
        traces.append(a + v * t[:, None] + acc * t[:, None] ** 2)
    return np.stack(traces)


def test_normalizer_round_trip_and_anchor():
    rng = np.random.default_rng(4)
    traces = _corpus(rng)
    valid = np.ones(traces.shape[:2], bool)
    norm = bs.TraceNormalizer.from_corpus(traces, valid)
    expected_scale = np.percentile(np.abs(traces[:, 1:] - traces[:, :1]).reshape(-1, 3), 95, axis=0)
    np.testing.assert_allclose(norm.scale, expected_scale)
    ctrl = norm.encode(traces, valid)
    assert ctrl.shape == (64, 10, 3) and ctrl.dtype == np.float32
    np.testing.assert_array_equal(ctrl[:, 0], 0.0)      # anchor is 0 in anchor-relative space
    assert np.abs(ctrl).max() <= 1.5
    dec = norm.decode(ctrl, traces[:, 0])
    np.testing.assert_allclose(dec[:, 0], traces[:, 0], atol=1e-12)
    # traces whose control points were not clipped: only the regulariser and float32 storage
    # separate decode from the data (< 2 % of the trace extent)
    unclipped = np.abs(ctrl).max(axis=(1, 2)) < 1.5
    assert unclipped.sum() > 32
    err = np.abs(dec - traces).max(axis=(1, 2))
    assert np.all(err[unclipped] < 0.02 * np.ptp(traces, axis=1).max(axis=1)[unclipped])
    dec_t = norm.decode_torch(torch.tensor(ctrl), torch.tensor(traces[:, 0], dtype=torch.float32))
    np.testing.assert_allclose(dec_t.numpy(), dec, atol=1e-5)


def test_normalizer_clips_and_zeros_unusable_traces():
    rng = np.random.default_rng(5)
    traces = _corpus(rng, 8)
    norm = bs.TraceNormalizer(scale=np.array([0.01, 0.01, 0.01]))
    valid = np.ones(traces.shape[:2], bool)
    valid[3, 5:] = False                                 # only 4 valid future steps < D = 10
    ctrl = norm.encode(traces, valid)
    assert np.abs(ctrl).max() == pytest.approx(1.5)
    np.testing.assert_array_equal(ctrl[3], 0.0)
    assert not bs.enough_valid_steps(valid, 10)[3] and bs.enough_valid_steps(valid, 10)[2]


def test_normalizer_dict_round_trip():
    norm = bs.TraceNormalizer(scale=np.array([0.1, 0.2, 0.05]), num_ctrl=7, ridge=0.3)
    back = bs.TraceNormalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(back.scale, norm.scale)
    assert back.num_ctrl == 7 and back.ridge == 0.3
    np.testing.assert_array_equal(back.basis, norm.basis)
    with pytest.raises(ValueError, match="normalizer.num_ctrl"):
        bs.TraceNormalizer.from_dict({**norm.to_dict(), "num_ctrl": "ten"})
    with pytest.raises(ValueError, match="scale"):
        bs.TraceNormalizer.from_dict({**norm.to_dict(), "scale": [0.1, -1, 0.1]})


# ------------------------------------------------------------------------------ bad input
def test_bad_input_raises_naming_the_argument():
    B = bs.basis_matrix(10, 32)
    with pytest.raises(ValueError, match="num_ctrl"):
        bs.paper_knots(5)
    with pytest.raises(ValueError, match="num_ctrl"):
        bs.basis_matrix(8, 32)
    with pytest.raises(ValueError, match="horizon"):
        bs.basis_matrix(10, 8)                           # H < D
    with pytest.raises(ValueError, match="ctrl"):
        bs.decode(np.zeros((7, 3)), B)
    with pytest.raises(ValueError, match="ctrl"):
        bs.decode(np.full((10, 3), np.nan), B)
    with pytest.raises(ValueError, match="samples"):
        bs.fit(np.zeros((32, 3)), B)
    with pytest.raises(ValueError, match="samples"):
        bs.fit(np.full((33, 3), np.nan), B)
    with pytest.raises(ValueError, match="valid"):
        bs.fit(np.zeros((33, 3)), B, valid=np.ones(32, bool))
    with pytest.raises(ValueError, match="ridge"):
        bs.fit(np.zeros((33, 3)), B, ridge=-1)
    with pytest.raises(ValueError, match="knots"):
        bs.basis_matrix(10, 32, knots=np.linspace(0, 1, 14))
    with pytest.raises(ValueError, match="samples_abs"):
        bs.TraceNormalizer(scale=np.ones(3)).encode(np.zeros((4, 33, 2)))
    with pytest.raises(ValueError, match="anchor"):
        bs.TraceNormalizer(scale=np.ones(3)).decode(np.zeros((4, 10, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="ctrl"):
        bs.decode_torch(torch.zeros(4, 3), B)
