"""Benchmark the trace-math core: B-spline decode / fit (256 traces x 33 steps) and the metrics
table over 10k traces, numpy vs torch. Prints the median time per call over --repeats calls;
asserts nothing about speed.

    python bench/bench_trace_math.py [--traces 10000] [--samples 5] [--torch-threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mu0_core import metrics
from mu0_core import bspline


def time_call(fn, repeats: int) -> float:
    """Median seconds per call over `repeats` calls (after one warm-up call)."""
    fn()  # warm-up (caches, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=10000, help="traces in the metrics table")
    ap.add_argument("--samples", type=int, default=5, help="K samples per trace (top-1 / top-5)")
    ap.add_argument("--batch", type=int, default=256, help="traces for decode / fit")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (1 on a shared CPU; more threads thrash under load)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)

    B = bspline.basis_matrix(10, 32)
    t = np.linspace(0, 1, 33)[None, :, None]
    x = rng.normal(size=(args.batch, 1, 3)) + rng.normal(size=(args.batch, 1, 3)) * t \
        + rng.normal(size=(args.batch, 1, 3)) * t ** 2                      # (256, 33, 3)
    valid = rng.random((args.batch, 33)) > 0.05
    ctrl = bspline.fit(x, B, valid)
    xt, vt, ct = torch.tensor(x, dtype=torch.float32), torch.tensor(valid), torch.tensor(ctrl, dtype=torch.float32)
    Bt = torch.as_tensor(B, dtype=torch.float32)

    print(f"trace math benchmark (torch {torch.__version__}, {torch.get_num_threads()} thread(s))")
    print(f"{'operation (median of ' + str(args.repeats) + ' calls)':44s} {'numpy':>12s} {'torch':>12s}")
    rows = [
        (f"decode {args.batch} x 33 (D=10, C=3)",
         lambda: bspline.decode(ctrl, B), lambda: bspline.decode_torch(ct, Bt)),
        (f"fit {args.batch} x 33 (ridge 0.2, masked)",
         lambda: bspline.fit(x, B, valid), lambda: bspline.fit_torch(xt, Bt, vt)),
    ]
    for name, f_np, f_t in rows:
        a, b = time_call(f_np, args.repeats), time_call(f_t, args.repeats)
        print(f"{name:44s} {a * 1e3:10.3f}ms {b * 1e3:10.3f}ms")

    M, K = args.traces, args.samples
    gt = np.cumsum(rng.normal(scale=0.03, size=(M, 33, 3)), axis=1)
    gt[..., 2] += 1.0
    vm = rng.random((M, 33)) > 0.05
    pred = gt[None] + rng.normal(scale=0.03, size=(K, M, 33, 3))
    t0 = time.perf_counter()
    table_np = metrics.results_table(pred, gt, vm)
    t_np = time.perf_counter() - t0
    t0 = time.perf_counter()
    table_t = metrics.results_table(pred, gt, vm, backend="torch")
    t_t = time.perf_counter() - t0
    n_mov = int(metrics.moving_mask(gt, vm).sum())
    print(f"{f'results_table {M} traces x K={K} (T=8/16/32)':44s} {t_np:11.2f}s {t_t:11.2f}s")
    print(f"  ({n_mov} moving traces; max |numpy - torch| = "
          f"{max(abs(table_np[k] - table_t[k]) for k in table_np):.2e})")
    for T in metrics.DEFAULT_HORIZONS:
        print(f"  T={T:2d}  " + "  ".join(f"{k.split('@')[0]}={table_np[k]:.4f}"
                                        for k in table_np if k.endswith(f"@{T}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
