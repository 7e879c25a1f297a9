"""Export a μ_0 checkpoint (compact backbone) to ONNX for the onnxruntime backend.

    python -m mu0_policy.training.export checkpoints/mu0_small [--check]

Writes `<checkpoint>/model.onnx`: the whole prediction (backbone once, N Euler steps, K
samples) as one graph with dynamic batch, number of queries and number of samples. Inputs and
outputs are listed in `mu0_policy.model.mu0.ExportableSampler`; the instruction embedding is an
input (MiniLM runs outside the graph, cached per instruction). `--check` runs torch and
onnxruntime on the same random inputs and prints the largest difference.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from mu0_policy.model.predictor import ONNX_INPUTS

OUTPUT_NAMES = ("points", "validity_logits")


def example_inputs(cfg, batch=2, num_samples=3, num_queries=5, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_height, cfg.image_width
    depth = 0.5 + torch.rand((batch, 1, h, w), generator=g)
    depth[:, :, :2, :3] = float("nan")
    return {
        "image": torch.rand((batch, 3, h, w), generator=g),
        "depth": depth,
        "text_emb": torch.nn.functional.normalize(torch.randn((batch, cfg.text_dim), generator=g), dim=-1),
        "query_uvz": torch.cat([torch.rand((batch, num_queries, 2), generator=g) * 2 - 1,
                                0.5 + torch.rand((batch, num_queries, 1), generator=g)], -1),
        "query_mask": torch.ones((batch, num_queries), dtype=torch.bool),
        "history_uvz": torch.rand((batch, num_queries, cfg.history, 3), generator=g),
        "history_valid": torch.rand((batch, num_queries, cfg.history), generator=g) > 0.3,
        "noise": torch.randn((batch, num_samples, num_queries, cfg.num_points, 3), generator=g),
    }


def export_onnx(model, cfg, path: Path, opset: int = 18) -> Path:
    from torch.export import Dim

    from mu0_policy.model.mu0 import ExportableSampler

    if cfg.backbone != "compact":
        raise ValueError("model.backbone: ONNX export supports the compact backbone only")
    sampler = ExportableSampler(model.float().eval()).eval()
    ex = example_inputs(cfg)
    b, n, k = Dim("batch", min=1, max=64), Dim("queries", min=1, max=1024), Dim("samples", min=1, max=64)
    dyn = {
        "image": {0: b}, "depth": {0: b}, "text_emb": {0: b}, "query_uvz": {0: b, 1: n},
        "query_mask": {0: b, 1: n}, "history_uvz": {0: b, 1: n}, "history_valid": {0: b, 1: n},
        "noise": {0: b, 1: k, 2: n},
    }
    path = Path(path)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(sampler, tuple(ex[k] for k in ONNX_INPUTS), dynamo=True, opset_version=opset,
                                 input_names=list(ONNX_INPUTS), output_names=list(OUTPUT_NAMES),
                                 dynamic_shapes=tuple(dyn[k] for k in ONNX_INPUTS), external_data=False,
                                 verbose=False)
        prog.save(str(tmp))
    tmp.replace(path)
    return path


def parity(model, cfg, onnx_path: Path, num_queries=7, num_samples=4, batch=3, seed=1) -> float:
    """Largest |torch - onnxruntime| over both outputs on fresh random inputs."""
    import onnxruntime as ort

    from mu0_policy.model.mu0 import ExportableSampler

    ex = example_inputs(cfg, batch=batch, num_samples=num_samples, num_queries=num_queries, seed=seed)
    with torch.no_grad():
        ref = ExportableSampler(model.eval())(*(ex[k] for k in ONNX_INPUTS))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: ex[k].numpy() for k in ONNX_INPUTS})
    return max(float(np.abs(r.numpy() - g).max()) for r, g in zip(ref, got))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mu0 export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + config.json)")
    p.add_argument("--out", default=None, help="ONNX path (default: <checkpoint>/model.onnx)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--check", action="store_true", help="compare torch and onnxruntime outputs")
    args = p.parse_args(argv)

    from mu0_policy.model.checkpoint import load_model

    model, cfg, _ = load_model(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "model.onnx"
    export_onnx(model, cfg, out, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.check:
        diff = parity(model, cfg, out)
        print(f"max |torch - onnxruntime| = {diff:.2e}")
        if diff > 1e-3:
            print("error: parity check failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
