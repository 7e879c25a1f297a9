"""Dataset -> train CLI -> checkpoint -> make_predictor (torch + onnxruntime) -> evaluate CLI.

Uses a small synthetic dataset written in the TraceExtract format (docs/interfaces.md), the
real MiniLM instruction embeddings, real ONNX export and real onnxruntime.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from mu0_core.camera import CameraIntrinsics
from mu0_policy.inference import TraceRequest
from mu0_policy.predictors import make_predictor
from mu0_policy.model.checkpoint import CheckpointError
from mu0_policy.training.data import DatasetError, TraceDataset, collate, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), num_episodes=8, frames_per_episode=4,
                                   image_hw=(24, 32), num_queries=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, dataset):
    from mu0_policy.training import train

    out = tmp_path_factory.mktemp("ckpt") / "run"
    rc = train.main(["--data", str(dataset), "--out", str(out), "--preset", "tiny", "--steps", "6",
                     "--batch-size", "4", "--eval-every", "3", "--save-every", "3", "--quiet", "--seed", "3"])
    assert rc == 0
    return out


def test_dataset_splits_are_disjoint_and_batches_have_contract_shapes(dataset):
    train, val, held = (TraceDataset(dataset, s) for s in ("train", "val", "heldout_tasks"))
    ids = [set(d.indices.tolist()) for d in (train, val, held)]
    assert all(len(s) for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert {train[i]["task"] for i in range(len(train))}.isdisjoint({held[i]["task"] for i in range(len(held))})
    batch = collate([train[0], train[1]], image_hw=(32, 32))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["depth"].shape == (2, 1, 32, 32)
    assert batch["future_uvz"].shape == (2, 8, 33, 3) and batch["ctrl_norm"].shape == (2, 8, 10, 3)
    assert batch["history_valid"].dtype == torch.bool
    assert torch.isnan(batch["depth"]).any()          # holes survive the resize


def test_dataset_errors_name_file_and_field(tmp_path, dataset):
    with pytest.raises(DatasetError, match="index.json"):
        TraceDataset(tmp_path)
    index = json.loads((dataset / "index.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text(json.dumps({**index, "normalizer": {"scale": [-1, 1, 1]}}))
    with pytest.raises(DatasetError, match="normalizer"):
        TraceDataset(bad)
    shard = load_file(str(dataset / "shard-00000.safetensors"))
    del shard["ctrl_norm"]
    save_file(shard, str(bad / "shard-00000.safetensors"))
    (bad / "index.json").write_text(json.dumps(index))
    with pytest.raises(DatasetError, match="ctrl_norm"):
        TraceDataset(bad, "all")[0]


def test_train_writes_checkpoint_and_resume_continues(checkpoint, dataset):
    from mu0_policy.training import train

    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["training"]["steps"] == 6 and len(cfg["training"]["history"]) == 2
    assert "scale" in cfg["normalizer"]
    before = load_file(str(checkpoint / "model.safetensors"))
    rc = train.main(["--data", str(dataset), "--out", str(checkpoint), "--preset", "tiny", "--steps", "8",
                     "--batch-size", "4", "--eval-every", "100", "--save-every", "100", "--quiet", "--resume"])
    assert rc == 0
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["training"]["steps"] == 8
    after = load_file(str(checkpoint / "model.safetensors"))
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def _requests(n_queries=(3, 11)):
    rng = np.random.default_rng(0)
    reqs = []
    for n in n_queries:
        color = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        depth = np.full((24, 32), 0.9, np.float32)
        hist = rng.uniform(-0.5, 0.5, (n, 8, 3)).astype(np.float32)
        hist[..., 2] = 0.9
        reqs.append(TraceRequest(color, depth, CameraIntrinsics(32, 24, 30, 30, 15.5, 11.5),
                                 "push the block left", rng.uniform(0, 23, (n, 2)), hist))
    return reqs


def test_predictors_torch_and_onnxruntime_agree(checkpoint):
    from mu0_policy.training import export

    assert export.main([str(checkpoint)]) == 0
    torch_pred = make_predictor(checkpoint)
    ort_pred = make_predictor(checkpoint, backend="onnxruntime")
    reqs = _requests()
    a = torch_pred.predict(reqs, num_samples=3, seed=7)
    b = ort_pred.predict(reqs, num_samples=3, seed=7)
    for ra, rb, req in zip(a, b, reqs):
        n = req.num_queries
        assert ra.samples_uvz.shape == (3, n, 33, 3) and ra.ctrl_uvz.shape == (3, n, 10, 3)
        assert ra.validity.shape == (3, n, 33) and ra.knots.shape == (14,)
        np.testing.assert_allclose(ra.samples_uvz, rb.samples_uvz, atol=1e-4)
        np.testing.assert_allclose(ra.validity, rb.validity, atol=1e-4)
        # samples start at the query (anchor-relative decoding) and differ between samples
        uv = 2 * (req.query_px + 0.5) / np.array([32, 24]) - 1
        np.testing.assert_allclose(ra.samples_uvz[:, :, 0, :2], np.broadcast_to(uv, (3, n, 2)), atol=1e-5)
        assert np.abs(ra.samples_uvz[0] - ra.samples_uvz[1]).max() > 1e-4
    # same seed -> same result; bf16 autocast stays close to fp32
    c = torch_pred.predict(reqs, num_samples=3, seed=7)
    np.testing.assert_array_equal(c[1].samples_uvz, a[1].samples_uvz)
    bf = make_predictor(checkpoint, dtype="bfloat16").predict(reqs, num_samples=3, seed=7)
    assert np.abs(bf[1].samples_uvz - a[1].samples_uvz).max() < 0.05


def test_broken_checkpoints_raise_checkpoint_error_naming_file_and_field(checkpoint, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["expert_heads"] = 0
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json.*expert_heads"):
        make_predictor(bad)
    cfg["model"]["expert_heads"] = 2
    cfg["model"]["expert_dim"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model.safetensors.*shape"):
        make_predictor(bad)
    shutil.copy(checkpoint / "config.json", bad / "config.json")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        make_predictor(bad)
    (bad / "model.onnx").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="model.onnx"):
        make_predictor(bad, backend="onnxruntime")


def test_evaluate_cli_writes_table_and_plot(checkpoint, dataset, tmp_path):
    from mu0_policy.training import evaluate

    out = tmp_path / "eval"
    rc = evaluate.main(["--data", str(dataset), "--checkpoint", str(checkpoint), "--raw-checkpoint",
                        str(checkpoint), "--num-samples", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report) == {"val", "heldout_tasks"}
    tables = report["val"]["tables"]
    assert set(tables) == {"mu0", "mu0_raw_waypoints", "constant_velocity", "zero_motion"}
    assert np.isfinite(tables["mu0"]["uvz"]["top2/ADE@32"])
    # top-2 can only be better than or equal to top-1
    assert tables["mu0"]["uvz"]["top2/ADE@32"] <= tables["mu0"]["uvz"]["top1/ADE@32"] + 1e-9
    # zero motion's error is the ground-truth displacement itself: positive on moving points
    assert tables["zero_motion"]["uvz"]["top1/FDE@32"] > 0
    assert (out / "metrics.png").stat().st_size > 10_000


def test_training_runs_unchanged_under_torchrun_ddp(dataset, tmp_path):
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    out, ranks = tmp_path / "ddp", tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "mu0_policy.training.train", "--data", str(dataset), "--out", str(out), "--preset", "tiny",
                           "--steps", "3", "--batch-size", "2", "--eval-every", "3", "--save-every", "3", "--quiet",
                           "--rank-weights-dir", str(ranks)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["steps"] == 3 and cfg["training"]["batch_size"] == 4   # 2 ranks x 2
    # gradients are synchronised: each rank initialises with its own seed and draws its own batches
    # and noise, yet after 3 optimizer steps both ranks hold bit-identical weights ...
    w0, w1 = load_file(str(ranks / "rank0.safetensors")), load_file(str(ranks / "rank1.safetensors"))
    assert w0.keys() == w1.keys() and len(w0) > 10
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # ... the weights moved away from the initialisation, and rank 0's are the saved checkpoint
    saved = load_file(str(out / "model.safetensors"))
    init = _init_weights(out, cfg["training"]["seed"])
    moved = [k for k in saved if k in init and not torch.equal(saved[k], init[k])]
    assert len(moved) > 10
    for k in saved:
        assert torch.equal(saved[k], w0[k]), k
    assert make_predictor(out).predict(_requests((4,)), seed=0)[0].samples_uvz.shape == (1, 4, 33, 3)


def _init_weights(ckpt, seed):
    """Rank 0's initial weights (its seed): what DDP broadcasts to every rank before the first step."""
    from mu0_policy.model.checkpoint import read_config
    from mu0_policy.model.mu0 import Mu0Model
    from mu0_policy.training.train import seed_everything

    seed_everything(seed)
    return {k: v.detach().clone() for k, v in Mu0Model(read_config(ckpt)[0]).state_dict().items()}


def test_clis_fail_at_start_naming_the_bad_file(tmp_path, dataset, capsys):
    from mu0_policy.training import evaluate
    from mu0_policy.training import train

    assert train.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "index.json" in capsys.readouterr().err
    assert train.main(["--data", str(dataset), "--out", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert evaluate.main(["--data", str(dataset), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "config.json" in capsys.readouterr().err
