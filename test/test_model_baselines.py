"""Baseline trace predictors and the Inference API contract (mu0_policy.inference / baselines)."""
import numpy as np
import pytest
from scipy.interpolate import BSpline

from mu0_core.camera import CameraIntrinsics
from mu0_policy.baselines import ConstantVelocityPredictor, ZeroMotionPredictor
from mu0_policy.inference import TracePredictor, TraceRequest
from mu0_policy.predictors import make_predictor
from mu0_policy.model.checkpoint import CheckpointError

W, H = 64, 48
INTR = CameraIntrinsics(W, H, 50.0, 50.0, 31.5, 23.5)


def make_request(query_px, depth_value=0.8, history=None, depth_hole=None):
    depth = np.full((H, W), depth_value, np.float32)
    if depth_hole is not None:
        depth[depth_hole] = np.nan
    color = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return TraceRequest(color, depth, INTR, "push the block", np.asarray(query_px, np.float32), history)


def to_norm(px):
    px = np.asarray(px, np.float64)
    return np.stack([2 * (px[..., 0] + 0.5) / W - 1, 2 * (px[..., 1] + 0.5) / H - 1], -1)


def decode_ctrl(ctrl, knots, horizon):
    t = np.linspace(0, 1, horizon + 1)
    return BSpline(knots, ctrl, 3)(t)


def test_zero_motion_stays_put_and_matches_contract_shapes():
    pred = ZeroMotionPredictor()
    assert isinstance(pred, TracePredictor)
    req = make_request([[10, 20], [40.5, 7.25], [63, 47]])
    (res,) = pred.predict([req], num_samples=3)
    assert res.samples_uvz.shape == (3, 3, 33, 3)
    assert res.validity.shape == (3, 3, 33)
    assert res.ctrl_uvz.shape == (3, 3, 10, 3)
    assert res.knots.shape == (14,)
    expected_uv = to_norm(req.query_px)
    np.testing.assert_allclose(res.samples_uvz[0, :, :, :2], np.repeat(expected_uv[:, None], 33, 1), atol=1e-6)
    np.testing.assert_allclose(res.samples_uvz[..., 2], 0.8, atol=1e-6)
    assert np.all(res.validity == 1.0)


def test_constant_velocity_extrapolates_linear_history_exactly():
    query = np.array([[30.0, 20.0], [12.0, 40.0]])
    vel_uvz = np.array([[0.01, -0.005, 0.002], [0.0, 0.0, 0.0]])   # per step
    anchor = np.concatenate([to_norm(query), np.full((2, 1), 0.8)], 1)
    times = np.arange(-8, 0)
    history = (anchor[:, None] + times[None, :, None] * vel_uvz[:, None]).astype(np.float32)
    req = make_request(query, history=history)
    (res,) = ConstantVelocityPredictor().predict([req], num_samples=2)
    want = anchor[:, None] + np.arange(33)[None, :, None] * vel_uvz[:, None]
    np.testing.assert_allclose(res.samples_uvz[1], want, atol=1e-5)
    # the control points really are the B-spline of the samples
    for q in range(2):
        np.testing.assert_allclose(decode_ctrl(res.ctrl_uvz[0, q], res.knots, 32), res.samples_uvz[0, q], atol=1e-5)


def test_constant_velocity_without_history_is_zero_motion_and_skips_invalid_rows():
    query = np.array([[30.0, 20.0], [5.0, 5.0]])
    zm = ZeroMotionPredictor().predict([make_request(query)])[0]
    cv = ConstantVelocityPredictor().predict([make_request(query)])[0]
    np.testing.assert_allclose(cv.samples_uvz, zm.samples_uvz)
    # query 0: only one valid history step (others NaN) -> velocity from that one step
    anchor0 = np.array([*to_norm(query[0]), 0.8])
    hist = np.full((2, 8, 3), np.nan, np.float32)
    hist[0, 7] = anchor0 - np.array([0.02, 0.0, 0.0])
    res = ConstantVelocityPredictor().predict([make_request(query, history=hist)])[0]
    np.testing.assert_allclose(res.samples_uvz[0, 0, 32, 0], anchor0[0] + 32 * 0.02, atol=1e-5)
    np.testing.assert_allclose(res.samples_uvz[0, 1], zm.samples_uvz[0, 1], atol=1e-6)


