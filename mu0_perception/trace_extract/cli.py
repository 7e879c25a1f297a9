"""`mu0 extract`: a folder of bags (or frame folders) -> a TraceExtract dataset.

    mu0 extract BAGS_DIR OUT_DIR [--workers 2] [--width 320 --height 240]
        [--backbone transformers --backbone-path DINOV2_DIR --backbone-device cuda]
    (= python -m mu0_perception.trace_extract.cli ...)

Keypoint features: `--backbone local` (CPU default, no weights) or `--backbone transformers`
with a local DINOv2-class checkpoint directory. Point tracking: `--tracker` (registered names;
the CPU Lucas-Kanade tracker "lk" is the only one shipped — CoTracker3 / TAPIP3D are an
interface to fill, see mu0_perception/tracking.py). A batch job passes the same choices in the
`ecfg` dict of `process_one` (ExtractConfig fields: backbone, backbone_path, backbone_device,
tracker).

Resumable: OUT_DIR/manifest.json records every input's status (done / skipped / failed + error).
A re-run skips inputs already done, skipped or failed (use --retry-failed to try failed again);
episode files and shards are written to temporary names and renamed, so a killed run never
leaves a half-written file. The dataset (shards + index.json) is packed at the end from all
staged episodes.

Batch engine: `--engine ray` runs each episode as one Ray task (mu0_core/batch.py): a local Ray
with `--workers` slots (default: every core), or the cluster at `--ray-address`. The driver
records the manifest as tasks finish, so resuming works exactly as with the local engine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

from mu0_core.trace_spec import STEP_PERIOD_S
from mu0_perception import keypoints as kp
from mu0_perception.tracking import registered_trackers
from mu0_perception.trace_extract.dataset import (PARAMETERIZATIONS, SampleConfig, atomic_write_json, build_samples,
                                                  finalize, stage_episode)
from mu0_perception.trace_extract.episode import EpisodeReadError, read_episode
from mu0_perception.trace_extract.pipeline import ExtractConfig, LowCoverageError, extract_episode

MANIFEST = "manifest.json"


def find_inputs(root: Path) -> list[Path]:
    """Bag directories (metadata.yaml) and frame folders (intrinsics.json) under root."""
    root = Path(root)
    if (root / "metadata.yaml").is_file() or (root / "intrinsics.json").is_file():
        return [root]
    found = {p.parent for p in root.rglob("metadata.yaml")} | {p.parent for p in root.rglob("intrinsics.json")}
    return sorted(found)


def load_manifest(out_dir: Path) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        return {"episodes": {}}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: manifest is not valid JSON ({exc}); delete it to start over") from exc


def process_one(job: tuple) -> dict:
    """Worker: read, extract, build samples and stage one episode. Never raises."""
    src, out_dir, ecfg, scfg = job
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        t = time.perf_counter()
        ep = read_episode(src)
        read_s = time.perf_counter() - t
        tr = extract_episode(ep, ExtractConfig(**ecfg))
        tr.timings["read"] = read_s
        if tr.coverage < ecfg.get("min_coverage", 0.6):
            raise LowCoverageError(f"coverage {tr.coverage:.2f} < min_coverage {ecfg.get('min_coverage', 0.6)}")
        t = time.perf_counter()
        W, H = tr.intrinsics.width, tr.intrinsics.height
        epr = ep.resized(W, H)
        arrays, captions = build_samples(tr, epr.color, epr.depth, SampleConfig(**scfg))
        tr.timings["samples"] = time.perf_counter() - t
        info = stage_episode(out_dir, tr, arrays, captions, extra={"source": str(src), "image_size": [H, W]})
        return dict(source=str(src), status="done", episode_id=tr.episode_id, num_samples=info["num_samples"],
                    num_frames=info["num_frames"], coverage=tr.coverage, timings=tr.timings,
                    wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    except LowCoverageError as exc:
        return dict(source=str(src), status="skipped", error=str(exc), wall_s=time.perf_counter() - t0)
    except EpisodeReadError as exc:
        return dict(source=str(src), status="failed", error=str(exc), wall_s=time.perf_counter() - t0)
    except Exception as exc:  # record, don't kill the batch: one bad episode must not stop a corpus
        return dict(source=str(src), status="failed", error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=5), wall_s=time.perf_counter() - t0)


def _crashed(job: tuple, exc: BaseException) -> dict:
    """The manifest record of an episode whose Ray worker died (process_one itself never raises)."""
    return dict(source=job[0], status="failed", error=f"worker crashed: {type(exc).__name__}: {exc}")


def run(inputs: list[Path], out_dir: Path, ecfg: dict, scfg: dict, workers: int = 1, retry_failed: bool = False,
        progress: bool = True, engine: str = "local", ray_address: str | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out_dir)
    eps = manifest.setdefault("episodes", {})
    todo = []
    for src in inputs:
        rec = eps.get(str(src))
        if rec and (rec["status"] in ("done", "skipped") or (rec["status"] == "failed" and not retry_failed)):
            continue
        todo.append((str(src), str(out_dir), ecfg, scfg))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="extract", unit="ep", disable=not progress)

    def record(res):
        eps[res["source"]] = res
        atomic_write_json(out_dir / MANIFEST, manifest)  # after every episode: a kill loses at most one
        bar.update(1)
        bar.set_postfix_str(f"{res['status']} {Path(res['source']).name}")

    if engine == "ray":
        from mu0_core.batch import ray_imap_unordered

        for _, res in ray_imap_unordered(process_one, todo, address=ray_address, num_cpus=workers,
                                         on_error=_crashed):
            record(res)
    elif workers > 1 and len(todo) > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap_unordered(process_one, todo):
                record(res)
    else:
        for job in todo:
            record(process_one(job))
    bar.close()
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mu0 extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", help="a folder of rosbag2 directories / frame folders (searched recursively)")
    ap.add_argument("out", help="dataset directory (created; resumable)")
    ap.add_argument("--workers", type=int, default=None,
                    help="parallel episode workers (processes; default 1), or local Ray slots (default: all cores)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: this process / a process pool; ray: one Ray task per episode")
    ap.add_argument("--ray-address", default=None,
                    help="--engine ray: the cluster to submit to (e.g. auto, ray://head:10001); default: a local Ray")
    ap.add_argument("--width", type=int, default=None, help="image width to process and store (default: the bag's)")
    ap.add_argument("--height", type=int, default=None, help="image height (default: the bag's)")
    ap.add_argument("--points-per-chunk", type=int, default=ExtractConfig.points_per_chunk)
    ap.add_argument("--chunk-size", type=int, default=ExtractConfig.chunk_size)
    ap.add_argument("--min-coverage", type=float, default=ExtractConfig.min_coverage)
    ap.add_argument("--max-queries", type=int, default=SampleConfig.max_queries)
    ap.add_argument("--stride", type=int, default=SampleConfig.stride)
    ap.add_argument("--parameterization", choices=PARAMETERIZATIONS, default=SampleConfig.parameterization,
                    help="synchronous (default, the authors' rule: all tracks of a sample resampled together by the "
                         "scene's motion, docs/dataset.md), arc_length (each trace on its own), time (frames)")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--heldout-tasks", default="", help="comma-separated task names kept out of train/val")
    ap.add_argument("--step-period", type=float, default=STEP_PERIOD_S, help=f"seconds per frame (sim: {STEP_PERIOD_S})")
    ap.add_argument("--backbone", choices=kp.BACKBONES, default=ExtractConfig.backbone,
                    help="keypoint features: local (CPU, no weights) | transformers (DINOv2-class, --backbone-path)")
    ap.add_argument("--backbone-path", default="", help="transformers backbone: local checkpoint directory")
    ap.add_argument("--backbone-device", default=ExtractConfig.backbone_device, help="transformers backbone: cpu | cuda")
    ap.add_argument("--tracker", choices=sorted(registered_trackers()), default=ExtractConfig.tracker,
                    help="2D point tracker (registered names)")
    ap.add_argument("--retry-failed", action="store_true", help="re-run inputs the manifest records as failed")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        raise SystemExit("--workers must be >= 1")
    if args.ray_address and args.engine != "ray":
        raise SystemExit("--ray-address needs --engine ray")
    if args.engine == "ray":
        from mu0_core.batch import ray_available

        if not ray_available():
            print("error: --engine ray: the `ray` package is not installed (pip install -r requirements.txt)",
                  file=sys.stderr)
            return 2
    workers = args.workers if args.workers is not None else (None if args.engine == "ray" else 1)
    if args.backbone == "transformers":
        try:  # fail at start, naming the directory, not once per episode
            kp.make_backbone("transformers", model_dir=args.backbone_path, device=args.backbone_device)
        except (ValueError, OSError) as exc:
            print(f"error: --backbone-path: {exc}", file=sys.stderr)
            return 2
    inputs = find_inputs(Path(args.inputs))
    if not inputs:
        print(f"no bags (metadata.yaml) or frame folders (intrinsics.json) under {args.inputs}")
        return 2
    ecfg = {f.name: getattr(ExtractConfig(), f.name) for f in fields(ExtractConfig)}
    ecfg.update(image_width=args.width, image_height=args.height, points_per_chunk=args.points_per_chunk,
                chunk_size=args.chunk_size, min_coverage=args.min_coverage, backbone=args.backbone,
                backbone_path=str(Path(args.backbone_path).resolve()) if args.backbone_path else "",
                backbone_device=args.backbone_device, tracker=args.tracker)
    scfg = dict(max_queries=args.max_queries, stride=args.stride, parameterization=args.parameterization)
    manifest = run(inputs, Path(args.out), ecfg, scfg, workers, args.retry_failed, not args.no_progress,
                   args.engine, args.ray_address)
    recs = [manifest["episodes"][str(s)] for s in inputs if str(s) in manifest["episodes"]]
    done = [r for r in recs if r["status"] == "done"]
    for r in recs:
        if r["status"] != "done":
            print(f"{r['status']}: {r['source']}: {r.get('error', '')}")
    if not done:
        print("no episode extracted; no dataset written")
        return 1
    index = finalize(args.out, [r["episode_id"] for r in done], args.shard_size, args.val_fraction,
                     [t for t in args.heldout_tasks.split(",") if t], args.step_period, SampleConfig(**scfg), ecfg)
    n = sum(s["num_samples"] for s in index["shards"])
    print(f"{len(done)}/{len(recs)} episodes -> {n} samples in {len(index['shards'])} shards at {args.out}")
    return 0 if len(done) == len(recs) else 3


if __name__ == "__main__":
    raise SystemExit(main())
