"""The one predictor factory: `baseline:<name>` or a μ_0 checkpoint directory -> a TracePredictor.

Used by mu0_node / the offline replay (`model`, `backend`, `device`, `dtype` parameters), the
evaluation CLI, the benches and the tests. The non-learned baselines need no torch; a checkpoint
loads torch (or onnxruntime) only when it is really loaded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from mu0_policy.inference import BACKENDS, DTYPES, TracePredictor

BASELINE_PREFIX = "baseline:"


def _baselines() -> dict:
    from mu0_policy.baselines import ConstantVelocityPredictor, ZeroMotionPredictor

    return {"constant_velocity": ConstantVelocityPredictor, "zero_motion": ZeroMotionPredictor}


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class DeviceUnavailableWarning(RuntimeWarning):
    """The requested device is not what the predictor really runs on (e.g. onnxruntime fell back to CPU)."""


def backend_report(predictor: TracePredictor, backend: str = "", device: str = "") -> dict:
    """What a predictor REALLY runs on: backend, requested and actual device, and for onnxruntime
    the execution providers the session uses (`InferenceSession.get_providers()`, not the ones
    asked for: onnxruntime silently drops a provider it cannot load)."""
    session = getattr(predictor, "session", None)
    model = getattr(predictor, "model", None)
    if session is not None:
        providers = list(session.get_providers())
        actual = "cuda" if any(p in GPU_PROVIDERS for p in providers) else "cpu"
        return {"backend": "onnxruntime", "requested_device": device, "device": actual, "providers": providers}
    if model is not None and hasattr(model, "parameters"):
        try:
            actual = str(next(model.parameters()).device)
        except StopIteration:
            actual = device
        return {"backend": "torch", "requested_device": device, "device": actual, "providers": []}
    return {"backend": "baseline", "requested_device": device, "device": "cpu", "providers": []}


def describe_backend(report: dict) -> str:
    """`onnxruntime on cpu [CPUExecutionProvider] (cuda requested)` - for logs and /diagnostics."""
    text = f"{report['backend']} on {report['device']}"
    if report["providers"]:
        text += f" [{', '.join(report['providers'])}]"
    requested = report.get("requested_device") or ""
    if report["backend"] != "baseline" and requested and not report["device"].startswith(requested.split(":")[0]):
        text += f" ({requested} requested)"
    return text


def check_device(report: dict, require_device: bool = False) -> None:
    """cuda asked for but not in use: DeviceUnavailableWarning, or ValueError with require_device."""
    requested = (report.get("requested_device") or "").split(":")[0]
    if report["backend"] == "baseline" or not requested or report["device"].startswith(requested):
        return
    why = (f"device: {report.get('requested_device')!r} requested but {report['backend']} runs on "
           f"{report['device']} (providers {report['providers'] or '-'}"
           + ("; install onnxruntime-gpu and CUDA/cuDNN matching it" if report["backend"] == "onnxruntime" else "")
           + ")")
    if require_device:
        raise ValueError(why + "; require_device is set")
    warnings.warn(why, DeviceUnavailableWarning, stacklevel=3)


def make_predictor(model, backend: str = "torch", device: str = "cpu", dtype: str = "float32",
                   require_device: bool = False) -> TracePredictor:
    """`baseline:constant_velocity` / `baseline:zero_motion`, or a checkpoint directory.

    A checkpoint directory holds model.safetensors + config.json [+ model.onnx]. backend "torch"
    runs the PyTorch model on `device` ("cpu", "cuda", "cuda:1") in `dtype`; backend
    "onnxruntime" (short name "onnx") runs `model.onnx` (CPU provider here; CUDA/TensorRT when
    onnxruntime-gpu is installed and device starts with "cuda"). Baselines ignore backend,
    device and dtype. Raises ValueError for a bad argument and CheckpointError naming the file
    and field when the checkpoint is unusable. The predictor's `backend_report` says what it
    really runs on (backend_report()); a device that was asked for but is not in use warns
    (DeviceUnavailableWarning) or, with `require_device`, raises ValueError.
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
        predictor = baselines[name]()
        predictor.backend_report = backend_report(predictor, backend, device)
        return predictor
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

    from mu0_perception.query_history import history_parameterization

    cfg, doc = read_config(root)
    predictor = Mu0Predictor.from_checkpoint(root, cfg, backend=backend, device=device, dtype=dtype)
    try:
        predictor.history_parameterization = history_parameterization(doc.get("training"))
    except ValueError as err:
        raise CheckpointError(root / "config.json", "training.parameterization", str(err)) from None
    predictor.backend_report = backend_report(predictor, backend, device)
    check_device(predictor.backend_report, require_device)
    return predictor
