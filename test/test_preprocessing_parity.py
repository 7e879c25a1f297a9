"""Training-time and serving-time preprocessing give the model identical inputs (issue 14).

One RGB-D clip, the same query points with the same past: once through the training data path
(tracks lifted to 3D by TraceExtract -> `build_samples` -> staged -> `finalize` -> the training
`TraceDataset` item -> `collate`, what train.py feeds the model), once through the serving path
(mu0_node's per-frame `TracePipeline.process` with given queries -> `TraceRequest` ->
`Mu0Predictor.prepare`, what the network receives). Image, depth, query uvz, query mask, history
and history mask must be equal, element for element.

The clip has the depth holes that made the two paths disagree before (training sampled 3x3 with
zeros counted as depth, serving 5x5 of depth > 0): a query whose whole 3x3 neighbourhood has no
depth, one whose own pixel reads 0 next to valid neighbours, and NaN speckle.
"""
from __future__ import annotations

import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics
from mu0_core.frames import RGBDFrame
from mu0_perception.trace_extract import lift
from mu0_perception.trace_extract.dataset import SampleConfig, build_samples, finalize, stage_episode
from mu0_perception.trace_extract.pipeline import EpisodeTraces
from mu0_policy.model.config import Mu0Config
from mu0_policy.model.predictor import Mu0Predictor
from mu0_policy.runtime import PipelineConfig, TracePipeline
from mu0_policy.training.data import TraceDataset, collate

W, H = 64, 48
MODEL_HW = (24, 32)            # the model reads a resized frame: the resize is part of the parity
HISTORY, HORIZON = 8, 32
REF = HISTORY                  # reference frame: a full history behind it
NUM_FRAMES = REF + HORIZON + 1
STEP_NS = 12_500_000           # 0.0125 s, the predictor's step period: history steps fall on frames
INSTRUCTION = "push the block to the left"
# query pixels at frame 0 and their motion per frame (exact in float32, so both paths see equal pixels)
START = np.array([[12.0, 10.0], [40.0, 30.0], [50.0, 12.0], [20.0, 36.0], [30.0, 20.0]])
VELOCITY = np.array([[0.25, 0.0], [-0.25, 0.125], [0.0, 0.0], [0.0, 0.0], [0.125, 0.25]])
NO_3X3 = 2                     # its 3x3 neighbourhood has no depth at all (5x5 has)
ZERO_CENTRE = 3                # its own pixel reads 0 ("no return"), its neighbours differ


def _clip(dropout_frames=()):
    """A static camera over a sloped surface with holes; in `dropout_frames` the depth around
    query 0 is missing (a transient dropout, e.g. a reflection)."""
    intr = CameraIntrinsics(W, H, 60.0, 60.0, (W - 1) / 2, (H - 1) / 2)
    uv = START[None] + np.arange(NUM_FRAMES)[:, None, None] * VELOCITY[None]      # (T, K, 2)
    rng = np.random.default_rng(3)
    vv, uu = np.mgrid[0:H, 0:W]
    colors, depths = [], []
    for f in range(NUM_FRAMES):
        color = np.stack([(uu * 4 + f) % 256, (vv * 5) % 256, ((uu + vv) * 3) % 256], -1).astype(np.uint8)
        depth = (1.0 + 0.01 * uu + 0.004 * vv + 0.002 * np.sin(uu + vv)).astype(np.float32)
        depth[rng.random((H, W)) < 0.05] = np.nan
        u2, v2 = START[NO_3X3].astype(int)
        depth[v2 - 1:v2 + 2, u2 - 1:u2 + 2] = np.nan
        depth[v2 - 1, u2 - 1] = 0.0
        u3, v3 = START[ZERO_CENTRE].astype(int)
        depth[v3, u3] = 0.0
        depth[v3 - 1:v3 + 2, u3 - 1] = np.nan
        if f in dropout_frames:
            u0, v0 = np.rint(uv[f, 0]).astype(int)
            depth[v0 - 3:v0 + 4, u0 - 3:u0 + 4] = np.nan
        colors.append(color)
        depths.append(depth)
    return intr, uv, np.stack(colors), np.stack(depths)


def _training_inputs(tmp_path, intr, uv, colors, depths):
    """TraceExtract from given tracks (a static camera, pose from the 'bag') -> dataset -> batch."""
    T, K = uv.shape[:2]
    poses = np.tile(np.eye(4), (T, 1, 1))
    xyz_cam, valid = lift.lift_tracks(uv, np.ones((T, K), bool), depths, intr)
    tr = EpisodeTraces(
        episode_id="parity", instruction=INSTRUCTION, task="push-left", intrinsics=intr,
        xyz_world=lift.to_world(np.nan_to_num(xyz_cam), poses), valid=valid, uv=uv,
        entity_id=np.arange(K, dtype=np.int32), seed_frame=np.zeros(K, np.int32),
        moving=np.abs(VELOCITY).sum(1) > 0, T_world_cam=poses, pose_source="bag",
        pose_ok=np.ones(T, bool), static=np.abs(VELOCITY).sum(1) == 0, coverage=1.0)
    # "time": one step per frame, the sampling the runtime's history uses (QueryHistory)
    cfg = SampleConfig(max_queries=8, stride=REF, parameterization="time", horizon=HORIZON, history=HISTORY)
    arrays, captions = build_samples(tr, colors, depths, cfg)
    stage_episode(tmp_path, tr, arrays, captions)
    finalize(tmp_path, val_fraction=0.0, sample_config=cfg)
    ds = TraceDataset(tmp_path, "all")
    item = next(ds[i] for i in range(len(ds)) if int(ds[i]["frame_index"]) == REF)
    batch = collate([item], image_hw=MODEL_HW)
    return {k: batch[k].numpy() for k in ("image", "depth", "query_uvz", "query_mask", "history_uvz",
                                          "history_valid")}, batch["captions"][0], ds.index.normalizer


