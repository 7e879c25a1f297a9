"""Issue #15, item 1, consequence for the runtime: a model trained on a synchronous dataset gets
its runtime history resampled by the training rule (mu0_perception/query_history.py)."""
import json

import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, pixels_to_normalized
from mu0_perception.query_history import (HISTORY_PARAMETERIZATIONS, SYNC_MAX_FRAMES, SynchronousQueryHistory,
                                          history_parameterization, make_query_history)
from mu0_perception.query_select import QueryHistory
from mu0_perception.trace_extract import lift, resample
from mu0_perception.trace_extract.dataset import PARAMETERIZATIONS, SampleConfig, _synchronous_sample
from mu0_perception.trace_extract.pipeline import EpisodeTraces

W, H = 160, 120
FRAME_NS = 33_333_333            # 30 Hz
ID0 = 1000                       # runtime id of track i: ID0 + i


def _episode(T=90, n_obj=24, n_static=176, seed=0):
    """A static camera; a group of points that moves (with a still stretch, depth changes and
    different speeds) over a static background; gaps, one track born late, one that ends."""
    rng = np.random.default_rng(seed)
    intr = CameraIntrinsics(W, H, 150.0, 150.0, (W - 1) / 2, (H - 1) / 2)
    t = np.arange(T, dtype=float)
    tt = np.where(t < 30, t, np.where(t < 45, 30.0, t - 15.0))          # frames 30..45 still
    base = np.stack([rng.uniform(-0.15, 0.15, n_obj), rng.uniform(-0.1, 0.1, n_obj),
                     rng.uniform(0.9, 1.1, n_obj)], -1)
    speed = rng.uniform(0.3, 1.0, n_obj)
    phase = rng.uniform(0, 2 * np.pi, n_obj)
    path = np.stack([0.002 * tt[:, None] + 0.03 * np.sin(0.1 * tt[:, None] + phase),
                     0.02 * np.cos(0.07 * tt[:, None] + phase),
                     -0.003 * tt[:, None] + 0 * phase], -1)               # (T, n_obj, 3)
    obj = base[None] + speed[None, :, None] * path
    bg = np.stack([rng.uniform(-0.3, 0.3, n_static), rng.uniform(-0.2, 0.2, n_static),
                   rng.uniform(1.2, 1.6, n_static)], -1)
    xyz = np.concatenate([obj, np.repeat(bg[None], T, 0)], 1)
    N = xyz.shape[1]
    valid = np.ones((T, N), bool)
    for i in rng.choice(n_obj, 8, replace=False):                        # depthless frames
        valid[rng.choice(T, 2, replace=False), i] = False
    valid[:, n_obj + 5] = False                                          # a background point with gaps
    valid[::3, n_obj + 5] = True
    valid[:50, 1] = False                                                # born at frame 50
    valid[60:, 2] = False                                                # lost at frame 60
    tr = EpisodeTraces("ep", "move", "move", intr, xyz, valid, np.zeros((T, N, 2)),
                       np.zeros(N, np.int32), np.zeros(N, np.int32), np.zeros(N, bool),
                       np.tile(np.eye(4), (T, 1, 1)), "bag", np.ones(T, bool), np.zeros(N, bool), 1.0)
    return tr


def _frame_uvz(tr, f):
    """The runtime's view of frame f: each track's normalised (u, v) and depth in camera f."""
    pc = lift.world_to_camera(tr.xyz_world[f], tr.T_world_cam[f])
    px, z = lift.project(pc, tr.intrinsics)
    return np.concatenate([pixels_to_normalized(px, W, H), z[:, None]], -1)


