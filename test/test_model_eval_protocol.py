"""Issue #15 item 4: `mu0 eval --protocol paper` (the authors' headline setting) next to ours."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from mu0_policy.training import evaluate
from mu0_policy.training.data import write_synthetic_dataset


class _Split:
    """The parts of a TraceDataset split that frame selection reads."""

    def __init__(self, frames_by_episode):
        episodes, recs = [], []
        for ep, frames in frames_by_episode.items():
            for f in frames:
                episodes.append(ep)
                recs.append({"episode": ep, "frame": f})
        self.index = SimpleNamespace(raw={"samples": recs}, episodes=episodes)
        self.indices = np.arange(len(recs))

    def __len__(self):
        return len(self.indices)


def test_paper_frames_are_offsets_4_8_12_from_each_episodes_first_sample():
    ds = _Split({"a": [0, 4, 8, 12, 16, 20], "b": [2, 6, 10, 18, 30], "c": [5]})
    chosen = evaluate.paper_protocol_indices(ds)
    frames = [(ds.index.episodes[i], ds.index.raw["samples"][i]["frame"]) for i in chosen]
    assert frames == [("a", 4), ("a", 8), ("a", 12), ("b", 6), ("b", 10), ("b", 18)]


def _item(n=40, moving_every=2, h=24, w=32):
    rng = np.random.default_rng(0)
    uvz = np.concatenate([rng.uniform(-0.9, 0.9, (n, 2)), rng.uniform(0.5, 1.5, (n, 1))], -1).astype(np.float32)
    return {"color": np.zeros((h, w, 3), np.uint8), "depth": np.ones((h, w), np.float32),
            "intrinsics": np.array([30.0, 30.0, 15.5, 11.5], np.float32), "caption": "push",
            "query_mask": np.ones(n, bool), "moving": np.arange(n) % moving_every == 0, "query_uvz": uvz,
            "history_uvz": np.zeros((n, 8, 3), np.float32), "history_valid": np.ones((n, 8), bool)}


def test_paper_item_has_16_moving_queries_no_history_and_only_the_queries_depth():
    item = _item()
    out = evaluate.paper_item(item, np.random.default_rng(0))
    q = out["query_mask"]
    assert q.sum() == 16 and not (q & ~item["moving"]).any()
    assert not out["history_valid"].any()
    d = out["depth"]
    assert np.isfinite(d).sum() <= 16
    req, keep = evaluate.sample_to_request(out)
    assert req.history_uvz is None
    from mu0_core.query_geometry import depth_at_pixels

    np.testing.assert_allclose(depth_at_pixels(req.depth, req.query_px), item["query_uvz"][keep, 2], rtol=1e-6)
    # a frame without a moving query is not evaluated; fewer than 16 moving: all of them
    assert evaluate.paper_item(_item() | {"moving": np.zeros(40, bool)}, np.random.default_rng(0)) is None
    assert evaluate.paper_item(_item(moving_every=8), np.random.default_rng(0))["query_mask"].sum() == 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from mu0_policy.training import train

    ds = write_synthetic_dataset(tmp_path_factory.mktemp("ds"), num_episodes=8, frames_per_episode=16,
                                 image_hw=(24, 32), num_queries=8)
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert train.main(["--data", str(ds), "--out", str(out), "--preset", "tiny", "--steps", "2",
                       "--batch-size", "4", "--eval-every", "2", "--save-every", "2", "--quiet"]) == 0
    return ds, out


@pytest.mark.parametrize("protocol", ["ours", "paper"])
def test_eval_cli_protocols_report_top1_top5_2d_3d(run, tmp_path, protocol):
    ds, ckpt = run
    out = tmp_path / protocol
    argv = ["--data", str(ds), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--splits", "val"]
    if protocol == "paper":
        argv += ["--protocol", "paper"]
    assert evaluate.main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())["val"]
    assert report["protocol"] == protocol
    n_val = report["num_dataset_samples"]
    if protocol == "paper":
        assert report["num_frames"] <= 3 * 2 and report["num_frames"] < n_val   # 3 frames per episode
    else:
        assert report["num_frames"] == n_val
    t = report["tables"]["mu0"]
    for space in ("uv", "uvz"):
        for k in (1, 5):
            for T in (8, 16, 32):
                assert f"top{k}/ADE@{T}" in t[space]
    md = (out / "metrics.md").read_text()
    assert "2D uv, top-1" in md and "3D uvz, top-5" in md
    # per task (val = unseen episodes: ep5, ep6 of two tasks) in the json, the md and a plot of its own
    per_task = report["per_task"]
    assert len(per_task) == 2 and sum(t["num_frames"] for t in per_task.values()) == report["num_frames"]
    assert f"### per task: val (unseen episodes), protocol {protocol}" in md
    assert all(f"| {task} |" in md for task in per_task)
    assert (out / "metrics_val.png").stat().st_size > 5_000 and (out / "metrics.png").is_file()
