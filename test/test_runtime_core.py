"""Pure runtime cores (no ROS): approximate-time matching, frame assembly faults, query selection and
history, trace postprocessing (uvz -> xyz, base frame, markers) and the per-frame pipeline."""
import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, RigidTransform, uvz_to_xyz
from mu0_core.frames import RGBDFrame
from mu0_perception.query_select import QueryHistory, QueryTracker, select_grid
from mu0_perception.sync import ApproximateTimeMatcher, RGBDAssembler
from mu0_core import bspline
from mu0_policy.baselines import ConstantVelocityPredictor
from mu0_policy.inference import TraceResult
from mu0_policy.runtime import PipelineConfig, TracePipeline, extrinsic_from_list
from mu0_policy.predictors import make_predictor
from mu0_policy.trace_postprocess import result_to_trace_set, trace_line_strips, transform_trace_set
from mu0_ros import convert

MS = 1_000_000


# ------------------------------------------------------------------------------------------ matcher
def test_matcher_pairs_nearest_within_slop_and_counts_unmatched():
    m = ApproximateTimeMatcher(["a", "b", "c"], slop_ns=5 * MS, queue_size=10)
    out = []
    out += m.add("a", 100 * MS, "a100")
    out += m.add("b", 102 * MS, "b102")
    assert out == []                          # c missing: nothing yet
    out += m.add("c", 99 * MS, "c99")
    assert [{k: v[1] for k, v in x.items()} for x in out] == [{"a": "a100", "b": "b102", "c": "c99"}]
    # b at 130 has no partner: a and c jump to 160 -> b130 dropped as unmatched
    out = m.add("b", 130 * MS, "b130") + m.add("a", 160 * MS, "a160") + m.add("c", 161 * MS, "c161")
    assert out == [] and m.stats.dropped_unmatched["b"] == 1
    out = m.add("b", 159 * MS, "b159")
    assert {k: v[1] for k, v in out[0].items()} == {"a": "a160", "b": "b159", "c": "c161"}
    assert m.stats.matched == 2


def test_matcher_overflow_and_out_of_order_are_counted():
    m = ApproximateTimeMatcher(["color", "info"], slop_ns=1 * MS, queue_size=3)
    for k in range(5):                        # camera_info never arrives
        m.add("color", k * 10 * MS, k)
    assert m.queued("color") == 3 and m.stats.dropped_overflow["color"] == 2
    m.add("info", 40 * MS, "i40")             # matches color 40; 20 and 30 lose their partner
    assert m.stats.matched == 1 and m.stats.dropped_unmatched["color"] == 2
    assert m.add("color", 5 * MS, "late") == [] and m.stats.dropped_out_of_order["color"] == 1


def test_matcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="streams"):
        ApproximateTimeMatcher(["a"], 1)
    with pytest.raises(ValueError, match="slop_ns"):
        ApproximateTimeMatcher(["a", "b"], -1)
    with pytest.raises(ValueError, match="unknown stream"):
        ApproximateTimeMatcher(["a", "b"], 1).add("z", 0, None)


# ------------------------------------------------------------------------------------------ assembly
INTR = CameraIntrinsics(64, 48, 60.0, 60.0, 31.5, 23.5)


def _msgs(stamp_ns, depth_mm=None, color_encoding="rgb8", info_size=(64, 48), depth_size=(64, 48)):
    rng = np.random.default_rng(stamp_ns % 97)
    header = convert.make_header(stamp_ns, "cam_optical")
    color = convert.numpy_to_image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "rgb8", header)
    color.encoding = color_encoding
    w, h = depth_size
    mm = np.full((h, w), 800, np.uint16) if depth_mm is None else depth_mm
    depth = convert.numpy_to_image(mm, "16UC1", convert.make_header(stamp_ns, "cam_optical"))
    intr = CameraIntrinsics(info_size[0], info_size[1], 60.0, 60.0, 31.5, 23.5)
    info = convert.camera_info_from_intrinsics(intr, convert.make_header(stamp_ns, "cam_optical"))
    return color, depth, info


def _feed(assembler, msgs):
    frames = []
    for stream, msg in zip(("color", "depth", "info"), msgs):
        frames += assembler.add(stream, msg)
    return frames


def test_assembler_normalises_16uc1_millimetres_to_metres_with_nan_holes():
    mm = np.full((48, 64), 1250, np.uint16)
    mm[:5] = 0
    frames = _feed(RGBDAssembler(), _msgs(10 * MS, depth_mm=mm))
    assert len(frames) == 1
    f = frames[0]
    assert f.stamp_ns == 10 * MS and f.frame_id == "cam_optical"
    assert f.depth.dtype == np.float32 and np.isnan(f.depth[:5]).all()
    assert np.allclose(f.depth[5:], 1.25)