class _RecordingPredictor(Mu0Predictor):
    """The real Mu0Predictor request preparation; the network is replaced by a recorder."""

    def _text_embeddings(self, instructions):
        self.instructions = list(instructions)
        return np.zeros((len(instructions), self.cfg.text_dim), np.float32)

    def run(self, inputs):
        self.inputs = {k: np.array(v) for k, v in inputs.items() if isinstance(v, np.ndarray)}
        b, k, n = inputs["noise"].shape[:3]
        return (np.zeros((b, k, n, self.cfg.num_points, 3), np.float32),
                np.zeros((b, k, n, self.cfg.horizon + 1), np.float32))


def _runtime_inputs(intr, uv, colors, depths, normalizer):
    """mu0_node's per-frame work on frames 0..REF with the queries given (ids stable)."""
    cfg = Mu0Config(image_height=MODEL_HW[0], image_width=MODEL_HW[1], horizon=HORIZON, history=HISTORY,
                    step_period=STEP_NS / 1e9, normalizer=normalizer.to_dict())
    predictor = _RecordingPredictor(cfg)
    pipeline = TracePipeline(predictor, PipelineConfig(queries="given", track_queries=False, max_queries=8),
                             instruction=INSTRUCTION)
    ids = np.arange(len(START), dtype=np.uint32)
    for f in range(REF + 1):
        pipeline.set_given_queries(uv[f].astype(np.float32), ids, [f"q{i}" for i in ids])
        out = pipeline.process(RGBDFrame(f * STEP_NS, "camera", colors[f], depths[f], intr))
    assert out is not None
    return predictor.inputs, predictor.instructions[0]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    intr, uv, colors, depths = _clip()
    train, caption, normalizer = _training_inputs(tmp_path_factory.mktemp("parity"), intr, uv, colors, depths)
    serve, instruction = _runtime_inputs(intr, uv, colors, depths, normalizer)
    return train, caption, serve, instruction, (intr, uv, depths)


def test_the_clip_has_the_holes_that_split_the_old_rules(both):
    *_, (intr, uv, depths) = both
    d = depths[REF]
    u, v = uv[REF, NO_3X3].astype(int)
    window3 = d[v - 1:v + 2, u - 1:u + 2]
    assert not (np.isfinite(window3) & (window3 > 0)).any()
    window5 = d[v - 2:v + 3, u - 2:u + 3]
    assert (np.isfinite(window5) & (window5 > 0)).any()
    u, v = uv[REF, ZERO_CENTRE].astype(int)
    assert d[v, u] == 0.0


def _matched_rows(train, serve):
    """Row indices of the same queries on both sides (a training sample orders its queries at random)."""
    t_q = train["query_uvz"][0][train["query_mask"][0]]
    s_q = serve["query_uvz"][0][serve["query_mask"][0]]
    assert len(t_q) == len(s_q) == len(START), (
        f"training kept {len(t_q)} queries, serving {len(s_q)}, of {len(START)} (a query with depth on one "
        "side only)")
    order = [int(np.argmin(np.abs(t_q[:, :2] - q[:2]).sum(1))) for q in s_q]
    assert sorted(order) == list(range(len(START)))
    return np.nonzero(train["query_mask"][0])[0][order], np.nonzero(serve["query_mask"][0])[0]


def test_identical_image_input(both):
    train, caption, serve, instruction, _ = both
    assert caption == instruction
    np.testing.assert_array_equal(train["image"], serve["image"])


def test_identical_depth_input(both):
    train, _, serve, _, _ = both
    np.testing.assert_array_equal(train["depth"], serve["depth"])           # NaN holes at the same places


def test_identical_query_inputs(both):
    train, _, serve, _, _ = both
    t_rows, s_rows = _matched_rows(train, serve)
    np.testing.assert_array_equal(train["query_uvz"][0][t_rows], serve["query_uvz"][0][s_rows])
    assert np.isfinite(serve["query_uvz"][0][s_rows]).all()


def test_identical_history_inputs(both):
    train, _, serve, _, _ = both
    t_rows, s_rows = _matched_rows(train, serve)
    np.testing.assert_array_equal(train["history_valid"][0][t_rows], serve["history_valid"][0][s_rows])
    np.testing.assert_array_equal(train["history_uvz"][0][t_rows], serve["history_uvz"][0][s_rows])
    assert train["history_valid"][0][t_rows].all()     # a full history on both sides, frames 0..7


