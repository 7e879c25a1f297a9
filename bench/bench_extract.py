"""TraceExtract throughput per stage (frames/s) and accuracy vs sim ground truth.

    python bench/bench_extract.py [--episodes 3] [--steps 80]
Records short sim bags (pick-place, corner camera, 320x240), extracts them, prints numbers.
"""
import argparse
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from mu0_sim.record import record_episode
    from mu0_perception.trace_extract.dataset import build_samples
    from mu0_perception.trace_extract.episode import read_bag
    from mu0_perception.trace_extract.evaluate import evaluate_against_ground_truth
    from mu0_perception.trace_extract.pipeline import extract_episode

    tot, frames, res = {}, 0, []
    with tempfile.TemporaryDirectory() as d:
        for s in range(args.episodes):
            p = record_episode("pick-place-v3", s, d, max_steps=args.steps)
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
            res.append(r)
            print(f"episode {s}: {ep.num_frames} frames, tracks {tr.valid.shape[1]}, moving {tr.moving.sum()}, "
                  f"median {r['median_cm']:.2f} cm, p90 {r['p90_cm']:.2f} cm, GT coverage {r['coverage']:.2f} "
                  + str({k: round(v['coverage'], 2) for k, v in r['per_body'].items()}))
    print(f"frames {frames}")
    for k, v in tot.items():
        print(f"{k:16s} {frames / v:8.1f} frames/s")
    print(f"{'all':16s} {frames / sum(tot.values()):8.1f} frames/s")
    print(f"mean median {np.nanmean([r['median_cm'] for r in res]):.2f} cm, mean p90 "
          f"{np.nanmean([r['p90_cm'] for r in res]):.2f} cm, mean coverage {np.nanmean([r['coverage'] for r in res]):.2f}")


if __name__ == "__main__":
    main()
