"""Checkpoint directories: model.safetensors + config.json (+ model.onnx after export).

config.json = {"format": "mu0", "version": 1, "model": Mu0Config fields without the normaliser (every
one required and type-checked: a default never stands in for a trained setting),
"normalizer": TraceNormalizer dict, "training": free-form provenance}. Frozen VLM weights are
not stored (they load from `model.vlm_path`). Problems raise `CheckpointError` naming the file
and the field.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mu0_core.bspline import TraceNormalizer
from mu0_policy.model.config import Mu0Config

FORMAT = "mu0"
VERSION = 1
FROZEN_PREFIXES = ("backbone.vlm.",)


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing a file or has a bad field; the message names both."""

    def __init__(self, path, field: str | None, problem: str):
        self.path = str(path)
        self.field = field
        where = f"{self.path}" + (f" field '{field}'" if field else "")
        super().__init__(f"bad checkpoint {where}: {problem}")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(FROZEN_PREFIXES)}


def save_checkpoint(out_dir, model, cfg: Mu0Config, training: dict | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None, extra_name: str | None = None) -> Path:
    """Write model.safetensors and config.json atomically (tmp file + rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = trainable_state(model)
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    tmp.replace(out / "model.safetensors")
    if extra_tensors is not None and extra_name:
        tmp = out / f"{extra_name}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, str(tmp))
        tmp.replace(out / extra_name)
    model_fields = cfg.to_dict()
    normalizer = model_fields.pop("normalizer")
    doc = {"format": FORMAT, "version": VERSION, "model": model_fields, "normalizer": normalizer,
           "training": training or {}}
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / "config.json")
    return out


def config_from_json(root: Path, doc: dict) -> Mu0Config:
    path = root / "config.json"
    if doc.get("format") != FORMAT:
        raise CheckpointError(path, "format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise CheckpointError(path, "version", f"unsupported version {doc.get('version')!r}")
    model = doc.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(path, "model", "expected an object of model settings")
    norm = doc.get("normalizer")
    if not isinstance(norm, dict):
        raise CheckpointError(path, "normalizer", "expected the TraceNormalizer dict")
    try:
        TraceNormalizer.from_dict(norm)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(path, "normalizer", str(exc)) from exc
    try:
        return Mu0Config.from_dict({**model, "normalizer": norm}, strict=True)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        field = msg.split(":")[0].replace("Mu0Config.", "model.") if msg.startswith("Mu0Config.") else "model"
        raise CheckpointError(path, field, msg) from exc


def read_config(root) -> tuple[Mu0Config, dict]:
    root = Path(root)
    path = root / "config.json"
    if not path.is_file():
        raise CheckpointError(path, None, "file missing")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, None, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(path, None, "top level must be a JSON object")
    return config_from_json(root, doc), doc


def load_model(root, cfg: Mu0Config | None = None, device="cpu"):
    """Build the model of `root/config.json` and load `root/model.safetensors` strictly."""
    from mu0_policy.model.mu0 import Mu0Model

    root = Path(root)
    doc = None
    if cfg is None:
        cfg, doc = read_config(root)
    weights = root / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(weights, None, "file missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(weights, None, f"unreadable safetensors ({exc})") from exc
    try:
        model = Mu0Model(cfg)
    except (OSError, ValueError) as exc:
        raise CheckpointError(root / "config.json", "model.vlm_path" if cfg.backbone == "vlm" else "model",
                              str(exc)) from exc
    expected = trainable_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(weights, missing[0], f"tensor missing ({len(missing)} missing in all)")
    if unexpected:
        raise CheckpointError(weights, unexpected[0], "tensor not part of this model config")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(weights, k, f"shape {tuple(state[k].shape)} != expected {tuple(v.shape)}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), cfg, doc
