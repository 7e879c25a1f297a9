"""Issue #15, item 1: every track of a sample is resampled synchronously by the scene's motion."""
import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, deproject
from mu0_perception.trace_extract import resample
from mu0_perception.trace_extract.dataset import SampleConfig, build_samples
from mu0_perception.trace_extract.pipeline import EpisodeTraces


def test_progress_is_set_by_the_fastest_tracks():
    T = 11
    x = np.linspace(0, 1.0, T)                                 # 0.1 per frame
    metric = np.zeros((100, T, 3))
    metric[0, :, 0] = x                                        # 1 fast track of 100: top 2 % = 2 tracks
    metric[1, :, 0] = x / 2
    seg = resample.robust_progress(metric, np.ones((100, T), bool))
    np.testing.assert_allclose(seg, 0.075)
    plan = resample.plan_synchronous(metric, np.ones((100, T), bool), 33, interval=0.05)
    assert plan.num_steps == 16                                # 0.75 of progress / 0.05 + 1
    np.testing.assert_allclose(plan.frame_position[:16], np.arange(16) * 0.05 / 0.075)


def test_static_stretch_is_skipped_and_all_tracks_share_each_step():
    T = 30
    t = np.arange(T)
    x = np.clip(t - 10, 0, 10) * 0.05                          # still for 10 frames, then moves
    metric = np.stack([np.stack([x, 0 * x, 0 * x + 1], -1), np.stack([x / 4, 0 * x, 0 * x + 1], -1)])
    out, valid, plan = resample.synchronous_resample(metric, np.ones((2, T), bool), 12, top_fraction=1.0)
    # step 1 lands after the still frames; both tracks are interpolated at the same instant
    assert plan.frame_position[1] > 10
    np.testing.assert_allclose(out[1, :, 0], out[0, :, 0] / 4)
    assert valid[:, :plan.num_steps].all() and not valid[:, plan.num_steps:].any()
    # a track that ends is valid as a prefix up to its last frame
    v = np.ones((2, T), bool)
    v[1, 14:] = False
    _, valid2, plan2 = resample.synchronous_resample(metric, v, 12, top_fraction=1.0)
    pos = plan2.frame_position
    np.testing.assert_array_equal(valid2[1], (np.ceil(pos - 1e-9) <= 13) & (np.arange(12) < plan2.num_steps))


def _rigid_episode(T=60, W=160, H=120):
    """A rigid bar that slides, then turns about its centre: its centre stops moving while its
    tip keeps going, so per-trace arc-length steps of the two would be different instants."""
    intr = CameraIntrinsics(W, H, 150.0, 150.0, (W - 1) / 2, (H - 1) / 2)
    t = np.arange(T)
    slide = np.clip(t, 0, 30) / 30.0 * 0.15                    # 15 cm in 30 frames
    ang = np.clip(t - 30, 0, 30) / 30.0 * (np.pi / 2)          # then a quarter turn
    centre = np.stack([-0.1 + slide, 0 * slide, 0 * slide + 1.0], -1)
    offs = np.linspace(0.0, 0.08, 5)                           # points along the bar, 0 = centre
    rot = np.stack([np.cos(ang), np.sin(ang), 0 * ang], -1)
    bar = centre[:, None] + offs[None, :, None] * rot[:, None]  # (T, 5, 3)
    static = np.stack([np.linspace(-0.2, 0.2, 20), np.full(20, 0.15), np.full(20, 1.2)], -1)
    xyz = np.concatenate([bar, np.repeat(static[None], T, 0)], 1)
    N = xyz.shape[1]
    tr = EpisodeTraces("ep0", "slide and turn", "turn", intr, xyz, np.ones((T, N), bool),
                       np.zeros((T, N, 2)), np.array([0] * 5 + [1] * 20, np.int32), np.zeros(N, np.int32),
                       np.zeros(N, bool), np.tile(np.eye(4), (T, 1, 1)), "bag", np.ones(T, bool),
                       np.zeros(N, bool), 1.0)
    color = np.zeros((T, H, W, 3), np.uint8)
    depth = np.ones((T, H, W), np.float32)
    return tr, color, depth, intr