@pytest.mark.parametrize("kwargs, fault", [
    ({"color_encoding": "yuv422"}, "bad_encoding"),
    ({"depth_size": (32, 24)}, "size_mismatch"),
    ({"info_size": (640, 480)}, "size_mismatch"),
    ({"depth_mm": np.zeros((48, 64), np.uint16)}, "invalid_depth"),
])
def test_assembler_counts_and_drops_malformed_frames(kwargs, fault):
    assembler = RGBDAssembler()
    assert _feed(assembler, _msgs(10 * MS, **kwargs)) == []
    assert assembler.faults[fault] == 1
    assert sum(assembler.faults.values()) == 1
    assert len(_feed(assembler, _msgs(20 * MS))) == 1      # the next good frame goes through


# ------------------------------------------------------------------------------------------ queries
def _textured(shift=0, h=96, w=128):
    rng = np.random.default_rng(3)
    import cv2

    img = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (5, 5), 0)
    return np.roll(img, shift, axis=1)


def test_tracker_keeps_ids_while_following_points():
    tracker = QueryTracker("automatic", max_points=16)
    depth = np.ones((96, 128), np.float32)
    q0 = tracker.update(_textured(0), depth)
    q1 = tracker.update(_textured(3), depth)
    common, i0, i1 = np.intersect1d(q0.query_ids, q1.query_ids, return_indices=True)
    assert len(q0) >= 8 and len(common) >= 0.8 * len(q0)
    shift = q1.pixels[i1] - q0.pixels[i0]
    assert np.allclose(np.median(shift, axis=0), [3, 0], atol=0.5)
    assert all(e.startswith("cluster_") for e in q1.entities)


def test_automatic_queries_avoid_invalid_depth_and_grid_layout():
    depth = np.ones((96, 128), np.float32)
    depth[:, :64] = np.nan
    q = QueryTracker("automatic", max_points=16).update(_textured(), depth)
    assert len(q) > 0 and (q.pixels[:, 0] >= 64).all()
    grid = select_grid(128, 96, 2, 3, margin=0.0)
    assert grid.shape == (6, 2) and grid[0].tolist() == [0, 0] and grid[-1].tolist() == [127, 95]
    with pytest.raises(ValueError, match="queries mode"):
        QueryTracker("random")


def test_given_queries_replace_and_validate():
    tracker = QueryTracker("given")
    with pytest.raises(ValueError, match="query_ids"):
        tracker.set_given([[1, 2], [3, 4]], query_ids=[7])
    tracker.set_given([[10, 20], [30, 40]], query_ids=[7, 9], entities=["tool", "object"])
    q = tracker.update(_textured(), None)
    assert q.query_ids.tolist() == [7, 9] and q.entities == ["tool", "object"]


def test_history_interpolates_at_the_model_step_period():
    h = QueryHistory()
    h.add(0, [5], [[0.0, 0.0, 1.0]])
    h.add(100 * MS, [5], [[0.8, 0.0, 1.0]])
    hist = h.history([5, 6], 100 * MS, step_period=0.0125)
    assert hist.shape == (2, 8, 3)
    assert np.allclose(hist[0, :, 0], 0.1 * np.arange(8))   # t-8..t-1 on the line 0 -> 0.8
    assert np.isnan(hist[1]).all()                         # never seen: invalid


