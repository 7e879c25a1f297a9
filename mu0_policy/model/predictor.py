"""`Mu0Predictor`: the μ_0 checkpoint behind the Inference API (torch or onnxruntime backend).

Per batch of requests: resize colour/depth to the model's input size, build query uvz (depth at
the pixel; fallbacks as the baselines use), pad queries to the largest request, draw noise from
a seeded generator (so both backends can be fed identical noise), run backbone once + N Euler
steps for K samples, and decode control points with the checkpoint's TraceNormalizer.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from mu0_policy.baselines import history_valid_mask, query_anchor_uvz
from mu0_core.bspline import TraceNormalizer
from mu0_policy.inference import TracePredictor, TraceResult, check_predict_args
from mu0_policy.model.checkpoint import CheckpointError
from mu0_policy.model.checkpoint import load_model
from mu0_policy.model.config import Mu0Config

ONNX_INPUTS = ("image", "depth", "text_emb", "query_uvz", "query_mask", "history_uvz", "history_valid", "noise")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available]


class Mu0Predictor(TracePredictor):
    def __init__(self, cfg: Mu0Config, model=None, session=None, device: str = "cpu", dtype: str = "float32",
                 root: Path | None = None):
        self.cfg = cfg
        self.model_id = cfg.model_id
        self.horizon = cfg.horizon
        self.step_period = cfg.step_period
        self.num_ctrl = cfg.num_ctrl
        self.normalizer = TraceNormalizer.from_dict(cfg.normalizer)
        self.knots = np.asarray(self.normalizer.knots, dtype=np.float64)
        self.model, self.session = model, session
        self.device, self.dtype = device, dtype
        self.root = root
        self._embedder = None
        self._tokenizer = None
        if model is not None:
            from mu0_policy.model.mu0 import ExportableSampler
            self._sampler = ExportableSampler(model).eval()

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, root, cfg: Mu0Config, backend="torch", device="cpu", dtype="float32"):
        """`cfg` as read by mu0_policy.model.checkpoint.read_config(root)."""
        root = Path(root)
        if backend == "torch":
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ValueError(f"device: {device!r} requested but CUDA is not available")
            model, cfg, _ = load_model(root, cfg, device=device)
            return cls(cfg, model=model, device=device, dtype=dtype, root=root)
        onnx_path = root / "model.onnx"
        if not onnx_path.is_file():
            raise CheckpointError(onnx_path, None, "file missing (run `python -m mu0_policy.training.export` first)")
        if cfg.backbone != "compact":
            raise CheckpointError(root / "config.json", "model.backbone",
                                  "the onnxruntime backend supports the compact backbone only")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        threads = int(os.environ.get("MU0_ORT_THREADS", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=ort_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(onnx_path, None, f"onnxruntime cannot load it ({exc})") from exc
        names = [i.name for i in session.get_inputs()]
        if tuple(names) != ONNX_INPUTS:
            raise CheckpointError(onnx_path, "inputs", f"expected {ONNX_INPUTS}, got {tuple(names)}")
        return cls(cfg, session=session, device=device, dtype=dtype, root=root)

    # --- helpers -------------------------------------------------------------------------
    def _text_embeddings(self, instructions):
        if self._embedder is None:
            from mu0_policy.model.text import shared_embedder
            self._embedder = shared_embedder()
        return self._embedder.embed(list(instructions))

    def prepare(self, requests):
        """Requests -> model input arrays (numpy) + per-request (anchor, known, n)."""
        cfg = self.cfg
        hw = (cfg.image_height, cfg.image_width)
        nmax = max(1, max(r.num_queries for r in requests))
        b = len(requests)
        image = np.zeros((b, 3, *hw), np.float32)
        depth = np.full((b, 1, *hw), np.nan, np.float32)
        query_uvz = np.zeros((b, nmax, 3), np.float32)
        query_mask = np.zeros((b, nmax), bool)
        hist = np.zeros((b, nmax, cfg.history, 3), np.float32)
        hist_valid = np.zeros((b, nmax, cfg.history), bool)
        meta = []
        for i, r in enumerate(requests):
            col = cv2.resize(np.asarray(r.color), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
            image[i] = col.transpose(2, 0, 1).astype(np.float32) / 255.0
            if r.depth is not None:
                depth[i, 0] = cv2.resize(np.asarray(r.depth, np.float32), (hw[1], hw[0]),
                                         interpolation=cv2.INTER_NEAREST)
            n = r.num_queries
            anchor, known = query_anchor_uvz(r)
            query_uvz[i, :n] = anchor
            query_mask[i, :n] = True
            if r.history_uvz is not None and n:
                h = np.asarray(r.history_uvz, np.float32)
                ok = history_valid_mask(h)
                hist[i, :n] = np.where(ok[..., None], h, 0.0)
                hist_valid[i, :n] = ok
            meta.append((anchor, known, n))
        if cfg.backbone == "compact":
            text = self._text_embeddings([r.instruction for r in requests]).astype(np.float32)
        else:  # the VLM reads the instruction tokens itself
            text = np.zeros((b, cfg.text_dim), np.float32)
        return dict(image=image, depth=depth, text_emb=text, query_uvz=query_uvz, query_mask=query_mask,
                    history_uvz=hist, history_valid=hist_valid), meta

    def noise(self, b, k, n, seed):
        rng = np.random.default_rng(seed)
        return rng.standard_normal((b, k, n, self.cfg.num_points, 3)).astype(np.float32)

    def run(self, inputs: dict) -> tuple[np.ndarray, np.ndarray]:
        """Model inputs (numpy, incl. noise) -> (points, validity logits) as float32 numpy."""
        if self.session is not None:
            return tuple(self.session.run(None, {k: inputs[k] for k in ONNX_INPUTS}))
        dev = torch.device(self.device)
        t = {k: torch.from_numpy(inputs[k]).to(dev) for k in ONNX_INPUTS}
        amp = (torch.autocast(dev.type, dtype=TORCH_DTYPES[self.dtype]) if self.dtype != "float32"
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            if self.cfg.backbone == "compact":
                pts, logits = self._sampler(*(t[k] for k in ONNX_INPUTS))
            else:
                ids, mask = self._prompt_ids(inputs["instructions"])
                ctx = self.model.encode(t["image"], t["depth"], t["query_uvz"], t["query_mask"],
                                        t["history_uvz"], t["history_valid"], input_ids=ids.to(dev),
                                        attention_mask=mask.to(dev))
                pts, logits = self.model.sample_from_context(ctx, t["noise"])
        return pts.float().cpu().numpy(), logits.float().cpu().numpy()

    def _prompt_ids(self, instructions):
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model.backbone.model_dir), local_files_only=True)
        return self.model.backbone.build_prompt_ids(self._tokenizer, list(instructions))

    def decode(self, points: np.ndarray, anchor: np.ndarray):
        """(K, N, P, 3) normalised points + (N, 3) anchor -> samples (K, N, H+1, 3), ctrl (K, N, D, 3)."""
        a = np.broadcast_to(anchor[None], points.shape[:2] + (3,))
        if self.cfg.use_bspline:
            return (self.normalizer.decode(points, a).astype(np.float32),
                    self.normalizer.ctrl_to_abs(points, a).astype(np.float32))
        way = points * self.normalizer.scale + a[..., None, :]
        samples = np.concatenate([a[..., None, :], way], axis=-2).astype(np.float32)
        ctrl = self.normalizer.encode(samples)  # raw mode: report the ridge fit of its waypoints
        return samples, self.normalizer.ctrl_to_abs(ctrl, a).astype(np.float32)

    # --- API -----------------------------------------------------------------------------
    def predict(self, requests, num_samples: int = 1, seed: int | None = None) -> list[TraceResult]:
        check_predict_args(requests, num_samples)
        if not requests:
            return []
        k = int(num_samples)
        inputs, meta = self.prepare(requests)
        b, n = inputs["query_mask"].shape
        inputs["noise"] = self.noise(b, k, n, seed)
        inputs["instructions"] = [r.instruction for r in requests]
        points, logits = self.run(inputs)
        results = []
        for i, (anchor, known, nq) in enumerate(meta):
            samples, ctrl = self.decode(points[i, :, :nq], anchor)
            validity = 1.0 / (1.0 + np.exp(-logits[i, :, :nq].astype(np.float64)))
            validity = (validity * known[None, :, None]).astype(np.float32)
            results.append(TraceResult(samples, validity, ctrl, self.knots.copy()))
        return results