def _rigid_spread(arrays):
    """Max over samples of the spread (over valid steps) of the distance between bar points."""
    worst = 0.0
    for s in range(len(arrays["color"])):
        ent = arrays["entity_id"][s]
        m = arrays["query_mask"][s] & (ent == 0)
        fx, fv = arrays["future_xyz"][s][m], arrays["future_valid"][s][m]
        for i in range(len(fx)):
            for j in range(i + 1, len(fx)):
                both = fv[i] & fv[j]
                d = np.linalg.norm(fx[i, both] - fx[j, both], axis=-1)
                if len(d) > 2:
                    worst = max(worst, float(d.max() - d.min()))
    return worst


def test_build_samples_default_is_synchronous_and_keeps_rigid_bodies_rigid():
    tr, color, depth, intr = _rigid_episode()
    assert SampleConfig().parameterization == "synchronous"
    cfg = dict(max_queries=25, stride=5, min_future_valid=4, moving_share=1.0)
    sync, _ = build_samples(tr, color, depth, SampleConfig(**cfg))
    per_trace, _ = build_samples(tr, color, depth, SampleConfig(parameterization="arc_length", **cfg))
    assert len(sync["color"]) > 0
    assert _rigid_spread(sync) < 2e-3                          # step k is one instant for all points
    assert _rigid_spread(per_trace) > 1e-2                     # each trace on its own: not rigid
    # the future and the stored xyz agree with the camera model
    s = 0
    m = sync["query_mask"][s] & sync["future_valid"][s][:, 1]
    uvz = sync["future_uvz"][s][m][:, 1]
    px = np.stack([(uvz[:, 0] + 1) * intr.width / 2 - 0.5, (uvz[:, 1] + 1) * intr.height / 2 - 0.5], -1)
    np.testing.assert_allclose(deproject(px, uvz[:, 2], intr), sync["future_xyz"][s][m][:, 1], atol=1e-5)


def test_synchronous_history_is_chronological_and_ends_before_the_query():
    tr, color, depth, _ = _rigid_episode()
    arr, _ = build_samples(tr, color, depth, SampleConfig(max_queries=25, stride=5, min_future_valid=4,
                                                          moving_share=1.0))
    s = int(np.nonzero(arr["frame_index"] == 20)[0][0])
    m = arr["query_mask"][s] & (arr["entity_id"][s] == 0)
    hv = arr["history_valid"][s][m]
    hu = arr["history_uvz"][s][m][..., 0]
    q = arr["query_uvz"][s][m][:, 0]
    assert hv[:, -1].all()                                     # the most recent step is the last one
    # the bar slid to the right (+u): the history lies left of the query, oldest farthest
    assert (hu[:, -1] < q).all()
    ok = hv[0]
    assert np.all(np.diff(hu[0][ok]) > 0)


@pytest.mark.parametrize("bad", [dict(parameterization="frames"), dict(max_queries=0)])
def test_sample_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SampleConfig(**bad)


def test_finalize_fits_the_normaliser_on_moving_queries_only(tmp_path):
    import json

    from mu0_core.bspline import TraceNormalizer
    from mu0_perception.trace_extract.dataset import finalize, stage_episode

    tr, color, depth, _ = _rigid_episode()
    cfg = SampleConfig(max_queries=25, stride=5, min_future_valid=4, moving_share=0.5)
    arrays, captions = build_samples(tr, color, depth, cfg)
    assert arrays["moving"].any() and (arrays["query_mask"] & ~arrays["moving"]).any()
    stage_episode(tmp_path, tr, arrays, captions)
    finalize(tmp_path, sample_config=cfg)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["normalizer_queries"] == "moving"
    m = arrays["query_mask"] & arrays["moving"]
    want = TraceNormalizer.from_corpus(arrays["future_uvz"][m], arrays["future_valid"][m], num_ctrl=cfg.num_ctrl)
    np.testing.assert_allclose(TraceNormalizer.from_dict(index["normalizer"]).scale, want.scale, rtol=1e-6)
    every = arrays["query_mask"]
    allq = TraceNormalizer.from_corpus(arrays["future_uvz"][every], arrays["future_valid"][every])
    assert not np.allclose(allq.scale, want.scale)