class _LoopQueryHistory:
    """The per-query loop that QueryHistory replaced (issue 14: ~1 ms per frame), kept as the oracle."""

    def __init__(self, max_observations=32, forget_after_ns=2_000_000_000):
        from collections import deque
        self._deque, self._tracks = deque, {}
        self.max_observations, self.forget_after_ns = max_observations, forget_after_ns

    def add(self, stamp_ns, query_ids, uvz):
        uvz = np.asarray(uvz, dtype=np.float64).reshape(-1, 3)
        for qid, point in zip(np.asarray(query_ids).tolist(), uvz):
            track = self._tracks.setdefault(int(qid), self._deque(maxlen=self.max_observations))
            if track and stamp_ns <= track[-1][0]:
                continue
            track.append((int(stamp_ns), point.copy()))
        for qid in [q for q, t in self._tracks.items() if stamp_ns - t[-1][0] > self.forget_after_ns]:
            del self._tracks[qid]

    def history(self, query_ids, now_ns, step_period, steps=8):
        out = np.full((len(query_ids), steps, 3), np.nan, np.float32)
        times = now_ns - np.arange(steps, 0, -1) * step_period * 1e9
        for i, qid in enumerate(np.asarray(query_ids).tolist()):
            track = self._tracks.get(int(qid))
            if not track:
                continue
            t_obs = np.array([t for t, _ in track], dtype=np.float64)
            p_obs = np.stack([p for _, p in track])
            seen = np.isfinite(p_obs).all(axis=1)
            usable = (times >= t_obs[0]) & (times <= max(t_obs[-1], now_ns))
            if seen.any():
                usable &= seen[np.abs(times[:, None] - t_obs[None]).argmin(axis=1)]
            else:
                usable[:] = False
            if not usable.any():
                continue
            for c in range(3):
                out[i, usable, c] = np.interp(times[usable], t_obs[seen], p_obs[seen, c])
        return out


@pytest.mark.parametrize("seed", range(4))
def test_history_equals_the_per_query_loop_it_replaced(seed):
    """Vectorised QueryHistory == the old loop: ids coming and going, depthless (NaN) frames, repeated
    ids and stamps, out-of-order frames, ids forgotten after a pause, more frames than it keeps."""
    rng = np.random.default_rng(seed)
    new, old = QueryHistory(max_observations=12, forget_after_ns=700 * MS), _LoopQueryHistory(12, 700 * MS)
    stamp = 0
    for frame in range(70):
        stamp += int(rng.choice([40, 100, 130, 900 if frame == 35 else 60])) * MS
        at = stamp - (150 * MS if rng.random() < 0.1 else 0)            # now and then an out-of-order frame
        ids = rng.choice(40, size=rng.integers(0, 15), replace=True)     # repeats within a frame
        uvz = rng.normal(size=(len(ids), 3))
        uvz[rng.random(len(ids)) < 0.2] = np.nan
        for h in (new, old):
            h.add(at, ids, uvz)
        ask = rng.choice(45, size=20, replace=False)                     # some never seen
        period = float(rng.choice([0.0125, 0.05, 0.1]))
        a, b = new.history(ask, stamp, period), old.history(ask, stamp, period)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"frame {frame}"
        assert np.allclose(a, b, equal_nan=True, atol=1e-6), f"frame {frame}"
        assert len(new) == len(old._tracks)


# ------------------------------------------------------------------------------------------ postprocess
def _line_result(n=2, horizon=32):
    anchor = np.array([[0.0, 0.0, 1.0], [0.5, -0.5, 2.0]])[:n]
    vel = np.array([[0.01, 0.0, 0.0], [0.0, 0.005, -0.01]])[:n]
    samples = anchor[:, None] + np.arange(horizon + 1)[None, :, None] * vel[:, None]
    knots = bspline.paper_knots(10)
    ctrl = bspline.fit(samples, bspline.basis_matrix(10, horizon))
    return TraceResult(samples[None].astype(np.float32), np.ones((1, n, horizon + 1), np.float32),
                       ctrl[None].astype(np.float32), knots), samples


def test_result_to_trace_set_deprojects_and_refits_in_xyz():
    intr = CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5)
    result, uvz = _line_result()
    ts = result_to_trace_set(result, query_ids=[3, 4], entities=["a", "b"], pixels=[[1, 2], [3, 4]],
                             intrinsics=intr, stamp_ns=42, camera_frame_id="cam", instruction="go",
                             model_id="m", step_period=0.0125)
    xyz = uvz_to_xyz(uvz, intr)
    assert ts.stamp_ns == 42 and ts.frame_id == "cam" and ts.horizon_steps == 32
    assert np.allclose(ts.positions, xyz[:, 0], atol=1e-6)
    assert np.abs(ts.samples - xyz).max() < 0.01               # the xyz spline follows the deprojection
    assert np.allclose(bspline.decode(ts.control_points, bspline.basis_matrix(10, 32)), ts.samples)
    base = transform_trace_set(ts, RigidTransform.from_quat_xyzw([0, 0, 0.7071068, 0.7071068], [1, 2, 3]), "base_link")
    assert base.frame_id == "base_link"
    assert np.allclose(base.samples, base.camera_to_frame.apply(ts.samples))
    assert np.allclose(bspline.decode(base.control_points, bspline.basis_matrix(10, 32)), base.samples)