def _feed(hist, tr, f):
    """One processed frame as the runtime adds it: depthless queries as NaN rows first, then the
    others, same stamp; tracks not born yet / already lost are not asked about at all."""
    alive = np.array([tr.valid[:f + 1, i].any() and tr.valid[f:, i].any() for i in range(tr.valid.shape[1])])
    uvz = _frame_uvz(tr, f)
    ids = ID0 + np.arange(len(alive))
    gap = alive & ~tr.valid[f]
    ok = alive & tr.valid[f]
    if gap.any():
        hist.add(f * FRAME_NS, ids[gap], np.full((gap.sum(), 3), np.nan))
    hist.add(f * FRAME_NS, ids[ok], uvz[ok])


@pytest.mark.parametrize("max_frames", [SYNC_MAX_FRAMES, 12])
def test_history_matches_the_training_rule_frame_by_frame(max_frames):
    tr = _episode()
    T = tr.valid.shape[0]
    cfg = SampleConfig(sync_max_frames=max_frames, min_future_valid=2)
    hist = SynchronousQueryHistory(max_frames=max_frames)
    rng = np.random.default_rng(1)
    checked = partial = 0
    for f in range(T):
        _feed(hist, tr, f)
        if f == 0 or f % 3:
            continue
        cand = np.nonzero(tr.valid[f])[0]
        smp = _synchronous_sample(tr, f, cand, W, H, cfg)
        if smp is None:
            continue
        uvz, _, _, hv, _, _ = smp
        want, want_v = uvz[:, :cfg.history], hv
        # ask about a shuffled subset (training picks the sample's queries after the progress),
        # plus a track invalid now and an id never seen: those get no history
        sub = rng.permutation(len(cand))[: len(cand) // 2]
        invalid_now = np.nonzero(~tr.valid[f])[0]
        ask = np.concatenate([ID0 + cand[sub], ID0 + invalid_now[:1], [7]])
        got = hist.history(ask, f * FRAME_NS, 0.0125)
        assert got.shape == (len(ask), cfg.history, 3) and got.dtype == np.float32
        g, gv = got[: len(sub)], np.isfinite(got[: len(sub)]).all(-1)
        np.testing.assert_array_equal(gv, want_v[sub], err_msg=f"validity at frame {f}")
        np.testing.assert_allclose(g[gv], want[sub][want_v[sub]], atol=1e-5, err_msg=f"values at frame {f}")
        assert np.isnan(got[len(sub):]).all()
        # the whole candidate set agrees too
        full = hist.history(ID0 + cand, f * FRAME_NS, 0.0125)
        np.testing.assert_array_equal(np.isfinite(full).all(-1), want_v)
        np.testing.assert_allclose(full[want_v], want[want_v], atol=1e-5)
        assert not np.isnan(full[np.isfinite(full).any(-1)]).any()      # a step is all-NaN or finite
        checked += 1
        partial += int(want_v.any() and not want_v.all())
    assert checked >= 15 and partial >= 5                              # the cases were exercised


def test_a_static_scene_has_no_valid_history_step():
    hist = SynchronousQueryHistory()
    uvz = np.array([[0.1, -0.2, 1.0], [0.5, 0.3, 1.4]])
    for f in range(40):
        hist.add(f * FRAME_NS, [1, 2], uvz)
    # the rule: no progress -> only output step 0 (the reference frame itself) is reached
    assert np.isnan(hist.history([1, 2], 39 * FRAME_NS, 0.0125)).all()
    # the time-spaced history would give the still position at every step
    old = QueryHistory()
    for f in range(40):
        old.add(f * FRAME_NS, [1, 2], uvz)
    assert np.isfinite(old.history([1, 2], 39 * FRAME_NS, 1 / 30)).all()


def test_motion_then_stillness_gives_the_steps_the_progress_reaches():
    # one track: u_norm moves 0.34 (= 0.17 of progress in u/W) over frames 0..10, then stays still
    # for 30 frames: the still stretch is skipped, 3 steps of 0.05 are reached, the rest is invalid
    hist = SynchronousQueryHistory()
    u = np.concatenate([np.linspace(-0.5, -0.16, 11), np.full(30, -0.16)])
    for f, uf in enumerate(u):
        hist.add(f * FRAME_NS, [5], [[uf, 0.0, 1.0]])
    got = hist.history([5], 40 * FRAME_NS, 0.0125)[0]
    assert np.isnan(got[:5]).all()
    np.testing.assert_allclose(got[5:, 0], [-0.46, -0.36, -0.26], atol=1e-6)  # oldest first
    np.testing.assert_allclose(got[5:, 1:], [[0.0, 1.0]] * 3, atol=1e-6)


def test_a_depthless_frame_ends_the_valid_history_there():
    # u_norm +0.02 per frame = 0.01 of progress: a step every 5 frames, back from frame 60
    def run(nan_frame=None):
        hist = SynchronousQueryHistory()
        for f in range(61):
            row = [[-0.8 + 0.02 * f, 0.1, 1.0]]
            if f == nan_frame:
                row = [[np.nan] * 3]
            hist.add(f * FRAME_NS, [3], row)
        return hist.history([3], 60 * FRAME_NS, 0.0125)[0]

    full = run()
    assert np.isfinite(full).all()
    np.testing.assert_allclose(full[:, 0], -0.8 + 0.02 * (60 - 5 * np.arange(8, 0, -1)), atol=1e-6)
    cut = run(nan_frame=48)                  # steps 1, 2 at frames 55, 50; step 3 needs frame 45
    assert np.isnan(cut[:6]).all()
    np.testing.assert_allclose(cut[6:], full[6:], atol=1e-7)
    assert np.isnan(run(nan_frame=60)).all()  # no depth now: no history at all
    # a zero depth is no depth (TraceExtract: z > 1 mm)
    hist = SynchronousQueryHistory()
    for f in range(61):
        hist.add(f * FRAME_NS, [3], [[-0.8 + 0.02 * f, 0.1, 0.0 if f == 48 else 1.0]])
    np.testing.assert_array_equal(np.isfinite(hist.history([3], 60 * FRAME_NS, 0.0125)[0]).all(-1),
                                  np.isfinite(cut).all(-1))


def test_an_id_that_appears_late_is_valid_only_back_to_its_first_frame():
    hist = SynchronousQueryHistory()
    for f in range(61):
        ids, rows = [1], [[-0.8 + 0.02 * f, 0.1, 1.0]]
        if f >= 50:                           # same motion, seen from frame 50 on
            ids, rows = [1, 2], rows + [[-0.8 + 0.02 * f, 0.4, 1.0]]
        hist.add(f * FRAME_NS, ids, rows)
    got = hist.history([2, 1], 60 * FRAME_NS, 0.0125)
    assert np.isfinite(got[1]).all()
    assert np.isnan(got[0, :6]).all() and np.isfinite(got[0, 6:]).all()   # frames 55 and 50
    np.testing.assert_allclose(got[0, 6:, 0], got[1, 6:, 0], atol=1e-7)
    assert len(hist) == 2


def test_frame_bookkeeping():
    hist = SynchronousQueryHistory(max_frames=4, forget_after_ns=1_000_000_000)
    for f in range(6):
        hist.add(f * FRAME_NS, [1], [[0.01 * f, 0.0, 1.0]])
    hist.add(2 * FRAME_NS, [9], [[0.0, 0.0, 1.0]])             # out of order: ignored
    assert len(hist) == 1 and len(hist._frames) == 4
    hist.add(5 * FRAME_NS, [1, 2], [[9.0, 9.0, 9.0], [0.2, 0.0, 1.0]])   # same frame: id 1 kept, 2 merged
    last = hist._frames[-1]
    np.testing.assert_array_equal(last.ids, [1, 2])
    np.testing.assert_allclose(last.uvz[0], [0.05, 0.0, 1.0])
    hist.add(5 * FRAME_NS + 2_000_000_000, [1], [[0.0, 0.0, 1.0]])       # after a pause: a fresh start
    assert len(hist._frames) == 1
    with pytest.raises(ValueError):
        hist.history([1], 0, 0.0)
    with pytest.raises(ValueError):
        hist.add(0, [1, 2], [[0.0, 0.0, 1.0]])
    hist.reset()
    assert len(hist) == 0 and hist.history([1], 10**12, 0.0125).shape == (1, 8, 3)


def test_constants_are_the_training_ones():
    cfg = SampleConfig()
    assert (resample.SYNC_INTERVAL, resample.SYNC_TOP_FRACTION) == (cfg.sync_interval, cfg.sync_top_fraction)
    h = SynchronousQueryHistory()
    assert (h.interval, h.top_fraction, h.max_frames) == (cfg.sync_interval, cfg.sync_top_fraction,
                                                          cfg.sync_max_frames)
    assert set(HISTORY_PARAMETERIZATIONS) == set(PARAMETERIZATIONS)


def test_factory_and_checkpoint_parameterization():
    assert type(make_query_history("time")) is QueryHistory
    assert type(make_query_history("arc_length")) is QueryHistory
    assert type(make_query_history("synchronous")) is SynchronousQueryHistory
    assert make_query_history("synchronous", max_frames=7).max_frames == 7
    with pytest.raises(ValueError, match="frames"):
        make_query_history("frames")
    assert history_parameterization({}) == "arc_length"
    assert history_parameterization(None) == "arc_length"
    assert history_parameterization({"parameterization": "synchronous"}) == "synchronous"
    with pytest.raises(ValueError, match="bogus"):
        history_parameterization({"parameterization": "bogus"})


def test_training_records_the_dataset_parameterization(tmp_path):
    from mu0_policy.training import train
    from mu0_policy.training.data import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "ds", num_episodes=4, frames_per_episode=2, image_hw=(24, 32),
                                 num_queries=4, heldout_tasks=())
    index = json.loads((ds / "index.json").read_text())
    assert "parameterization" not in index                  # a dataset from before: arc length
    assert train.dataset_parameterization(train.TraceDataset(ds, "train")) == "arc_length"
    index["parameterization"] = "synchronous"
    (ds / "index.json").write_text(json.dumps(index))
    out = tmp_path / "run"
    assert train.main(["--data", str(ds), "--out", str(out), "--preset", "tiny", "--steps", "1",
                       "--batch-size", "2", "--eval-every", "1", "--save-every", "1", "--quiet"]) == 0
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["parameterization"] == "synchronous"
    assert history_parameterization(training) == "synchronous"


