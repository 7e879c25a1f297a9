"""TraceExtract accuracy and coverage per ground-truth body (gripper, manipulated object) on
pick-place, push and reach sim bags.

    python bench/bench_extract_coverage.py [--seeds 2] [--steps 80] [--bags DIR]
Records (or reuses, with --bags) corner-camera 320x240 bags, extracts them and prints, per task
and body: assigned points, median / p90 displacement error (cm) and coverage (fraction of frames
with a valid track point on a moving body).
"""
import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TASKS = ("pick-place-v3", "push-v3", "reach-v3")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--bags", default=None, help="folder to record into / reuse bags from")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from mu0_sim.record import record_episode
    from mu0_perception.trace_extract.episode import read_bag
    from mu0_perception.trace_extract.evaluate import evaluate_against_ground_truth
    from mu0_perception.trace_extract.pipeline import extract_episode

    tmp = None
    if args.bags is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    else:
        root = Path(args.bags)
    print(f"{'task':14s} {'seed':>4s} {'body':8s} {'pts':>4s} {'trav cm':>7s} {'med cm':>7s} {'p90 cm':>7s} "
          f"{'cover':>6s}  extract s")
    agg = {}
    for task in args.tasks:
        for seed in range(args.seeds):
            p = root / f"{task}_{seed}"
            if not (p / "metadata.yaml").is_file():
                p = record_episode(task, seed, root, max_steps=args.steps, name=f"{task}_{seed}", overwrite=True)
            ep = read_bag(p)
            t = time.perf_counter()
            tr = extract_episode(ep)
            dt = time.perf_counter() - t
            r = evaluate_against_ground_truth(tr.xyz_world, tr.valid, tr.seed_frame, ep.gt_names, ep.gt_world,
                                              tr.moving)
            for body, b in r["per_body"].items():
                if b["travel_cm"] < 3.0:
                    continue  # a body that does not move (the object in reach) has nothing to cover
                print(f"{task:14s} {seed:4d} {body:8s} {b['points']:4d} {b['travel_cm']:7.1f} {b['median_cm']:7.2f} "
                      f"{b['p90_cm']:7.2f} {b['coverage']:6.2f}  {dt:.1f}", flush=True)
                agg.setdefault((task, body), []).append(b)
    print(f"\nmedian over the {args.seeds} seeds (seeds 0..{args.seeds - 1}; extraction is deterministic)")
    for (task, body), bs in agg.items():
        print(f"{task:14s} {body:8s} median {np.nanmedian([b['median_cm'] for b in bs]):5.2f} cm  p90 "
              f"{np.nanmedian([b['p90_cm'] for b in bs]):5.2f} cm  coverage "
              f"{np.median([b['coverage'] for b in bs]):.2f}  ({len(bs)} seeds)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