def test_invalid_samples_get_zero_validity_and_markers_stop_there():
    intr = CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5)
    result, _ = _line_result(1)
    result.samples_uvz[0, 0, 20:, 2] = np.nan                    # depth lost after step 19
    ts = result_to_trace_set(result, query_ids=[1], entities=["tool"], pixels=[[0, 0]], intrinsics=intr,
                             stamp_ns=1, camera_frame_id="cam", instruction="x", model_id="m", step_period=0.1)
    assert np.isfinite(ts.samples).all() and (ts.validity[0, 20:] == 0).all() and (ts.validity[0, :20] == 1).all()
    strips = trace_line_strips(ts)
    assert len(strips) == 1 and strips[0].namespace == "tool" and len(strips[0].points) == 20
    assert strips[0].colors[0, 2] > strips[0].colors[0, 0] and strips[0].colors[-1, 0] > strips[0].colors[-1, 2]


@pytest.mark.parametrize("ridge", [bspline.DEFAULT_RIDGE, 0.0])
def test_the_cached_refit_is_bspline_fit(ridge, monkeypatch):
    """The postprocess refit (one cached linear map per validity pattern) gives bspline.fit's
    control points, and solves each pattern once."""
    from mu0_policy import trace_postprocess as tp

    rng = np.random.default_rng(1)
    basis = bspline.basis_matrix(10, 32)
    xyz = rng.normal(size=(40, 33, 3))
    used = rng.random((40, 33)) < 0.7
    used[:10] = True                                       # the common case: all valid
    used[10:20, 17:] = False                               # valid up to a step
    used[20:25, 1:] = False                                # the anchor only
    used[:, 0] = True                                      # the anchor is always fitted (pinned)
    want = bspline.fit(np.where(used[..., None], xyz, np.nan), basis, valid=used.astype(float), ridge=ridge)
    made = []
    real = tp._refit_map
    monkeypatch.setattr(tp, "_refit_map", lambda *a: made.append(1) or real(*a))
    monkeypatch.setattr(tp, "_map_cache", type(tp._map_cache)())
    for _ in range(2):
        np.testing.assert_allclose(tp._refit(xyz, used, ("test", 10, 32), basis, ridge), want, atol=1e-10)
    assert len(made) == len({r.tobytes() for r in used})    # once per pattern, then from the cache


def test_anchor_without_depth_is_rejected():
    result, _ = _line_result(1)
    result.samples_uvz[0, 0, 0, 2] = np.nan
    with pytest.raises(ValueError, match="anchor"):
        result_to_trace_set(result, query_ids=[1], entities=["x"], pixels=[[0, 0]], intrinsics=INTR, stamp_ns=1,
                            camera_frame_id="c", instruction="x", model_id="m", step_period=0.1)


# ------------------------------------------------------------------------------------------ pipeline
def test_pipeline_predicts_motion_from_history_and_drops_depthless_queries():
    intr = CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5)
    depth = np.ones((96, 128), np.float32)
    depth[:, 100:] = np.nan
    pipeline = TracePipeline(ConstantVelocityPredictor(), PipelineConfig(
        max_queries=12, camera_to_base=extrinsic_from_list([0, 0, 1, 0, 0, 0, 1])), instruction="push it")
    assert pipeline.process(RGBDFrame(0, "cam", _textured(0), depth, intr)) is not None
    out = pipeline.process(RGBDFrame(100 * MS, "cam", _textured(4), depth, intr))
    cam = out.camera_traces
    assert out.stamp_ns == cam.stamp_ns == 100 * MS and out.base_traces.frame_id == "base_link"
    assert (out.queries.pixels[:, 0] < 100).all()
    # image content moves +4 px per 100 ms -> traces head towards +x in the camera
    assert np.median(cam.samples[:, -1, 0] - cam.samples[:, 0, 0]) > 0.005
    assert np.allclose(out.base_traces.samples, cam.samples + [0, 0, 1])
    assert len(out.markers) == len(cam) and out.markers[0].frame_id == "base_link"


def test_pipeline_waits_for_instruction_and_make_predictor_errors():
    pipeline = TracePipeline(make_predictor("baseline:zero_motion"))
    frame = RGBDFrame(0, "cam", _textured(), np.ones((96, 128), np.float32),
                      CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5))
    assert pipeline.process(frame) is None
    with pytest.raises(ValueError, match="instruction"):
        pipeline.set_instruction("  ")
    with pytest.raises(ValueError, match="unknown baseline"):
        make_predictor("baseline:teleport")
    with pytest.raises(ValueError, match="camera_to_base"):
        extrinsic_from_list([1, 2, 3])
