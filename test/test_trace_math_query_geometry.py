"""mu0_core.query_geometry (depth at a pixel, anchors, history masks), mu0_core.trace_spec and the
dataset format mu0_core.trace_dataset: the one rule each, on small hand-made arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mu0_core import bspline, query_geometry as qg, trace_dataset as tds
from mu0_core.trace_spec import TRACE_SPEC, TraceSpec, paper_knots


def _depth():
    d = np.full((20, 30), 1.0, np.float32)
    d[:, 15:] = 2.0                       # a depth edge at u = 15
    return d


def test_own_depth_is_kept_even_at_a_depth_edge():
    d = _depth()
    # pixel 14 is on the near surface; its 5x5 window is mostly the far one (a window median would say 2)
    d[8:13, 12:14] = np.nan
    np.testing.assert_array_equal(qg.depth_at_pixels(d, [[14.0, 10.0], [15.2, 10.0]]), [1.0, 2.0])


def test_zero_is_no_depth_and_a_5x5_window_fills_a_3x3_hole():
    d = _depth()
    d[9:12, 4:7] = np.nan
    d[9, 4] = 0.0                         # "no return" of the 16UC1 converter, not 0 m
    d[8, 3] = 1.5                         # one corner of the 5x5 window differs
    z = qg.depth_at_pixels(d, [[5.0, 10.0]])
    window = d[8:13, 3:8]
    good = window[np.isfinite(window) & (window > 0)]
    assert z[0] == np.float32(np.median(good)) and z[0] == 1.0


def test_no_valid_depth_in_the_window_outside_the_image_or_no_depth_stream_is_nan():
    d = _depth()
    d[5:12, 2:9] = np.nan                 # 7x7 hole: nothing within 5x5 of (5, 8)
    z = qg.depth_at_pixels(d, [[5.0, 8.0], [-0.5, 0.0], [29.5, 19.5], [-0.6, 3.0], [3.0, 19.6], [np.nan, 1.0]])
    assert np.isnan(z[0])
    assert z[1] == 1.0 and z[2] == 2.0    # on the outer edge: the border pixel
    assert np.isnan(z[3:]).all()          # beyond the image or not a number
    assert np.isnan(qg.depth_at_pixels(None, [[1.0, 1.0]])).all()
    assert qg.depth_at_pixels(d, np.zeros((0, 2))).shape == (0,)


def test_window_is_cut_at_the_image_border():
    d = np.full((10, 10), np.nan, np.float32)
    d[0, 2] = 3.0                         # the only valid pixel within 2 of the corner
    assert qg.depth_at_pixels(d, [[0.0, 0.0]])[0] == 3.0


def test_query_uvz_and_anchor_fallbacks():
    d = _depth()
    d[0:7, 0:7] = np.nan
    px = [[2.0, 2.0], [20.0, 10.0]]
    uvz = qg.query_uvz(d, px, 30, 20)
    np.testing.assert_allclose(uvz[:, :2], qg.pixels_to_normalized(np.array(px), 30, 20), rtol=0, atol=1e-7)
    assert np.isnan(uvz[0, 2]) and uvz[1, 2] == 2.0
    hist = np.full((2, 8, 3), np.nan, np.float32)
    hist[0, 5] = [0.1, 0.1, 1.25]         # last valid step of query 0
    hist[0, 6] = [0.1, 0.1, 0.0]          # zero depth: not valid
    anchor, known = qg.query_anchor_uvz(d, px, 30, 20, hist)
    assert anchor[0, 2] == np.float32(1.25) and known.all()
    anchor, known = qg.query_anchor_uvz(d, px, 30, 20)
    assert not known[0] and known[1]
    assert anchor[0, 2] == np.float32(np.median(d[np.isfinite(d)]))
    anchor, known = qg.query_anchor_uvz(None, px, 30, 20)
    assert not known.any() and (anchor[:, 2] == 0).all()


def test_history_masks():
    hist = np.array([[[0.1, 0.2, 1.0], [np.nan, 0.2, 1.0], [0.1, 0.2, 0.0], [0.1, 0.2, -1.0]]], np.float32)
    np.testing.assert_array_equal(qg.history_valid_mask(hist), [[True, False, False, False]])
    values, ok = qg.history_model_input(hist, valid=np.array([[False, True, True, True]]))
    assert not ok.any() and (values == 0).all() and values.dtype == np.float32
    values, ok = qg.history_model_input(hist)
    np.testing.assert_array_equal(values[0, 0], hist[0, 0])
    assert (values[0, 1:] == 0).all()


def test_trace_spec_is_the_papers_and_bspline_uses_its_knot_rule():
    assert (TRACE_SPEC.horizon, TRACE_SPEC.history, TRACE_SPEC.num_ctrl, TRACE_SPEC.degree) == (32, 8, 10, 3)
    assert TRACE_SPEC.step_period == 0.0125 and TRACE_SPEC.duration_s == pytest.approx(0.4)
    np.testing.assert_array_equal(TRACE_SPEC.knots, paper_knots(10))
    assert bspline.paper_knots is paper_knots
    assert bspline.TraceNormalizer(scale=[1.0, 1.0, 1.0]).horizon == TRACE_SPEC.horizon
    with pytest.raises(ValueError, match="num_ctrl"):
        TraceSpec(num_ctrl=5)
    with pytest.raises(ValueError, match="step_period"):
        TraceSpec(step_period=0.0)
    with pytest.raises(ValueError, match="horizon"):
        TraceSpec(horizon=4)


def _arrays(n=3, q=2, hw=(4, 6)):
    out = {}
    shapes = {"color": hw + (3,), "depth": hw, "intrinsics": (4,), "history_uvz": (q, 8, 3),
              "history_valid": (q, 8), "future_uvz": (q, 33, 3), "future_xyz": (q, 33, 3),
              "future_valid": (q, 33), "ctrl_norm": (q, 10, 3)}
    for k, (dtype, ndim) in tds.SAMPLE_KEYS.items():
        shape = shapes[k] if k in shapes else ((), (q,), (q, 3))[ndim]
        out[k] = (np.arange(n * int(np.prod(shape))).reshape((n,) + shape) % 7).astype(dtype)
    out["depth"] = out["depth"] + np.float32(0.123456)   # not float16-exact: float32 is stored
    return out


def test_dataset_writer_and_reader_round_trip(tmp_path):
    arrays = _arrays()
    norm = bspline.TraceNormalizer(scale=[0.1, 0.1, 0.05])
    w = tds.DatasetWriter(tmp_path, shard_size=2)
    w.add(arrays, [tds.sample_record(f"ep{i}", "push", i, ["push it", f"seg {i}"]) for i in range(3)])
    index = w.close(norm, {"val_episodes": ["ep2"]}, TraceSpec(), producer="test")
    assert [s["num_samples"] for s in index["shards"]] == [2, 1] and index["producer"] == "test"
    r = tds.DatasetReader(tmp_path, "all")
    assert len(r) == 3 and r.index.spec == TraceSpec()
    for k in tds.SAMPLE_KEYS:
        np.testing.assert_array_equal(r[2][k], arrays[k][2])
    assert r[1]["caption"] == "push it" and r.captions(1) == ["push it", "seg 1"]
    assert list(tds.DatasetReader(tmp_path, "val").indices) == [2]
    with pytest.raises(ValueError, match="overwrite"):
        tds.write_index(tmp_path, index["shards"], index["samples"], norm, [4, 6], {}, TraceSpec(), horizon=3)


def test_version_1_parallel_list_index_is_still_read(tmp_path):
    arrays = _arrays()
    arrays["depth"] = arrays["depth"].astype(np.float16)
    norm = bspline.TraceNormalizer(scale=[0.1, 0.1, 0.05])
    w = tds.DatasetWriter(tmp_path)
    w.add(arrays, [tds.sample_record("e", "t", i, ["c"]) for i in range(3)])
    w.close(norm, {}, TraceSpec())
    index = json.loads((tmp_path / "index.json").read_text())
    legacy = {k: v for k, v in index.items() if k != "samples"}
    legacy.update(format_version=1, captions=["a", "b", "c"], task_names=["t"] * 3, episode_ids=["e0", "e1", "e1"])
    (tmp_path / "index.json").write_text(json.dumps(legacy))
    r = tds.DatasetReader(tmp_path)
    assert [r[i]["caption"] for i in range(3)] == ["a", "b", "c"] and r.index.episodes == ["e0", "e1", "e1"]
    del legacy["horizon"]
    (tmp_path / "index.json").write_text(json.dumps(legacy))
    with pytest.raises(tds.DatasetError, match="horizon"):
        tds.DatasetReader(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({**legacy, "format_version": 7}))
    with pytest.raises(tds.DatasetError, match="format_version"):
        tds.DatasetReader(tmp_path)
