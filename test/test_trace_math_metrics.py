"""Trace metrics on hand-computed cases, against brute-force references, numpy vs torch."""
import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, normalized_to_pixels, pixels_to_normalized
from mu0_core import metrics as mt


def line_trace(xs, H=None):
    """A 2D trace along u with v = 0 (anchor first)."""
    xs = np.asarray(xs, float)
    return np.stack([xs, np.zeros_like(xs)], -1)


def test_dtw_and_frechet_differ_from_ade_by_hand():
    # ground truth moves 1 per step; the prediction lags one step behind
    gt = line_trace([0, 1, 2, 3, 4])[None]            # (M=1, H+1=5, 2)
    pred = line_trace([0, 1, 1, 2, 3])[None, None]     # (K=1, M=1, 5, 2)
    valid = np.ones((1, 5), bool)
    tab = mt.results_table(pred, gt, valid, horizons=(4,), topk=(1,), moving=False)
    assert tab["top1/ADE@4"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    assert tab["top1/FDE@4"] == pytest.approx(1.0)
    # DTW aligns the lagging samples to their twins: only gt's last point costs 1, / 4 steps
    assert tab["top1/DTW@4"] == pytest.approx(0.25)
    # Fréchet is the bottleneck: the endpoints must be matched, 3 vs 4
    assert tab["top1/Frechet@4"] == pytest.approx(1.0)


def test_frechet_is_a_max_and_dtw_a_normalised_sum():
    gt = line_trace([0, 0, 0, 0])[None]
    pred = line_trace([0, 3, 0, 0])[None, None]        # one spike of 3
    tab = mt.results_table(pred, gt, np.ones((1, 4), bool), horizons=(3,), topk=(1,), moving=False)
    assert tab["top1/ADE@3"] == pytest.approx(1.0)
    assert tab["top1/DTW@3"] == pytest.approx(1.0)     # the spike cannot be warped away
    assert tab["top1/Frechet@3"] == pytest.approx(3.0)
    assert tab["top1/FDE@3"] == pytest.approx(0.0)


def test_topk_picks_the_best_sample_and_top1_is_the_first():
    gt = line_trace(np.linspace(0, 1, 9))[None]
    offsets = [0.5, 0.1, 0.3, 0.7]
    pred = np.stack([gt + [0, o] for o in offsets])    # (K=4, 1, 9, 2)
    tab = mt.results_table(pred, gt, np.ones((1, 9), bool), horizons=(8,), topk=(1, 2, 4), moving=False)
    for name in mt.METRIC_NAMES:
        assert tab[f"top1/{name}@8"] == pytest.approx(0.5)
        assert tab[f"top2/{name}@8"] == pytest.approx(0.1)
        assert tab[f"top4/{name}@8"] == pytest.approx(0.1)


def test_masked_steps_are_excluded_and_fde_uses_the_last_valid_step():
    gt = line_trace([0, 1, 2, 3, 4])[None]
    pred = gt.copy()[None]
    pred[0, 0, 2] = [100.0, 100.0]                      # huge error at a step invalid in gt
    pred[0, 0, 4] = [50.0, 0.0]                         # and at the (invalid) final step
    pred[0, 0, 3] = [3.0, 0.5]                          # 0.5 off at the last valid step
    valid = np.array([[True, True, False, True, False]])
    tab = mt.results_table(pred, gt, valid, horizons=(4,), topk=(1,), moving=False)
    assert tab["top1/ADE@4"] == pytest.approx(0.25)    # (0 + 0.5) / 2 valid steps
    assert tab["top1/FDE@4"] == pytest.approx(0.5)
    assert tab["top1/DTW@4"] == pytest.approx(0.25)
    assert tab["top1/Frechet@4"] == pytest.approx(0.5)
    # NaN at an invalid step is allowed
    pred[0, 0, 2] = np.nan
    gt2 = gt.copy()
    gt2[0, 2] = np.nan
    assert mt.results_table(pred, gt2, valid, (4,), (1,), moving=False) == tab


def test_horizons_only_see_their_steps():
    gt = np.zeros((1, 33, 3))
    pred = np.zeros((1, 1, 33, 3))
    pred[0, 0, 20] = [0.2, 0.0, 0.0]
    tab = mt.results_table(pred, gt, np.ones((1, 33), bool), topk=(1,), moving=False)
    assert tab["top1/ADE@8"] == 0.0 and tab["top1/ADE@16"] == 0.0
    assert tab["top1/ADE@32"] == pytest.approx(0.2 / 32)
    assert tab["top1/Frechet@32"] == pytest.approx(0.2)


def test_moving_filter():
    H1 = 9
    t = np.linspace(0, 1, H1)[:, None]
    z0 = np.array([0.0, 0.0, 1.0])
    gts = np.stack([
        np.broadcast_to(z0, (H1, 3)),                    # static
        z0 + t * [0.2, 0, 0],                            # 0.2 in u = 64 px @ 640x480: moving (> 40 px)
        z0 + t * [0.1, 0, 0],                            # 32 px: not moving
        z0 + t * [0, 0, 1.0],                            # 1 m in depth = 0.1 "px": not moving
        z0 + t * [0, 0, 2.0],                            # 2 m in depth: not moving (the authors' rule)
        z0 + t * [0.09, 0.12, 0],                        # (28.8, 28.8) px: diagonal 40.7 px: moving
    ])
    valid = np.ones(gts.shape[:2], bool)
    np.testing.assert_allclose(mt.trace_diameter(gts, valid), [0, 0.2, 0.1, 0.1, 0.2, 0.15])
    np.testing.assert_array_equal(mt.moving_mask(gts, valid), [False, True, False, False, False, True])
    assert mt.moving_threshold_px(640, 480) == pytest.approx(40.0)
    # the image size sets the pixels: at 160x120 (threshold 10 px), 0.1 in u is 8 px, 0.2 is 16 px
    np.testing.assert_array_equal(mt.moving_mask(gts, valid, (160, 120)), [False, True, False, False, False, True])
    # the legacy normalised-unit cut is still available explicitly
    np.testing.assert_array_equal(mt.moving_mask(gts, valid, threshold=0.125), [False, True, False, False, True, True])
    assert mt.DEFAULT_MOVING_THRESHOLD == pytest.approx(0.125)
    assert mt.threshold_from_pixels(40, 320) == pytest.approx(0.25)
    # an invalid far-away step does not make a point move
    gts2 = gts.copy()
    gts2[0, 4] = [5, 5, 5]
    valid[0, 4] = False
    assert not mt.moving_mask(gts2, valid)[0]
    # the table only averages moving traces by default: static traces with huge error are ignored
    pred = np.broadcast_to(gts2, (1,) + gts2.shape).copy()
    pred[0, 0, 1:] += 10.0
    pred[0, 2, 1:] += 10.0
    pred[0, 1, 1:] += [0.0, 0.3, 0.0]
    tab = mt.results_table(pred, gts2, valid, horizons=(8,), topk=(1,))
    assert tab["top1/ADE@8"] == pytest.approx(0.3 / 2)   # 2 moving traces, one off by 0.3


def _dtw_ref(a, b):
    n = len(a)
    c = np.full((n + 1, n + 1), np.inf)
    c[0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            c[i, j] = np.linalg.norm(a[i - 1] - b[j - 1]) + min(c[i - 1, j], c[i, j - 1], c[i - 1, j - 1])
    return c[n, n] / n


def _frechet_ref(a, b):
    n = len(a)
    c = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d = np.linalg.norm(a[i] - b[j])
            prev = [] if i == j == 0 else [x for x in (
                c[i - 1, j] if i else np.inf, c[i, j - 1] if j else np.inf,
                c[i - 1, j - 1] if i and j else np.inf)]
            c[i, j] = d if not prev else max(d, min(prev))
    return c[-1, -1]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_per_trace_errors_match_brute_force(backend):
    rng = np.random.default_rng(0)
    K, M, T = 3, 12, 10
    P = rng.normal(size=(K, M, T, 3))
    G = rng.normal(size=(M, T, 3))
    V = rng.random((M, T)) > 0.3
    V[0] = False                                        # no valid step -> NaN
    V[1] = False
    V[1, 6] = True                                      # a single valid step
    errs = {k: np.asarray(v) for k, v in mt.per_trace_errors(P, G, V, backend=backend, chunk=7).items()}
    assert np.all(np.isnan(errs["ADE"][:, 0]))
    for k in range(K):
        for m in range(1, M):
            a, b = P[k, m][V[m]], G[m][V[m]]
            d = np.linalg.norm(a - b, axis=-1)
            assert errs["ADE"][k, m] == pytest.approx(d.mean(), abs=1e-12)
            assert errs["FDE"][k, m] == pytest.approx(d[-1], abs=1e-12)
            assert errs["DTW"][k, m] == pytest.approx(_dtw_ref(a, b), abs=1e-12)
            assert errs["Frechet"][k, m] == pytest.approx(_frechet_ref(a, b), abs=1e-12)


def test_numpy_and_torch_tables_agree():
    rng = np.random.default_rng(1)
    gt = np.cumsum(rng.normal(scale=0.05, size=(200, 33, 3)), axis=1)
    valid = rng.random((200, 33)) > 0.1
    pred = gt[None] + rng.normal(scale=0.03, size=(5, 200, 33, 3))
    a = mt.results_table(pred, gt, valid)
    b = mt.results_table(pred, gt, valid, backend="torch")
    assert a.keys() == b.keys() and len(a) == 3 * 2 * 4
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_full_results_spaces():
    intr = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5)
    centre = pixels_to_normalized([319.5, 239.5], 640, 480)     # the principal point: (0, 0)
    H1 = 17
    t = np.linspace(0, 1, H1)
    gt = np.zeros((2, H1, 3))
    gt[:, :, 0] = centre[0] + 0.5 * t                          # moving along u
    gt[:, :, 2] = 1.0
    gt[1, :, 0] = centre[0]                                    # second trace: only in depth
    gt[1, :, 2] = 1.0 + 3.0 * t                                # 3 m of depth only: not "moving"
    pred = gt[None].copy()
    pred[0, :, 1:, 2] += 0.1                                   # depth off by 10 cm
    valid = np.ones((2, H1), bool)
    default = mt.full_results(pred, gt, valid, intr, horizons=(8, 16), topk=(1,))
    assert default["num_moving"] == 1                          # the paper's rule, in the intrinsics' pixels
    res = mt.full_results(pred, gt, valid, intr, horizons=(8, 16), topk=(1,), moving=np.ones(2, bool))
    assert res["num_moving"] == 2 and res["num_traces"] == {8: 2, 16: 2}
    assert res["uv"]["top1/ADE@16"] == pytest.approx(0.0)
    assert res["uvz"]["top1/ADE@16"] == pytest.approx(0.1)
    # trace 1 sits on the optical axis: xyz error is exactly the depth error
    only_axis = mt.results_table(
        pred[:, 1:], gt[1:], valid[1:], (16,), (1,), moving=False)
    assert only_axis["top1/ADE@16"] == pytest.approx(0.1)
    # off axis the metric error grows with the ray's slope
    px = normalized_to_pixels(gt[0, 1:, :2], 640, 480)
    slope = np.hypot((px[:, 0] - 319.5) / 600.0, 0.0)
    expected_xyz = (0.1 * np.sqrt(1 + slope ** 2)).mean()
    assert res["xyz"]["top1/ADE@16"] == pytest.approx((expected_xyz + 0.1) / 2)


def test_bad_input_raises_naming_the_argument():
    gt = np.zeros((3, 33, 3))
    valid = np.ones((3, 33), bool)
    pred = np.zeros((5, 3, 33, 3))
    with pytest.raises(ValueError, match="pred"):
        mt.results_table(pred[:, :2], gt, valid)
    with pytest.raises(ValueError, match="max\\(topk\\)"):
        mt.results_table(pred[:2], gt, valid)
    with pytest.raises(ValueError, match="horizons"):
        mt.results_table(pred, gt, valid, horizons=(64,))
    with pytest.raises(ValueError, match="valid"):
        mt.results_table(pred, gt, valid[:, :5])
    bad = gt.copy()
    bad[0, 3, 0] = np.nan
    with pytest.raises(ValueError, match="gt"):
        mt.results_table(pred, bad, valid)
    badp = pred.copy()
    badp[0, 0, 3, 0] = np.inf
    with pytest.raises(ValueError, match="pred"):
        mt.results_table(badp, gt, valid)
    with pytest.raises(ValueError, match="moving"):
        mt.results_table(pred, gt, valid, moving=np.ones(2, bool))
    with pytest.raises(ValueError, match="backend"):
        mt.results_table(pred, gt, valid, backend="jax")
    with pytest.raises(ValueError, match="threshold"):
        mt.moving_mask(gt, valid, threshold=-1)
    with pytest.raises(ValueError):
        mt.moving_points(np.zeros((3, 4, 2)), np.ones((3, 4)), np.ones((3, 4), bool), (0, 10))
    with pytest.raises(ValueError, match="gt_uvz"):
        mt.moving_mask(np.zeros((3, 33)), None)


def test_results_table_with_no_trace_valid_within_the_horizon_is_nan_not_an_error():
    """A split or task whose moving points have no valid step up to T gives NaN for that T."""
    from mu0_core.metrics import results_table

    gt = np.zeros((3, 33, 3))
    gt[:, :, 0] = np.linspace(0, 1, 33)
    valid = np.zeros((3, 33), bool)
    valid[:, 0] = True
    table = results_table(np.repeat(gt[None], 2, 0), gt, valid, horizons=(8,), topk=(1,), moving=False)
    assert np.isnan(table["top1/ADE@8"]) and np.isnan(table["top1/DTW@8"])