def test_depth_hole_falls_back_and_marks_unknown_depth_invalid():
    hole = (slice(0, H), slice(0, 20))         # whole left strip has no depth
    req = make_request([[5, 10], [50, 10]], depth_hole=hole)
    res = ZeroMotionPredictor().predict([req])[0]
    assert np.all(np.isfinite(res.samples_uvz))
    assert np.all(res.validity[0, 0] == 0.0) and np.all(res.validity[0, 1] == 1.0)


def test_batched_requests_with_different_query_counts():
    """A batch gives, request by request, the values each request gives alone (and the analytic
    constant-velocity extrapolation), not only the right shapes."""
    rng = np.random.default_rng(5)
    reqs, wants = [], []
    for n, depth in ((1, 0.6), (5, 0.8), (0, 1.1), (3, 0.9)):
        query = rng.uniform([2, 2], [W - 3, H - 3], (n, 2))
        vel = rng.normal(0, 0.004, (n, 3))
        anchor = np.concatenate([to_norm(query), np.full((n, 1), depth)], 1)
        history = (anchor[:, None] + np.arange(-8, 0)[None, :, None] * vel[:, None]).astype(np.float32)
        reqs.append(make_request(query, depth_value=depth, history=history))
        wants.append(anchor[:, None] + np.arange(33)[None, :, None] * vel[:, None])
    for pred in (ConstantVelocityPredictor(), ZeroMotionPredictor()):
        batched = pred.predict(reqs, num_samples=2)
        assert [r.samples_uvz.shape[1] for r in batched] == [1, 5, 0, 3]
        for req, want, res in zip(reqs, wants, batched):
            (alone,) = pred.predict([req], num_samples=2)
            np.testing.assert_allclose(res.samples_uvz, alone.samples_uvz, atol=1e-6)
            np.testing.assert_allclose(res.ctrl_uvz, alone.ctrl_uvz, atol=1e-6)
            np.testing.assert_array_equal(res.validity, alone.validity)
            if isinstance(pred, ZeroMotionPredictor):
                want = np.repeat(want[:, :1], 33, 1)
            for k in range(2):
                np.testing.assert_allclose(res.samples_uvz[k], want, atol=1e-5)
            assert np.all(res.validity == 1.0)


@pytest.mark.parametrize("field,kwargs", [
    ("query_px", dict(query_px=np.zeros((3, 3)))),
    ("color", dict(color=np.zeros((H, W), np.uint8))),
    ("depth", dict(depth=np.zeros((H + 1, W), np.float32))),
    ("history_uvz", dict(history_uvz=np.zeros((2, 8, 3), np.float32))),
])
def test_bad_requests_raise_value_error_naming_the_field(field, kwargs):
    req = make_request(np.zeros((3, 2)))
    for k, v in kwargs.items():
        setattr(req, k, v)
    with pytest.raises(ValueError, match=field):
        ZeroMotionPredictor().predict([req])
    with pytest.raises(ValueError, match="num_samples"):
        ZeroMotionPredictor().predict([make_request(np.zeros((3, 2)))], num_samples=0)


def test_make_predictor_names_missing_or_broken_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        make_predictor(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        make_predictor(tmp_path)
    with pytest.raises(ValueError, match="backend"):
        make_predictor(tmp_path, backend="tensorflow")


@pytest.mark.parametrize("num_ctrl", [4, 7, 10])
def test_baselines_use_the_one_paper_knot_function(num_ctrl):
    from mu0_core.bspline import paper_knots
    pred = ConstantVelocityPredictor(num_ctrl=num_ctrl)
    np.testing.assert_array_equal(pred.knots, paper_knots(num_ctrl))
    query = np.array([[30.0, 20.0]])
    vel = np.array([[0.01, -0.005, 0.002]])
    anchor = np.concatenate([to_norm(query), np.full((1, 1), 0.8)], 1)
    history = (anchor[:, None] + np.arange(-8, 0)[None, :, None] * vel[:, None]).astype(np.float32)
    (res,) = pred.predict([make_request(query, history=history)])
    np.testing.assert_allclose(decode_ctrl(res.ctrl_uvz[0, 0], res.knots, 32), res.samples_uvz[0, 0], atol=1e-5)
