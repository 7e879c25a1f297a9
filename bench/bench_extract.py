"""TraceExtract accuracy vs sim ground truth and throughput (frames/s), medians.

    python bench/bench_extract.py [--episodes 5] [--steps 80] [--runs 3]

Records `--episodes` pick-place bags (seeds 0..N-1, corner camera, 320x240, `--steps` sim steps),
then extracts every bag `--runs` times. Prints

- accuracy per ground-truth body that moves (>= 3 cm): median over the episodes of the episode's
  median / p90 displacement error (cm) and coverage (fraction of frames with a valid track point on
  the body). Extraction is deterministic, so every run gives the same accuracy (checked);
- throughput per stage and in all (read + keypoints + tracking + lift + segmentation + samples):
  frames / seconds of one run over all episodes, each run's figure and the median over runs.
  Wall times depend on the machine's load; note it (uptime) next to the numbers. "all, per CPU s"
  divides by this process's CPU time instead (time.process_time: every thread, never the time
  spent waiting for a core), the figure that stays put on a loaded machine.
"""
import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=5, help="pick-place seeds 0..N-1")
    ap.add_argument("--steps", type=int, default=80, help="sim steps per episode")
    ap.add_argument("--runs", type=int, default=3, help="extractions of every episode (throughput median)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from mu0_sim.record import record_episode
    from mu0_perception.trace_extract.dataset import build_samples
    from mu0_perception.trace_extract.episode import read_bag
    from mu0_perception.trace_extract.evaluate import evaluate_against_ground_truth
    from mu0_perception.trace_extract.pipeline import extract_episode

    runs = []        # per run: {stage: seconds}, frames, per-episode accuracy
    with tempfile.TemporaryDirectory() as d:
        bags = [record_episode("pick-place-v3", s, d, max_steps=args.steps) for s in range(args.episodes)]
        for _ in range(args.runs):
            tot, frames, acc = {}, 0, []
            cpu0 = time.process_time()
            for p in bags:
                t = time.perf_counter()
                ep = read_bag(p)
                tot["read"] = tot.get("read", 0) + time.perf_counter() - t
                tr = extract_episode(ep)
                t = time.perf_counter()
                build_samples(tr, ep.color, ep.depth)
                tot["samples"] = tot.get("samples", 0) + time.perf_counter() - t
                for k, v in tr.timings.items():
                    tot[k] = tot.get(k, 0) + v
                frames += ep.num_frames
                r = evaluate_against_ground_truth(tr.xyz_world, tr.valid, tr.seed_frame, ep.gt_names, ep.gt_world,
                                                  tr.moving)
                acc.append({body: b for body, b in r["per_body"].items() if b["travel_cm"] >= 3.0})
            tot["cpu"] = time.process_time() - cpu0     # includes the (cheap) evaluation
            runs.append((tot, frames, acc))

    acc = runs[0][2]
    same = all(json_like(a) == json_like(acc) for _, _, a in runs[1:])
    for s, a in enumerate(acc):
        print(f"episode {s}: " + ", ".join(f"{body} {b['points']} pts, travel {b['travel_cm']:.1f} cm, median "
                                           f"{b['median_cm']:.2f} cm, p90 {b['p90_cm']:.2f} cm, coverage "
                                           f"{b['coverage']:.2f}" for body, b in a.items()))
    print(f"accuracy, median over {len(acc)} episodes (identical in all {args.runs} runs: {same}):")
    for body in sorted({b for a in acc for b in a}):
        bs = [a[body] for a in acc if body in a]
        print(f"  {body:10s} median {np.nanmedian([b['median_cm'] for b in bs]):5.2f} cm  p90 "
              f"{np.nanmedian([b['p90_cm'] for b in bs]):5.2f} cm  coverage "
              f"{np.nanmedian([b['coverage'] for b in bs]):.2f}  ({len(bs)} episodes)")
    frames = runs[0][1]
    print(f"throughput, {frames} frames per run, frames/s of each of {args.runs} runs -> median:")
    stages = [k for k in runs[0][0] if k != "cpu"]
    for k in stages:
        per_run = [frames / tot[k] for tot, _, _ in runs]
        print(f"  {k:16s} {' '.join(f'{v:7.1f}' for v in per_run)}  -> {statistics.median(per_run):7.1f}")
    per_run = [frames / sum(tot[k] for k in stages) for tot, _, _ in runs]
    print(f"  {'all':16s} {' '.join(f'{v:7.1f}' for v in per_run)}  -> {statistics.median(per_run):7.1f}")
    per_run = [frames / tot["cpu"] for tot, _, _ in runs]
    print(f"  {'all, per CPU s':16s} {' '.join(f'{v:7.1f}' for v in per_run)}  -> {statistics.median(per_run):7.1f}")
    return 0


def json_like(acc):
    """Accuracy rows comparable across runs (NaN == NaN)."""
    return [{body: {k: (None if isinstance(v, float) and np.isnan(v) else round(v, 6)) for k, v in b.items()}
             for body, b in a.items()} for a in acc]


if __name__ == "__main__":
    raise SystemExit(main())
