"""μ_0 model benchmarks (print numbers; nothing here asserts a time).

    python bench/bench_model.py [--reps 30] [--threads 1]   # latency of checkpoints/mu0_small on this CPU
    python bench/bench_model.py --metrics checkpoints/mu0_small/eval/metrics.json   # + quality targets
    python bench/bench_model.py --full --device cuda # full config (SmolVLM2-2.2B-sized, random init), bf16

Latency target (small config, CPU): one prediction = 1 frame, 64 queries, 4 flow steps, 1 sample
< 50 ms, measured end to end through `TracePredictor.predict` (preprocessing, cached MiniLM
instruction embedding, backbone once, 4 Euler steps, B-spline decoding).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mu0_core.camera import CameraIntrinsics  # noqa: E402
from mu0_policy.inference import TraceRequest  # noqa: E402
from mu0_policy.predictors import make_predictor  # noqa: E402


def make_request(n_queries=64, w=160, h=120, seed=0):
    rng = np.random.default_rng(seed)
    hist = np.concatenate([rng.uniform(-0.8, 0.8, (n_queries, 8, 2)), np.full((n_queries, 8, 1), 0.9)], -1)
    return TraceRequest(rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                        rng.uniform(0.5, 1.5, (h, w)).astype(np.float32),
                        CameraIntrinsics(w, h, 0.9 * w, 0.9 * w, (w - 1) / 2, (h - 1) / 2),
                        "push the puck to the goal", rng.uniform(0, h - 1, (n_queries, 2)),
                        hist.astype(np.float32))


def time_it(fn, warmup=3, reps=30):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), min(ts)


def bench_checkpoint(ckpt: Path, queries: int, samples: int, reps: int):
    import torch

    print(f"checkpoint {ckpt}: {(ckpt / 'model.safetensors').stat().st_size / 1e6:.2f} MB safetensors, "
          f"torch threads {torch.get_num_threads()}")
    req = [make_request(queries)]
    rows = [("torch", "float32"), ("torch", "bfloat16")]
    if (ckpt / "model.onnx").is_file():
        rows.append(("onnxruntime", "float32"))
    for backend, dtype in rows:
        pred = make_predictor(ckpt, backend=backend, dtype=dtype)
        med, best = time_it(lambda p=pred: p.predict(req, num_samples=samples, seed=0), reps=reps)
        print(f"  {backend:12s} {dtype:9s} 1 frame, {queries} queries, {pred.cfg.num_flow_steps} flow steps, "
              f"{samples} sample(s): median {med:6.1f} ms  (best {best:6.1f} ms)  target < 50 ms")


def bench_full(device: str, queries: int, samples: int, reps: int, batch: int, smoke: bool = False):
    import torch
    from transformers import Idefics3Config, Idefics3Model

    from mu0_policy.model.backbone import VLMBackbone
    from mu0_policy.model.config import preset
    from mu0_policy.model.mu0 import Mu0Model

    # SmolVLM2-2.2B-Instruct geometry (random weights: latency does not depend on their values)
    hf = Idefics3Config(scale_factor=3, image_token_id=49190,
                        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                           num_attention_heads=16, image_size=384, patch_size=14),
                        text_config=dict(model_type="llama", hidden_size=2048, intermediate_size=8192,
                                         num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                                         vocab_size=49280))
    overrides = {}
    if smoke:  # same code path at toy size, to check the benchmark itself on a CPU
        hf = Idefics3Config(scale_factor=2, image_token_id=60,
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=384, patch_size=48),
                            text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                                             vocab_size=1000))
        overrides = dict(vlm_num_layers=4, expert_dim=32, expert_layers=4, expert_heads=2)
    cfg = preset("full", vlm_path="<in-memory>", normalizer={"scale": [0.05, 0.05, 0.05]}, **overrides)
    with torch.device(device):
        vlm = Idefics3Model(hf).to(torch.bfloat16)
        model = Mu0Model(cfg, backbone=VLMBackbone(cfg, hf_model=vlm)).to(device).eval()
    n_exp = sum(p.numel() for p in model.expert.parameters()) / 1e6
    n_vlm = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    print(f"full config on {device}: VLM {n_vlm:.0f}M params (first {cfg.vlm_num_layers} text layers), "
          f"expert {n_exp:.0f}M params, {cfg.expert_layers} layers")
    g = model.backbone.grid
    n_img = model.backbone.num_image_tokens
    ids = torch.cat([torch.full((batch, n_img), hf.image_token_id), torch.randint(0, 50, (batch, 24))], 1).to(device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    img = torch.rand(batch, 3, 384, 384, device=device)
    dep = torch.ones(batch, 1, 384, 384, device=device)
    q = torch.cat([torch.rand(batch, queries, 2, device=device) - 0.5, torch.ones(batch, queries, 1, device=device)], -1)
    qm = torch.ones(batch, queries, dtype=torch.bool, device=device)
    h = q[:, :, None].repeat(1, 1, 8, 1)
    hv = torch.ones(batch, queries, 8, dtype=torch.bool, device=device)
    noise = torch.randn(batch, samples, queries, cfg.num_points, 3, device=device)

    def run():
        with torch.inference_mode(), torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
            ctx = model.encode(img, dep, q, qm, h, hv, input_ids=ids, attention_mask=mask)
            out = model.sample_from_context(ctx, noise)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    med, best = time_it(run, reps=reps)
    print(f"  bf16 batch {batch}, {queries} queries, {samples} samples, {cfg.num_flow_steps} flow steps: "
          f"median {med:.1f} ms, throughput {batch / med * 1000:.1f} predictions/s (grid {g}x{g})")


def report_metrics(path: Path, k: int = 5):
    rep = json.loads(path.read_text())
    for split, r in rep.items():
        t = r["tables"]
        key = f"top{k}/ADE@32"
        mu, cv = t["mu0"]["uvz"][key], t["constant_velocity"]["uvz"][key]
        print(f"{split}: 3D top-{k} minADE@32  mu0 {mu:.4f}  const-vel {cv:.4f}  ratio {mu / cv:.3f}  (target <= 0.5)")
        if "mu0_raw_waypoints" in t:
            for m in ("ADE", "DTW"):
                km = f"top{k}/{m}@32"
                b, r_ = t["mu0"]["uvz"][km], t["mu0_raw_waypoints"]["uvz"][km]
                print(f"{split}: 3D top-{k} min{m}@32  B-spline {b:.4f}  raw waypoints {r_:.4f}  "
                      f"({'B-spline better' if b < r_ else 'raw better'})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[1] / "checkpoints" / "mu0_small"))
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--metrics", default=None, help="metrics.json from mu0_policy.training.evaluate")
    p.add_argument("--full", action="store_true", help="full configuration latency (GPU machines)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="with --full: toy sizes (checks the benchmark on a CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch and onnxruntime intra-op threads (0 = their defaults; 1 on a shared, loaded CPU)")
    args = p.parse_args(argv)
    if args.threads:
        import os

        import torch

        torch.set_num_threads(args.threads)
        os.environ["MU0_ORT_THREADS"] = str(args.threads)    # onnxruntime's intra-op threads too
    if args.full:
        bench_full(args.device, args.queries, args.samples, args.reps, args.batch, args.smoke)
    else:
        bench_checkpoint(Path(args.checkpoint), args.queries, args.samples, args.reps)
    if args.metrics:
        report_metrics(Path(args.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