def _checkpoint_with_parameterization(tmp_path, value):
    import json
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree("checkpoints/mu0_small", root, ignore=shutil.ignore_patterns("eval", "*.onnx", "*.md", "*.sh"))
    doc = json.loads((root / "config.json").read_text())
    doc["training"]["parameterization"] = value
    (root / "config.json").write_text(json.dumps(doc))
    return root


def test_the_runtime_builds_the_history_by_the_checkpoints_training_rule(tmp_path):
    from mu0_perception.query_select import QueryHistory
    from mu0_policy.predictors import make_predictor
    from mu0_policy.runtime import TracePipeline

    bundled = TracePipeline(make_predictor("checkpoints/mu0_small"))     # written before the key existed
    assert type(bundled.history) is QueryHistory
    sync = TracePipeline(make_predictor(str(_checkpoint_with_parameterization(tmp_path, "synchronous"))))
    assert isinstance(sync.history, SynchronousQueryHistory)


def test_an_unknown_parameterization_in_a_checkpoint_fails_naming_file_and_field(tmp_path):
    from mu0_policy.model.checkpoint import CheckpointError
    from mu0_policy.predictors import make_predictor

    root = _checkpoint_with_parameterization(tmp_path, "by-the-moon")
    with pytest.raises(CheckpointError, match=r"config.json field 'training.parameterization'.*by-the-moon"):
        make_predictor(str(root))
