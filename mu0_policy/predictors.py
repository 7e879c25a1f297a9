"""The one predictor factory: `baseline:<name>` or a μ_0 checkpoint directory -> a TracePredictor.

Used by mu0_node / the offline replay (`model`, `backend`, `device`, `dtype` parameters), the
evaluation CLI, the benches and the tests. The non-learned baselines need no torch; a checkpoint
loads torch (or onnxruntime) only when it is really loaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from mu0_policy.inference import BACKENDS, DTYPES, TracePredictor

BASELINE_PREFIX = "baseline:"


def _baselines() -> dict:
    from mu0_policy.baselines import ConstantVelocityPredictor, ZeroMotionPredictor

    return {"constant_velocity": ConstantVelocityPredictor, "zero_motion": ZeroMotionPredictor}


def make_predictor(model, backend: str = "torch", device: str = "cpu", dtype: str = "float32") -> TracePredictor:
    """`baseline:constant_velocity` / `baseline:zero_motion`, or a checkpoint directory.

    A checkpoint directory holds model.safetensors + config.json [+ model.onnx]. backend "torch"
    runs the PyTorch model on `device` ("cpu", "cuda", "cuda:1") in `dtype`; backend
    "onnxruntime" (short name "onnx") runs `model.onnx` (CPU provider here; CUDA/TensorRT when
    onnxruntime-gpu is installed and device starts with "cuda"). Baselines ignore backend,
    device and dtype. Raises ValueError for a bad argument and CheckpointError naming the file
    and field when the checkpoint is unusable.
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected 'baseline:<name>' or a checkpoint directory, got {model!r}")
    if model.startswith(BASELINE_PREFIX):
        name = model[len(BASELINE_PREFIX):]
        baselines = _baselines()
        if name not in baselines:
            raise ValueError(f"model: unknown baseline {name!r}; expected one of {sorted(baselines)}")
        return baselines[name]()
    if backend == "onnx":  # the runtime's short name for the onnxruntime backend
        backend = "onnxruntime"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    root = Path(model)
    # heavy imports (torch) only when a checkpoint is really loaded
    from mu0_policy.model.checkpoint import CheckpointError, read_config

    if not root.is_dir():
        raise CheckpointError(root, None, "not a directory")
    from mu0_policy.model.predictor import Mu0Predictor

    cfg, _ = read_config(root)
    return Mu0Predictor.from_checkpoint(root, cfg, backend=backend, device=device, dtype=dtype)
