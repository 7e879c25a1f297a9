"""The Ray batch engine (mu0_core/batch.py) behind `mu0 record --engine ray` and `mu0 extract
--engine ray`: on 2 local Ray workers the result equals the single-process CLI's, and a run that
stopped part-way continues from the manifest without redoing finished episodes.

Compared bit for bit: the bags' messages (the sim, the scripted expert and the renderer are
deterministic for a given seed, in any process) and the staged arrays / index of the dataset
(TraceExtract seeds everything it samples). Only wall-clock timings differ between runs and are
left out of the manifest comparison.
"""
import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray package is not installed (requirements.txt pins it)")

from safetensors.numpy import load_file  # noqa: E402

from mu0_perception.trace_extract import cli as extract_cli  # noqa: E402
from mu0_sim import record  # noqa: E402

# 2 tasks x 1 seed x 2 views (a fixed corner camera + a perturbed one), the runtime's 160x120,
# 40 steps: enough frames for samples with a 32-step horizon at stride 8
RECORD = ["--tasks", "push,reach", "--seeds", "0", "--resolution", "160x120", "--max-steps", "40",
          "--cameras", "corner", "--perturbed-views", "1"]
EXTRACT = ["--no-progress", "--stride", "8", "--val-fraction", "0"]
TIMING_KEYS = {"wall_s", "cpu_s", "timings"}


@pytest.fixture(scope="module")
def ray_local():
    # one local Ray with 2 worker slots for the module: the engine reuses a running session
    # instead of paying Ray's ~10 s start for every run
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _manifest(path: Path) -> dict:
    eps = json.loads(path.read_text())["episodes"]
    return {k: {f: v for f, v in r.items() if f not in TIMING_KEYS} for k, r in eps.items()}


def _messages(bag: Path) -> list[tuple]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def _staged(out: Path) -> dict:
    return {p.stem: load_file(str(p)) for p in sorted((out / "episodes").glob("*.safetensors"))}


@pytest.fixture(scope="module")
def bags_local(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec_local")
    assert record.main([*RECORD, "--out", str(out)]) == 0
    return out


def test_record_on_ray_equals_local_and_resumes_from_the_manifest(ray_local, bags_local, tmp_path):
    out = tmp_path / "rec_ray"
    # first part of the corpus, then the whole of it with --resume: push is not recorded again
    assert record.main([*RECORD, "--tasks", "push", "--out", str(out), "--engine", "ray", "--workers", "2"]) == 0
    first = {p: p.stat().st_mtime_ns for p in out.glob("push-v3*/*.mcap")}
    assert len(first) == 2
    assert record.main([*RECORD, "--out", str(out), "--engine", "ray", "--workers", "2", "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("push-v3*/*.mcap")} == first

    local, remote = _manifest(bags_local / record.MANIFEST), _manifest(out / record.MANIFEST)
    assert local == remote and len(local) == 2
    assert all(r["status"] == "done" and len(r["views"]) == 2 for r in local.values())
    names = sorted(p.name for p in bags_local.iterdir() if p.is_dir())
    assert names == sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["push-v3__sawyer_ee__seed0__corner", "push-v3__sawyer_ee__seed0__corner-p0",
                     "reach-v3__sawyer_ee__seed0__corner", "reach-v3__sawyer_ee__seed0__corner-p0"]
    for name in names:
        a, b = (json.loads((d / name / "episode.json").read_text()) for d in (bags_local, out))
        assert a == b, name
        assert _messages(bags_local / name) == _messages(out / name), name
    # the perturbed view really is another viewpoint of the same motion
    fixed, moved = (json.loads((bags_local / f"push-v3__sawyer_ee__seed0__{v}" / "episode.json").read_text())
                    for v in ("corner", "corner-p0"))
    assert moved["camera_perturbation"] is not None and fixed["camera_perturbation"] is None
    shift = np.subtract(moved["T_base_cam"]["translation"], fixed["T_base_cam"]["translation"])
    assert np.linalg.norm(shift) > 0.01
    assert fixed["num_steps"] == moved["num_steps"]


def test_extract_on_ray_equals_local_and_resumes_from_the_manifest(ray_local, bags_local, tmp_path):
    one, two = tmp_path / "x_local", tmp_path / "x_ray"
    assert extract_cli.main([str(bags_local), str(one), *EXTRACT]) == 0
    assert extract_cli.main([str(bags_local), str(two), *EXTRACT, "--engine", "ray", "--workers", "2"]) == 0
    assert _manifest(one / extract_cli.MANIFEST) == _manifest(two / extract_cli.MANIFEST)
    assert len(_manifest(two / extract_cli.MANIFEST)) == 4

    # a run that stopped before its last episode: drop that episode's record and staged files
    man = json.loads((two / extract_cli.MANIFEST).read_text())
    src, rec = sorted(man["episodes"].items())[-1]
    assert rec["status"] == "done" and rec["num_samples"] > 0
    del man["episodes"][src]
    (two / extract_cli.MANIFEST).write_text(json.dumps(man))
    for p in (two / "episodes").glob(f"{rec['episode_id']}.*"):
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (two / "episodes").glob("*.safetensors")}
    assert len(kept) == 3
    assert extract_cli.main([str(bags_local), str(two), *EXTRACT, "--engine", "ray", "--workers", "2"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())      # finished episodes not redone

    a, b = _staged(one), _staged(two)
    assert a.keys() == b.keys() and len(a) == 4
    for ep in a:
        assert a[ep].keys() == b[ep].keys()
        for k in a[ep]:
            np.testing.assert_array_equal(a[ep][k], b[ep][k], err_msg=f"{ep}/{k}")
    ia, ib = (json.loads((d / "index.json").read_text()) for d in (one, two))
    assert ia["shards"] == ib["shards"] and ia["samples"] == ib["samples"] and ia["episodes"] == ib["episodes"]
    for shard in ia["shards"]:
        sa, sb = load_file(str(one / shard["file"])), load_file(str(two / shard["file"]))
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"{shard['file']}/{k}")
    assert _manifest(one / extract_cli.MANIFEST) == _manifest(two / extract_cli.MANIFEST)


def test_a_crashed_worker_becomes_a_failed_record_not_a_crashed_batch(ray_local):
    import os

    from mu0_core.batch import ray_imap_unordered

    # os._exit kills the worker process itself, as a segfault in a renderer would; the job
    # function must be importable by the workers, hence a library function, not one of this file
    got = list(ray_imap_unordered(os._exit, [3], num_cpus=2,
                                  on_error=lambda job, exc: ("failed", job, type(exc).__name__)))
    assert got == [(0, ("failed", 3, "WorkerCrashedError"))]
