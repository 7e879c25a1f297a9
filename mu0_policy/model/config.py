"""Configuration of the μ_0 model (stored as config.json beside model.safetensors).

Named presets:
- `small` (compact vision encoder + MiniLM instruction embedding, 4 expert layers of width 128,
  one token per query; 1.5 M parameters, trains on a CPU in minutes; the 8-task checkpoint the
  bundled action experts were trained with),
- `base` (the same family at 3x the parameters: 3 vision layers of width 128, 6 expert layers of
  width 192, TWO tokens per query (5 control points each) as the authors use; 4.5 M parameters,
  ~28 ms per frame through onnxruntime with 64 queries on one core of the development CPU:
  capacity for the 40-task, multi-view corpus within the runtime's 50 ms budget),
- `tiny` (tests only) and `full` (SmolVLM2-class backbone loaded from a local directory, first
  20 text layers, 20-layer expert at half the VLM width) for GPU machines.
Every field can be overridden.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

BACKBONES = ("compact", "vlm")


@dataclass
class Mu0Config:
    # trace parametrisation
    horizon: int = 32
    history: int = 8
    num_ctrl: int = 10
    degree: int = 3
    use_bspline: bool = True          # False: the paper's "no B-spline" ablation (raw waypoints)
    step_period: float = 0.0125

    # backbone
    backbone: str = "compact"         # "compact" | "vlm"
    image_height: int = 96
    image_width: int = 128
    vision_dim: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    text_dim: int = 384               # all-MiniLM-L6-v2 sentence embedding size
    vlm_path: str = ""                # local directory of a SmolVLM2 / Idefics3 checkpoint
    vlm_num_layers: int = 20          # first K text layers kept
    vlm_image_size: int = 384

    # trace expert
    expert_dim: int = 128
    expert_layers: int = 4            # alternating cross (even) / self (odd) attention blocks
    expert_heads: int = 4
    mlp_ratio: float = 3.0
    fourier_freqs: int = 8
    ctrl_per_token: int = 10          # control points per expert token (tokens per query = D / this)

    # flow matching
    num_flow_steps: int = 4
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    validity_weight: float = 0.5
    rigidity_weight: float = 5.0

    # data normalisation (TraceNormalizer.to_dict()), filled in by training
    normalizer: dict = field(default_factory=dict)
    model_id: str = "mu0_small"

    def __post_init__(self):
        self.validate()

    # --- derived sizes -------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        """Points the flow predicts per query: D control points, or H raw waypoints."""
        return self.num_ctrl if self.use_bspline else self.horizon

    @property
    def points_per_token(self) -> int:
        return self.ctrl_per_token if self.use_bspline else self.ctrl_per_token * self.horizon // self.num_ctrl

    @property
    def tokens_per_query(self) -> int:
        return self.num_points // self.points_per_token

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f"Mu0Config.{name}: {why} (got {getattr(self, name)!r})")

        if self.backbone not in BACKBONES:
            bad("backbone", f"must be one of {BACKBONES}")
        for name in ("horizon", "history", "num_ctrl", "image_height", "image_width", "vision_dim",
                     "expert_dim", "expert_layers", "expert_heads", "fourier_freqs", "num_flow_steps",
                     "ctrl_per_token", "text_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        if self.num_ctrl not in (4, 7, 10):
            bad("num_ctrl", "must be one of (4, 7, 10)")
        if self.num_ctrl % self.ctrl_per_token:
            bad("ctrl_per_token", f"must divide num_ctrl={self.num_ctrl}")
        if not self.use_bspline and (self.ctrl_per_token * self.horizon) % self.num_ctrl:
            bad("ctrl_per_token", "raw-waypoint mode needs ctrl_per_token * horizon divisible by num_ctrl")
        if self.expert_dim % self.expert_heads:
            bad("expert_heads", f"must divide expert_dim={self.expert_dim}")
        if self.vision_dim % self.vision_heads:
            bad("vision_heads", f"must divide vision_dim={self.vision_dim}")
        if self.image_height % 8 or self.image_width % 8:
            bad("image_height", "image size must be a multiple of 8 (stride of the compact stem)")
        if self.backbone == "vlm" and not self.vlm_path:
            bad("vlm_path", "backbone 'vlm' needs a local model directory")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def required_fields(cls) -> tuple:
        """The fields a stored config must give explicitly (all but the normaliser, which is stored
        beside the model fields): a default must never silently stand in for a trained setting."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "normalizer")

    @classmethod
    def from_dict(cls, d: dict, strict: bool = False) -> "Mu0Config":
        """Build from a dict. `strict` (stored checkpoints): every required field must be present
        and of its declared type; ValueError names the first field at fault as `Mu0Config.<field>`."""
        if not isinstance(d, dict):
            raise ValueError(f"Mu0Config: expected an object, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"Mu0Config: unknown field(s) {unknown}")
        if strict:
            for name in cls.required_fields():
                if name not in d:
                    raise ValueError(f"Mu0Config.{name}: required field missing")
            for name, value in d.items():
                _check_type(name, fields[name].type, value)
        return cls(**d)


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _check_type(name: str, annotation, value) -> None:
    kinds = _TYPES.get(annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
    if kinds is None:
        return
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and float in kinds and not math.isfinite(value):
        ok = False
    if not ok:
        raise ValueError(f"Mu0Config.{name}: expected {annotation}, got {value!r}")


PRESETS = {
    "small": dict(),
    "base": dict(vision_dim=128, vision_layers=3, vision_heads=4, expert_dim=192, expert_layers=6,
                 expert_heads=6, ctrl_per_token=5, model_id="mu0_base"),
    "tiny": dict(vision_dim=32, vision_layers=1, vision_heads=2, expert_dim=32, expert_layers=2,
                 expert_heads=2, image_height=32, image_width=32, model_id="mu0_tiny"),
    "full": dict(backbone="vlm", vlm_num_layers=20, expert_dim=1024, expert_layers=20,
                 expert_heads=16, ctrl_per_token=2, model_id="mu0_full"),
}


def preset(name: str, **overrides) -> Mu0Config:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown {name!r}, expected one of {sorted(PRESETS)}")
    return Mu0Config(**{**PRESETS[name], **overrides})
