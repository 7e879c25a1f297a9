"""TraceExtract as a batch: `mu0 extract --workers 2`, `--retry-failed`, resume after a kill
mid-run, and the DINOv2-class feature backbone (TransformersBackbone) chosen from the CLI and
from a batch job's `process_one`, on a tiny randomly initialised Dinov2 built from a
transformers config (no hub access here)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mu0_perception import keypoints as kp
from mu0_perception.trace_extract import cli
from mu0_perception.trace_extract.dataset import SampleConfig
from mu0_perception.trace_extract.pipeline import ExtractConfig

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-progress", "--stride", "8", "--val-fraction", "0"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    from mu0_sim.record import record_episode

    root = tmp_path_factory.mktemp("bags")
    for task, seed in (("push-v3", 0), ("pick-place-v3", 1), ("reach-v3", 2), ("push-v3", 3)):
        record_episode(task, seed, root, width=160, height=120, max_steps=40, name=f"{task}_{seed}")
    return root


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=64)
    path = tmp_path_factory.mktemp("dinov2_tiny")
    Dinov2Model(cfg).save_pretrained(path)
    return path


def staged(out):
    return {p.stem: load_file(str(p)) for p in sorted((Path(out) / "episodes").glob("*.safetensors"))}


def manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())["episodes"]


def test_workers_2_gives_the_same_dataset_as_one_worker(bags, tmp_path):
    assert cli.main([str(bags), str(tmp_path / "w1"), *ARGS]) == 0
    assert cli.main([str(bags), str(tmp_path / "w2"), *ARGS, "--workers", "2"]) == 0
    one, two = staged(tmp_path / "w1"), staged(tmp_path / "w2")
    assert len(one) == 4 and one.keys() == two.keys()
    for ep in one:
        for k in one[ep]:
            np.testing.assert_array_equal(one[ep][k], two[ep][k], err_msg=f"{ep}/{k}")
    i1, i2 = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("w1", "w2"))
    assert i1["shards"] == i2["shards"] and i1["samples"] == i2["samples"]
    assert all(r["status"] == "done" for r in manifest(tmp_path / "w2").values())


def test_retry_failed_reruns_only_failed_inputs(bags, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(bags / "push-v3_0", src / "good")
    bad = src / "flaky"
    shutil.copytree(bags / "reach-v3_2", bad)
    mcap = next(bad.glob("*.mcap"))
    whole = mcap.read_bytes()
    mcap.write_bytes(whole[: len(whole) // 3])             # cut off mid-write: fails
    out = tmp_path / "ds"
    assert cli.main([str(src), str(out), *ARGS]) == 3
    m = manifest(out)
    assert m[str(bad)]["status"] == "failed" and m[str(src / "good")]["status"] == "done"
    good_file = next((out / "episodes").glob("*.safetensors"))
    mtime = good_file.stat().st_mtime_ns
    mcap.write_bytes(whole)                                # the input is repaired
    assert cli.main([str(src), str(out), *ARGS]) == 3      # without --retry-failed: still failed
    assert manifest(out)[str(bad)]["status"] == "failed"
    assert cli.main([str(src), str(out), *ARGS, "--retry-failed"]) == 0
    m = manifest(out)
    assert m[str(bad)]["status"] == "done" and m[str(bad)]["num_samples"] > 0
    assert good_file.stat().st_mtime_ns == mtime          # the done input was not redone
    index = json.loads((out / "index.json").read_text())
    assert sum(s["num_samples"] for s in index["shards"]) == sum(r["num_samples"] for r in m.values())


def test_resume_after_a_kill_mid_run(bags, tmp_path):
    out = tmp_path / "ds"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mu0_perception.trace_extract.cli", str(bags), str(out), *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.json").is_file() and len(manifest(out)) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)                    # no clean-up, no finally blocks
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = {k: v for k, v in manifest(out).items() if v["status"] == "done"}
    assert 1 <= len(done_before) < 4 and not (out / "index.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "episodes").glob("*.safetensors")}
    rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    m = manifest(out)
    assert len(m) == 4 and all(r["status"] == "done" for r in m.values())
    for src, rec in done_before.items():                  # finished episodes are not redone
        assert m[src]["wall_s"] == rec["wall_s"]
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t
    assert not list(out.rglob(".*.tmp*"))                  # no half-written file survives
    index = json.loads((out / "index.json").read_text())
    assert sum(s["num_samples"] for s in index["shards"]) == sum(r["num_samples"] for r in m.values()) > 0
    # the resumed dataset equals an uninterrupted one
    assert cli.main([str(bags), str(tmp_path / "clean"), *ARGS]) == 0
    clean, resumed = staged(tmp_path / "clean"), staged(out)
    assert clean.keys() == resumed.keys()
    for ep in clean:
        for k in clean[ep]:
            np.testing.assert_array_equal(clean[ep][k], resumed[ep][k], err_msg=f"{ep}/{k}")


def test_transformers_backbone_features_are_the_patch_grid(tiny_dinov2):
    b = kp.make_backbone("transformers", model_dir=str(tiny_dinov2), image_size=64)
    assert kp.make_backbone("transformers", model_dir=str(tiny_dinov2), image_size=64) is b  # loaded once
    colors = np.random.default_rng(0).integers(0, 255, (3, 120, 160, 3), dtype=np.uint8)
    f = b.features(colors)
    assert f.shape == (3, 8, 8, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    # the patch tokens of the model itself, in grid order (CLS dropped)
    import torch

    x = torch.nn.functional.interpolate(torch.as_tensor(colors, dtype=torch.float32).permute(0, 3, 1, 2) / 255,
                                        size=(64, 64), mode="bilinear", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = b.model(pixel_values=x).last_hidden_state[:, 1:]
    np.testing.assert_allclose(f.reshape(3, 64, 32), tokens.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="config.json"):
        kp.make_backbone("transformers", model_dir=str(tiny_dinov2 / "missing"))
    with pytest.raises(ValueError, match="unknown"):
        kp.make_backbone("dino")


def test_transformers_backbone_from_the_cli_and_a_batch_job(bags, tiny_dinov2, tmp_path, capsys):
    src = tmp_path / "in"
    shutil.copytree(bags / "push-v3_0", src / "push0")
    out = tmp_path / "ds"
    rc = cli.main([str(src), str(out), *ARGS, "--min-coverage", "0", "--backbone", "transformers",
                   "--backbone-path", str(tiny_dinov2)])
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    assert index["extract_config"]["backbone"] == "transformers"
    assert index["extract_config"]["backbone_path"] == str(tiny_dinov2.resolve())
    info = json.loads(next((out / "episodes").glob("*.json")).read_text())
    assert info["backbone"] == f"transformers:{tiny_dinov2.name}" and info["num_samples"] > 0
    # a batch engine calls process_one with the same ExtractConfig fields (Slurm / Ray / Spark)
    ecfg = {f.name: getattr(ExtractConfig(), f.name) for f in fields(ExtractConfig)}
    ecfg.update(backbone="transformers", backbone_path=str(tiny_dinov2), min_coverage=0.0)
    rec = cli.process_one((str(src / "push0"), str(tmp_path / "job"), ecfg, {"stride": 8}))
    assert rec["status"] == "done", rec
    info = json.loads(next((tmp_path / "job" / "episodes").glob("*.json")).read_text())
    assert info["backbone"].startswith("transformers:")
    local = cli.process_one((str(src / "push0"), str(tmp_path / "local"), {**ecfg, "backbone": "local"},
                            {"stride": 8}))
    assert json.loads(next((tmp_path / "local" / "episodes").glob("*.json")).read_text())["backbone"] == \
        "local-lab-depth-motion" and local["status"] == "done"
    # a missing model directory stops the CLI at the start, naming the option
    capsys.readouterr()
    assert cli.main([str(src), str(tmp_path / "x"), *ARGS, "--backbone", "transformers",
                     "--backbone-path", str(tmp_path / "nope")]) == 2
    assert "--backbone-path" in capsys.readouterr().err
    assert SampleConfig(stride=8).stride == 8


def test_view_dataset_draws_the_traces_over_the_images(bags, tmp_path, capsys):
    import cv2
    import imageio.v2 as imageio

    from mu0_perception.trace_extract import viewer
    from mu0_policy.training.data import TraceDataset

    src = tmp_path / "in"
    shutil.copytree(bags / "pick-place-v3_1", src / "pp")
    assert cli.main([str(src), str(tmp_path / "ds"), *ARGS]) == 0
    assert viewer.main([str(tmp_path / "ds"), "--out", str(tmp_path / "v.png"), "--samples", "0:1"]) == 0
    png = imageio.imread(tmp_path / "v.png")[..., :3]
    raw = np.asarray(TraceDataset(tmp_path / "ds", "all")[0]["color"])
    assert png.shape == (2 * raw.shape[0], 2 * raw.shape[1], 3)
    plain = cv2.resize(raw, (png.shape[1], png.shape[0]), interpolation=cv2.INTER_NEAREST)
    assert (np.abs(png.astype(int) - plain).sum(-1) > 60).mean() > 0.005     # traces drawn on it
    assert viewer.main([str(tmp_path / "ds"), "--out", str(tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 1000