def test_identical_history_when_a_query_lost_its_depth_for_two_frames(tmp_path):
    intr, uv, colors, depths = _clip(dropout_frames=(3, 4))
    train, _, normalizer = _training_inputs(tmp_path, intr, uv, colors, depths)
    serve, _ = _runtime_inputs(intr, uv, colors, depths, normalizer)
    t_rows, s_rows = _matched_rows(train, serve)
    assert not train["history_valid"][0][t_rows[0], 3:5].any()      # the training side: steps t-5, t-4 invalid
    np.testing.assert_array_equal(train["history_valid"][0][t_rows], serve["history_valid"][0][s_rows])


class _RequestRecordingPredictor(_RecordingPredictor):
    """Also keeps the requests the runtime built."""

    def prepare(self, requests):
        self.requests = list(requests)
        return super().prepare(requests)


def _runtime_requests(intr, uv, colors, depths, frames=REF + 1):
    cfg = Mu0Config(image_height=MODEL_HW[0], image_width=MODEL_HW[1], horizon=HORIZON, history=HISTORY,
                    step_period=STEP_NS / 1e9, normalizer={"scale": [0.1, 0.1, 0.05], "horizon": HORIZON})
    predictor = _RequestRecordingPredictor(cfg)
    pipeline = TracePipeline(predictor, PipelineConfig(queries="given", track_queries=False, max_queries=8),
                             instruction=INSTRUCTION)
    ids = np.arange(len(START), dtype=np.uint32)
    for f in range(frames):
        pipeline.set_given_queries(uv[f].astype(np.float32), ids, [f"q{i}" for i in ids])
        assert pipeline.process(RGBDFrame(f * STEP_NS, "camera", colors[f], depths[f], intr)) is not None
    return predictor


def test_the_runtime_samples_the_anchor_depth_once_per_frame(monkeypatch):
    """The runtime samples the depth at its queries (to drop depthless ones) and hands it to the
    predictor in the request (`query_depth`); the predictor does not sample the image again."""
    import mu0_core.query_geometry as qg
    import mu0_policy.runtime as runtime

    calls = []
    real = qg.depth_at_pixels

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(qg, "depth_at_pixels", counting)           # the predictor's path (query_uvz)
    monkeypatch.setattr(runtime, "sample_depth_at", counting)       # the runtime's own sampling
    intr, uv, colors, depths = _clip(dropout_frames=(3,))
    predictor = _runtime_requests(intr, uv, colors, depths)
    assert len(calls) == REF + 1                                    # once per frame, not twice
    (request,) = predictor.requests
    assert request.query_depth is not None
    np.testing.assert_array_equal(request.query_depth, real(depths[REF], request.query_px))


def test_the_carried_anchor_gives_the_model_inputs_and_results_of_the_old_path():
    """Model inputs with the runtime's `query_depth` equal those the predictor builds sampling the
    depth image itself (the path before it was carried), element for element; a baseline's results too."""
    from dataclasses import replace

    from mu0_policy.baselines import ConstantVelocityPredictor

    intr, uv, colors, depths = _clip(dropout_frames=(3, 4))
    predictor = _runtime_requests(intr, uv, colors, depths)
    (request,) = predictor.requests
    old = replace(request, query_depth=None)
    new_inputs, new_meta = predictor.prepare([request])
    old_inputs, old_meta = predictor.prepare([old])
    for key in old_inputs:
        np.testing.assert_array_equal(new_inputs[key], old_inputs[key], err_msg=key)
    np.testing.assert_array_equal(new_meta[0][0], old_meta[0][0])
    np.testing.assert_array_equal(new_meta[0][1], old_meta[0][1])
    base = ConstantVelocityPredictor()
    (a,), (b,) = base.predict([request]), base.predict([old])
    for field in ("samples_uvz", "validity", "ctrl_uvz"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_an_explicit_anchor_depth_wins_over_the_depth_image():
    from dataclasses import replace

    intr, uv, colors, depths = _clip()
    predictor = _runtime_requests(intr, uv, colors, depths)
    (request,) = predictor.requests
    n = request.num_queries
    given = np.full(n, 2.5, np.float32)
    given[1] = np.nan                         # no depth here: the fallback (last valid history step) as before
    inputs, meta = predictor.prepare([replace(request, query_depth=given)])
    anchor, known = meta[0][:2]
    np.testing.assert_array_equal(np.delete(anchor[:, 2], 1), 2.5)
    assert anchor[1, 2] == request.history_uvz[1, -1, 2] and known.all()
    np.testing.assert_array_equal(inputs["query_uvz"][0, :n], anchor)
    for bad in (np.zeros(n, np.float32), np.full(n + 1, 1.0, np.float32), np.full(n, np.inf, np.float32)):
        with pytest.raises(ValueError, match="query_depth"):
            replace(request, query_depth=bad).validate()
