"""`trace_policy`: the learned, trace-conditioned action expert (and its no-trace ablation).

What it reads is what the ROS interface carries, nothing else:
- the TraceArray's traces in the robot base frame (samples, validity, entity labels), read "from
  now" (a trace stamped `age` seconds ago is sampled from `age` on, as the follower does);
- the joint state, the end-effector position from the robot's kinematics and the gripper state;
- the instruction (a MiniLM sentence embedding).
What it outputs is an action chunk of `horizon` control ticks, gripper included:
- `ee_delta` robots: (T, 4) end-effector displacement per tick (m) + gripper in [-1, 1];
- joint robots: (T, J) joint targets (current position + predicted offsets) + a gripper column
  sent through the robot's own gripper interface.

The network (`TracePolicyNet`) follows the authors' fusion: a small context of tokens (state,
instruction) reads the trace tokens through a *gated* cross-attention, out = z + sigmoid(g) * attn
with g initialised at 0; a learned "null trace" token is always present, so a set without traces
(dropout, the no-trace ablation, a frame without depth) is an ordinary input. The head is either a
chunk regressor (L1) or a flow-matching head (t ~ Beta(1.5, 1), 10 Euler steps), chosen at training.
The no-trace baseline is the SAME network trained and run with every trace masked
(`use_traces: false` in its checkpoint).

Checkpoints are a directory: model.safetensors + config.json (+ model.onnx). Normalisation
statistics, the robot's joint names, interface and control period live in config.json; a robot
YAML that does not match is refused naming both files.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mu0_policy.experts.base import ActionChunk, ActionExpert, ExpertObservation, register_expert

FORMAT = "mu0_expert"
VERSION = 1
# Trace samples (of the H=32 future steps) whose displacement from "now" the expert reads.
TRACE_OFFSETS = (4, 8, 16, 32)
TRACE_FEATURES = 3 + 3 + 3 * len(TRACE_OFFSETS) + len(TRACE_OFFSETS) + 1
TEXT_DIM = 384


class ExpertCheckpointError(ValueError):
    """An expert checkpoint is missing, malformed or does not fit the robot (names file and field)."""

    def __init__(self, path, field_name: str, message: str):
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: field '{field_name}': {message}")


@dataclass
class TracePolicyConfig:
    robot: str                       # robot config name it was trained for
    interface: str                   # "ee_delta" | "joint"
    joint_names: list                # the robot's commanded arm joints, in order
    action_dim: int                  # 4 (ee_delta) or J + 1 (joints + gripper)
    state_dim: int
    horizon: int                     # ticks per predicted chunk
    control_dt: float                # seconds per tick
    use_traces: bool = True
    head: str = "regression"         # regression | flow
    dim: int = 128
    layers: int = 2
    heads: int = 4
    max_traces: int = 64
    trace_offsets: list = field(default_factory=lambda: list(TRACE_OFFSETS))
    flow_steps: int = 10
    gripper_entities: list = field(default_factory=lambda: ["gripper", "hand"])
    gripper_query: bool = False      # trained on traces where μ_0 was also asked about the gripper
                                     # at its kinematic position (the runtime should do the same)
    query_mode: str = "automatic"    # the query selection μ_0 ran with for its training traces
                                     # (runtime PipelineConfig.queries; checkpoints before it: automatic)
    trace_model_id: str = ""         # model_id of the μ_0 whose traces it was trained on ("" = not
                                     # recorded / no traces); traces of another μ_0 are a different
                                     # input distribution: counted and warned about at run time
    action_space: str = "joint"      # joint interface only: "joint" = offsets of the arm joints from
                                     # their current positions; "ee" = offsets of the end effector
                                     # from its current position, turned into joint targets by the
                                     # arm's IK at run time (+ gripper either way)
    ee_rotation: list = field(default_factory=list)   # action_space "ee": the hand orientation (3x3,
                                     # row-major) the demonstrations held, which IK holds; [] = the
                                     # orientation the hand has when the episode begins
    self_filter: str = "projection"  # the robot self filter (robot config self_filter.mode) μ_0's
                                     # queries were selected with for its training traces: it decides
                                     # which objects next to the arm get queries (checkpoints before
                                     # it: projection)
    gripper_depth: str = "image"     # the gripper query's anchor depth in its training traces (robot
                                     # config gripper_point.depth; checkpoints before it: image)
    hold_occluded: int = 0           # robot config self_filter.hold_occluded_frames its training traces'
                                     # queries were selected with (checkpoints before it: 0)
    state_velocity: bool = False     # the state also carries the arm's measured joint velocities (a
                                     # PD-driven arm lags its targets: position alone does not say
                                     # whether it is still moving toward them)

    REQUIRED = ("robot", "interface", "joint_names", "action_dim", "state_dim", "horizon", "control_dt",
                "use_traces", "head", "dim", "layers", "heads", "max_traces", "trace_offsets")

    @classmethod
    def from_dict(cls, d: dict, path) -> "TracePolicyConfig":
        for k in cls.REQUIRED:
            if k not in d:
                raise ExpertCheckpointError(path, f"policy.{k}", "is required")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ExpertCheckpointError(path, f"policy.{sorted(unknown)[0]}", "unknown field")
        cfg = cls(**d)
        if cfg.interface not in ("ee_delta", "joint"):
            raise ExpertCheckpointError(path, "policy.interface", f"must be ee_delta or joint, got {cfg.interface!r}")
        if cfg.action_space not in ("joint", "ee"):
            raise ExpertCheckpointError(path, "policy.action_space", f"must be joint or ee, got {cfg.action_space!r}")
        if cfg.interface == "ee_delta" and cfg.action_space != "joint":
            raise ExpertCheckpointError(path, "policy.action_space", "applies to the joint interface only")
        if cfg.ee_rotation and np.asarray(cfg.ee_rotation, float).shape != (3, 3):
            raise ExpertCheckpointError(path, "policy.ee_rotation", "must be a 3x3 rotation matrix")
        if cfg.gripper_depth not in ("image", "kinematic"):
            raise ExpertCheckpointError(path, "policy.gripper_depth", f"must be image or kinematic, got {cfg.gripper_depth!r}")
        if cfg.self_filter not in ("projection", "depth"):
            raise ExpertCheckpointError(path, "policy.self_filter", f"must be projection or depth, got {cfg.self_filter!r}")
        if isinstance(cfg.hold_occluded, bool) or not isinstance(cfg.hold_occluded, int) or cfg.hold_occluded < 0:
            raise ExpertCheckpointError(path, "policy.hold_occluded", f"must be an integer >= 0, got {cfg.hold_occluded!r}")
        if cfg.head not in ("regression", "flow"):
            raise ExpertCheckpointError(path, "policy.head", f"must be regression or flow, got {cfg.head!r}")
        for k in ("action_dim", "state_dim", "horizon", "dim", "layers", "heads", "max_traces"):
            v = getattr(cfg, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ExpertCheckpointError(path, f"policy.{k}", f"must be a positive integer, got {v!r}")
        if not (isinstance(cfg.control_dt, (int, float)) and cfg.control_dt > 0):
            raise ExpertCheckpointError(path, "policy.control_dt", f"must be > 0, got {cfg.control_dt!r}")
        return cfg


# ----------------------------------------------------------------------------------- features
def state_features(ee_position, gripper: float, arm_q, arm_qd=None) -> np.ndarray:
    """(3 + 1 + J [+ J],) end-effector xyz (base frame, m), gripper closure, arm joint positions
    [, arm joint velocities (rad/s) when given]."""
    parts = [np.asarray(ee_position, float).reshape(3), [float(gripper)], np.asarray(arm_q, float).reshape(-1)]
    if arm_qd is not None:
        parts.append(np.asarray(arm_qd, float).reshape(-1))
    return np.concatenate(parts).astype(np.float32)


def _interp_rows(path: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of `path` (L, ...) at fractional indices, linear, clamped to the ends."""
    idx = np.clip(index, 0.0, len(path) - 1)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, len(path) - 1)
    w = (idx - lo).reshape((-1,) + (1,) * (path.ndim - 1))
    return path[lo] * (1 - w) + path[hi] * w


def trace_features(traces_xyz, validity, entities, ee_position, age_steps: float,
                   gripper_entities=("gripper", "hand"), offsets=TRACE_OFFSETS,
                   max_traces: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size trace tokens: ((max_traces, TRACE_FEATURES) float32, (max_traces,) bool valid).

    Per trace: where the point is now relative to the end effector and in the base frame, its
    predicted displacement `offsets` steps from now, the validity there, and whether its entity is
    the gripper. A trace whose current sample is invalid or non-finite is left out. With more than
    `max_traces` usable traces, the gripper's are kept and then the ones predicted to move most
    (that is where the task is).
    """
    feats = np.zeros((max_traces, TRACE_FEATURES), np.float32)
    mask = np.zeros(max_traces, bool)
    xyz = np.asarray(traces_xyz, float)
    val = np.asarray(validity, float)
    if xyz.ndim != 3 or len(xyz) == 0:
        return feats, mask
    n, L, _ = xyz.shape
    ee = np.asarray(ee_position, float).reshape(3)
    age = float(np.clip(age_steps, 0.0, L - 1))
    offs = np.asarray(offsets, float)
    idx = np.concatenate([[age], age + offs])                                 # (K+1,)
    pts = np.stack([_interp_rows(xyz[i], idx) for i in range(n)])              # (n, K+1, 3)
    vals = np.stack([_interp_rows(val[i], idx) for i in range(n)])             # (n, K+1)
    now = pts[:, 0]
    usable = np.all(np.isfinite(pts.reshape(n, -1)), axis=1) & (vals[:, 0] >= 0.5)
    disp = pts[:, 1:] - now[:, None]
    disp = np.where(np.isfinite(disp), disp, 0.0)
    grip = np.array([e in set(gripper_entities) for e in entities], float)
    rows = np.concatenate([now - ee, now, disp.reshape(n, -1), np.clip(vals[:, 1:], 0, 1), grip[:, None]], axis=1)
    keep = np.flatnonzero(usable)
    if len(keep) > max_traces:      # the gripper's own trace first, then the most moving ones
        motion = np.linalg.norm(disp[keep, -1], axis=1)
        keep = keep[np.lexsort((-motion, -grip[keep]))[:max_traces]]
    feats[: len(keep)] = rows[keep]
    mask[: len(keep)] = True
    return feats, mask


# ----------------------------------------------------------------------------------- network
def _torch():
    import torch

    return torch


def build_net(cfg: TracePolicyConfig):
    torch = _torch()
    nn = torch.nn

    class GatedCrossBlock(nn.Module):
        """Context tokens read the trace tokens (gated cross-attention), then each other."""

        def __init__(self, d, h):
            super().__init__()
            self.norm_q, self.norm_kv = nn.LayerNorm(d), nn.LayerNorm(d)
            self.cross = nn.MultiheadAttention(d, h, batch_first=True)
            self.gate = nn.Parameter(torch.zeros(1))           # sigmoid(0) = 0.5: open at start
            self.norm_s = nn.LayerNorm(d)
            self.self_attn = nn.MultiheadAttention(d, h, batch_first=True)
            self.norm_m = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, z, kv, kv_pad):
            q = self.norm_q(z)
            a, _ = self.cross(q, self.norm_kv(kv), self.norm_kv(kv), key_padding_mask=kv_pad, need_weights=False)
            z = z + torch.sigmoid(self.gate) * a
            s = self.norm_s(z)
            z = z + self.self_attn(s, s, s, need_weights=False)[0]
            return z + self.mlp(self.norm_m(z))

    class TracePolicyNet(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.dim
            self.cfg = cfg
            self.state_in = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d))
            self.text_in = nn.Linear(TEXT_DIM, d)
            self.trace_in = nn.Sequential(nn.Linear(TRACE_FEATURES, d), nn.GELU(), nn.Linear(d, d))
            self.null_trace = nn.Parameter(torch.zeros(1, 1, d))
            self.blocks = nn.ModuleList([GatedCrossBlock(d, cfg.heads) for _ in range(cfg.layers)])
            self.out_norm = nn.LayerNorm(2 * d)
            out = cfg.horizon * cfg.action_dim
            if cfg.head == "regression":
                self.head = nn.Sequential(nn.Linear(2 * d, 4 * d), nn.GELU(), nn.Linear(4 * d, out))
            else:
                self.time_in = nn.Sequential(nn.Linear(16, d), nn.GELU())
                self.head = nn.Sequential(nn.Linear(2 * d + d + out, 4 * d), nn.GELU(),
                                          nn.Linear(4 * d, 4 * d), nn.GELU(), nn.Linear(4 * d, out))

        def context(self, state, text, traces, trace_mask):
            """(B, 2d) context from normalised inputs; trace_mask True = a real trace."""
            B = state.shape[0]
            z = torch.stack([self.state_in(state), self.text_in(text)], dim=1)
            kv = torch.cat([self.null_trace.expand(B, 1, -1), self.trace_in(traces)], dim=1)
            pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=state.device), ~trace_mask], dim=1)
            for blk in self.blocks:
                z = blk(z, kv, pad)
            return self.out_norm(z.reshape(B, -1))

        def time_embedding(self, t):
            freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), 8, device=t.device))
            ang = t[:, None] * freqs[None] * math.pi
            return self.time_in(torch.cat([torch.sin(ang), torch.cos(ang)], dim=1))

        def velocity(self, ctx, x_t, t):
            return self.head(torch.cat([ctx, self.time_embedding(t), x_t], dim=1))

        def forward(self, state, text, traces, trace_mask, noise=None):
            """Normalised action chunk (B, H * A). Flow head: `noise` (B, H * A) is the start of
            the 10-step Euler integration from t = 1 to 0 (zeros when None)."""
            ctx = self.context(state, text, traces, trace_mask)
            if cfg.head == "regression":
                return self.head(ctx)
            x = torch.zeros(ctx.shape[0], cfg.horizon * cfg.action_dim) if noise is None else noise
            n = cfg.flow_steps
            for k in range(n):
                t = torch.full((ctx.shape[0],), 1.0 - k / n)
                x = x - (1.0 / n) * self.velocity(ctx, x, t)
            return x

        def loss(self, state, text, traces, trace_mask, target):
            ctx = self.context(state, text, traces, trace_mask)
            if cfg.head == "regression":
                return torch.nn.functional.l1_loss(self.head(ctx), target)
            B = target.shape[0]
            t = torch.distributions.Beta(1.5, 1.0).sample((B,))
            eps = torch.randn_like(target)
            x_t = t[:, None] * eps + (1 - t[:, None]) * target
            return torch.nn.functional.mse_loss(self.velocity(ctx, x_t, t), eps - target)

    return TracePolicyNet()


# ----------------------------------------------------------------------------------- checkpoint
@dataclass
class Normalization:
    state_mean: np.ndarray
    state_std: np.ndarray
    trace_mean: np.ndarray
    trace_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray

    def to_dict(self) -> dict:
        return {k: np.asarray(v, float).tolist() for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, path, cfg: TracePolicyConfig) -> "Normalization":
        want = {"state_mean": cfg.state_dim, "state_std": cfg.state_dim, "trace_mean": TRACE_FEATURES,
                "trace_std": TRACE_FEATURES, "action_mean": cfg.action_dim, "action_std": cfg.action_dim}
        out = {}
        for k, n in want.items():
            if k not in d:
                raise ExpertCheckpointError(path, f"normalization.{k}", "is required")
            v = np.asarray(d[k], float)
            if v.shape != (n,) or not np.all(np.isfinite(v)):
                raise ExpertCheckpointError(path, f"normalization.{k}", f"expected {n} finite numbers, got shape {v.shape}")
            if k.endswith("_std") and not np.all(v > 0):
                raise ExpertCheckpointError(path, f"normalization.{k}", "must be > 0")
            out[k] = v.astype(np.float32)
        return cls(**out)


def save_expert_checkpoint(out_dir, net, cfg: TracePolicyConfig, norm: Normalization, training: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp),
              metadata={"format": FORMAT})
    tmp.replace(out / "model.safetensors")
    doc = {"format": FORMAT, "version": VERSION, "policy": asdict(cfg), "normalization": norm.to_dict(),
           "training": training or {}}
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / "config.json")
    return out


def read_expert_config(path) -> tuple[TracePolicyConfig, Normalization, dict]:
    root = Path(path)
    cfg_path = root / "config.json"
    if not root.is_dir():
        raise ExpertCheckpointError(root, "checkpoint", "not a directory")
    try:
        doc = json.loads(cfg_path.read_text())
    except OSError as err:
        raise ExpertCheckpointError(cfg_path, "config.json", f"cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise ExpertCheckpointError(cfg_path, "config.json", f"not valid JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExpertCheckpointError(cfg_path, "format", f"expected {FORMAT!r}, got {doc.get('format') if isinstance(doc, dict) else doc!r}")
    if doc.get("version") != VERSION:
        raise ExpertCheckpointError(cfg_path, "version", f"unsupported version {doc.get('version')!r}")
    for k in ("policy", "normalization"):
        if not isinstance(doc.get(k), dict):
            raise ExpertCheckpointError(cfg_path, k, "is required (a mapping)")
    cfg = TracePolicyConfig.from_dict(doc["policy"], cfg_path)
    norm = Normalization.from_dict(doc["normalization"], cfg_path, cfg)
    return cfg, norm, doc.get("training", {})


def load_expert_net(path):
    """(net in eval mode, cfg, norm) from a checkpoint directory; ExpertCheckpointError if bad."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg, norm, _ = read_expert_config(path)
    net = build_net(cfg)
    weights = Path(path) / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ExpertCheckpointError(weights, "model.safetensors", f"cannot read: {err}") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExpertCheckpointError(weights, (missing or unexpected)[0],
                                    "missing from the weights" if missing else "unexpected tensor")
    net.eval()
    return net, cfg, norm


# ----------------------------------------------------------------------------------- runtime
class PolicyRunner:
    """Normalised inference of a trace-policy checkpoint on numpy inputs (torch or onnxruntime)."""

    def __init__(self, path, backend: str = "torch", threads: int = 1):
        self.path = Path(path)
        self.cfg, self.norm, self.training = read_expert_config(self.path)
        if backend not in ("torch", "onnxruntime", "onnx"):
            raise ValueError(f"backend must be torch or onnxruntime, got {backend!r}")
        self.backend = "onnxruntime" if backend in ("onnx", "onnxruntime") else "torch"
        if self.backend == "torch":
            torch = _torch()
            self.net, _, _ = load_expert_net(self.path)
            self._torch = torch
        else:
            import onnxruntime as ort

            onnx_path = self.path / "model.onnx"
            if not onnx_path.is_file():
                raise ExpertCheckpointError(onnx_path, "model.onnx", "missing (run `mu0 train-expert --export` or export_expert_onnx)")
            so = ort.SessionOptions()
            so.intra_op_num_threads = int(threads)
            self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            self._inputs = {i.name for i in self.session.get_inputs()}
        self.providers = ["CPUExecutionProvider"] if self.backend == "onnxruntime" else ["torch-cpu"]

    def normalise(self, state, traces, mask):
        n = self.norm
        s = (np.asarray(state, np.float32) - n.state_mean) / n.state_std
        t = (np.asarray(traces, np.float32) - n.trace_mean) / n.trace_std
        t = np.where(np.asarray(mask)[..., None], t, 0.0).astype(np.float32)
        m = np.asarray(mask, bool)
        if not self.cfg.use_traces:
            m = np.zeros_like(m)
        return s.astype(np.float32), t, m

    def predict(self, state, text, traces, mask, noise=None) -> np.ndarray:
        """Batched: state (B, S), text (B, 384), traces (B, M, F), mask (B, M) -> actions (B, H, A)."""
        s, t, m = self.normalise(state, traces, mask)
        text = np.asarray(text, np.float32)
        B = s.shape[0]
        H, A = self.cfg.horizon, self.cfg.action_dim
        if noise is None:
            noise = np.zeros((B, H * A), np.float32)
        if self.backend == "torch":
            torch = self._torch
            with torch.inference_mode():
                y = self.net(torch.from_numpy(s), torch.from_numpy(text), torch.from_numpy(t),
                             torch.from_numpy(m), torch.from_numpy(np.asarray(noise, np.float32))).numpy()
        else:
            feed = {"state": s, "text": text, "traces": t, "trace_mask": m, "noise": np.asarray(noise, np.float32)}
            # the regression head never reads `noise`, so the exported graph has no such input
            y = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        y = y.reshape(B, H, A)
        return y * self.norm.action_std + self.norm.action_mean


# what every member of an ensemble must share: the same inputs mean the same thing to each, and
# their chunks can be averaged tick by tick
ENSEMBLE_SHARED = ("interface", "joint_names", "action_dim", "state_dim", "state_velocity", "horizon", "control_dt", "use_traces",
                   "max_traces", "trace_offsets", "gripper_entities", "gripper_query", "query_mode",
                   "trace_model_id", "action_space", "ee_rotation", "self_filter", "gripper_depth", "hold_occluded")


class EnsembleRunner:
    """The mean chunk of several checkpoints of one recipe (e.g. training seeds), each with its own
    normalisation. Why it exists: on the joint sim arm three training seeds of the same recipe scored
    54-72 % (door-open 0-16 of 20). Measured there (docs/results/experts.md), the mean of the two
    seeds with the best validation loss scored what the better one did (71.9 %), the mean of all
    three 63.8 %: an ensemble does not rescue a bad member. ~0.5 ms per member (onnxruntime)."""

    def __init__(self, paths, backend: str = "torch", threads: int = 1):
        self.members = [PolicyRunner(p, backend=backend, threads=threads) for p in paths]
        first = self.members[0]
        for m in self.members[1:]:
            for name in ENSEMBLE_SHARED:
                if getattr(m.cfg, name) != getattr(first.cfg, name):
                    raise ExpertCheckpointError(m.path / "config.json", f"policy.{name}",
                                                f"{getattr(m.cfg, name)!r} differs from {getattr(first.cfg, name)!r} "
                                                f"in the ensemble's first member {first.path}")
        self.path = first.path
        self.paths = [m.path for m in self.members]
        self.cfg, self.norm, self.training = first.cfg, first.norm, first.training
        self.backend, self.providers = first.backend, first.providers

    def predict(self, state, text, traces, mask, noise=None) -> np.ndarray:
        return np.mean([m.predict(state, text, traces, mask, noise) for m in self.members], axis=0)


def export_expert_onnx(path, opset: int = 17) -> Path:
    """Write model.onnx beside the checkpoint (batch and trace count are dynamic)."""
    torch = _torch()
    net, cfg, _ = load_expert_net(path)
    B, M = 2, cfg.max_traces
    ex = (torch.zeros(B, cfg.state_dim), torch.zeros(B, TEXT_DIM), torch.zeros(B, M, TRACE_FEATURES),
          torch.ones(B, M, dtype=torch.bool), torch.zeros(B, cfg.horizon * cfg.action_dim))
    out = Path(path) / "model.onnx"
    tmp = Path(path) / "model.onnx.tmp"
    torch.onnx.export(net, ex, str(tmp), input_names=["state", "text", "traces", "trace_mask", "noise"],
                      output_names=["actions"], opset_version=opset, dynamo=False,
                      dynamic_axes={"state": {0: "batch"}, "text": {0: "batch"}, "traces": {0: "batch"},
                                    "trace_mask": {0: "batch"}, "noise": {0: "batch"}, "actions": {0: "batch"}})
    tmp.replace(out)
    return out


def onnx_parity(path, samples: int = 8, seed: int = 0) -> float:
    """Max |torch - onnxruntime| over random inputs (some traces masked)."""
    rng = np.random.default_rng(seed)
    a, b = PolicyRunner(path, "torch"), PolicyRunner(path, "onnxruntime")
    cfg = a.cfg
    state = rng.normal(size=(samples, cfg.state_dim)).astype(np.float32) * a.norm.state_std + a.norm.state_mean
    text = rng.normal(size=(samples, TEXT_DIM)).astype(np.float32) * 0.05
    traces = rng.normal(size=(samples, cfg.max_traces, TRACE_FEATURES)).astype(np.float32) * a.norm.trace_std + a.norm.trace_mean
    mask = rng.random((samples, cfg.max_traces)) < 0.5
    return float(np.max(np.abs(a.predict(state, text, traces, mask) - b.predict(state, text, traces, mask))))


def resolve_checkpoint(path: str, robot_path: str) -> Path:
    """A checkpoint path as written in a robot YAML: absolute, relative to the working directory,
    or relative to the directory holding config/ (the source tree or the installed share dir)."""
    from mu0_core.resources import resolve

    p = resolve(path)                  # absolute, the working directory, the source tree / share/mu0
    if p.exists():
        return p
    root = Path(robot_path).resolve().parent.parent.parent   # <root>/config/robots/<robot>.yaml
    cand = root / path
    return cand if cand.exists() else p


@register_expert("trace_policy")
class TracePolicyExpert(ActionExpert):
    """The learned expert. YAML: `expert: {name: trace_policy, params: {checkpoint: DIR,
    backend: torch|onnxruntime, seed: 0}}`; `checkpoint: [DIR, DIR, ...]` runs an ensemble (the
    mean chunk of checkpoints of one recipe, `EnsembleRunner`)."""

    def __init__(self, robot, checkpoint="", backend: str = "onnxruntime", seed: int = 0, threads: int = 1):
        super().__init__(robot)
        if not checkpoint:
            raise ValueError("trace_policy needs params.checkpoint (a checkpoint directory, or a list of them)")
        if isinstance(checkpoint, (list, tuple)):
            paths = [resolve_checkpoint(str(c), robot.path) for c in checkpoint]
            self.runner = (EnsembleRunner(paths, backend=backend, threads=threads) if len(paths) > 1
                           else PolicyRunner(paths[0], backend=backend, threads=threads))
            path = paths[0]
        else:
            path = resolve_checkpoint(str(checkpoint), robot.path)
            self.runner = PolicyRunner(path, backend=backend, threads=threads)
        cfg = self.runner.cfg
        self.cfg = cfg
        cfg_file = path / "config.json"
        want_iface = "ee_delta" if robot.command_interface == "ee_delta" else "joint"
        if cfg.interface != want_iface:
            raise ExpertCheckpointError(cfg_file, "policy.interface",
                                        f"checkpoint commands {cfg.interface!r} but {robot.path} uses {robot.command_interface!r}")
        if list(cfg.joint_names) != list(robot.joint_names):
            raise ExpertCheckpointError(cfg_file, "policy.joint_names",
                                        f"checkpoint joints {list(cfg.joint_names)} do not match {robot.path} joints.names "
                                        f"{list(robot.joint_names)}")
        if abs(cfg.control_dt - robot.control_dt) > 1e-9:
            raise ExpertCheckpointError(cfg_file, "policy.control_dt",
                                        f"checkpoint ticks every {cfg.control_dt} s but {robot.path} control.rate_hz gives "
                                        f"{robot.control_dt} s")
        if cfg.use_traces and cfg.gripper_query and cfg.gripper_depth != robot.gripper_depth:
            raise ExpertCheckpointError(cfg_file, "policy.gripper_depth",
                                        f"checkpoint was trained on gripper queries with gripper_point.depth "
                                        f"{cfg.gripper_depth!r} but {robot.path} sets {robot.gripper_depth!r}")
        if cfg.use_traces and cfg.self_filter != robot.self_filter_mode:
            raise ExpertCheckpointError(cfg_file, "policy.self_filter",
                                        f"checkpoint was trained on queries selected with self_filter.mode "
                                        f"{cfg.self_filter!r} but {robot.path} sets {robot.self_filter_mode!r}")
        if cfg.use_traces and cfg.hold_occluded != robot.self_filter_hold_frames:
            raise ExpertCheckpointError(cfg_file, "policy.hold_occluded",
                                        f"checkpoint was trained on queries held {cfg.hold_occluded} frames under the "
                                        f"robot but {robot.path} sets self_filter.hold_occluded_frames "
                                        f"{robot.self_filter_hold_frames}")
        if robot.chunk_horizon > cfg.horizon:
            raise ExpertCheckpointError(cfg_file, "policy.horizon",
                                        f"checkpoint predicts {cfg.horizon} ticks but {robot.path} control.chunk_horizon "
                                        f"asks for {robot.chunk_horizon}")
        self.kinematics = robot.build_kinematics()
        if self.kinematics is None:
            raise ValueError("trace_policy needs the arm's kinematics (robot config 'kinematics.source')")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._text_cache: dict = {}
        self._held_rotation = None         # action_space "ee": the hand orientation IK holds
        # load the sentence encoder now: loading it at the first act() would stall a control loop
        self.embed("")

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._held_rotation = None

    def embed(self, text: str) -> np.ndarray:
        if text not in self._text_cache:
            from mu0_policy.model.text import shared_embedder

            self._text_cache[text] = np.asarray(shared_embedder().embed([text])[0], np.float32)
        return self._text_cache[text]

    def inputs(self, obs: ExpertObservation):
        """(state, text, traces, mask, ee) for one observation, exactly as training builds them."""
        q = np.asarray(obs.joint_positions, float)
        ee = self.kinematics.ee_pose(q)[:3, 3]
        grip = -1.0 if obs.gripper_position is None else float(obs.gripper_position)
        qd = None
        if self.cfg.state_velocity:
            if obs.joint_velocities is None or not np.all(np.isfinite(obs.joint_velocities)):
                raise ValueError(f"{self.runner.path}: this expert needs the arm's joint velocities "
                                 "(policy.state_velocity) and /joint_states carries none")
            qd = np.asarray(obs.joint_velocities, float)
        state = state_features(ee, grip, q, qd)
        age_steps = (obs.stamp_ns - obs.trace_stamp_ns) * 1e-9 / obs.step_period
        traces, mask = trace_features(obs.traces_xyz, obs.validity, obs.entities, ee, age_steps,
                                      self.cfg.gripper_entities, self.cfg.trace_offsets, self.cfg.max_traces)
        return state, self.embed(obs.instruction or ""), traces, mask, ee

    def act(self, obs: ExpertObservation) -> ActionChunk:
        if list(obs.joint_names) != list(self.cfg.joint_names):
            raise ValueError(f"obs.joint_names {list(obs.joint_names)} != checkpoint joints {self.cfg.joint_names}")
        state, text, traces, mask, ee = self.inputs(obs)
        noise = None
        if self.cfg.head == "flow":
            noise = self._rng.standard_normal((1, self.cfg.horizon * self.cfg.action_dim)).astype(np.float32)
        y = self.runner.predict(state[None], text[None], traces[None], mask[None], noise)[0]
        T, dt = self.robot.chunk_horizon, self.robot.control_dt
        y = y[:T]
        info = {"ee_position": ee, "traces_used": int(mask.sum()), "use_traces": self.cfg.use_traces}
        want = self.cfg.trace_model_id
        if self.cfg.use_traces and want and obs.trace_model_id and obs.trace_model_id != want:
            info["trace_model_mismatch"] = (
                f"traces come from μ_0 {obs.trace_model_id!r} but the expert checkpoint {self.runner.path} was "
                f"trained on traces of {want!r}: retrain it on the new model's traces (mu0 train-expert --model)")
        if self.cfg.interface == "ee_delta":
            out = y.copy()
            out[:, 3] = np.clip(out[:, 3], -1.0, 1.0)
            return ActionChunk(None, dt, ee_deltas=out, info=info)
        q = np.asarray(obs.joint_positions, float)
        grip = np.clip(y[:, -1], -1.0, 1.0)
        if self.cfg.action_space == "ee":
            targets, worst = self.ee_offsets_to_joints(q, ee + y[:, :3])
            info.update(ee_targets=ee + y[:, :3], ik_max_position_error=worst)
            return ActionChunk(targets, dt, gripper=grip, info=info)
        return ActionChunk(q[None, :] + y[:, :-1], dt, gripper=grip, info=info)

    def ee_offsets_to_joints(self, q_now: np.ndarray, ee_targets: np.ndarray) -> tuple[np.ndarray, float]:
        """Joint targets (T, J) reaching `ee_targets` (T, 3) in turn, each IK warm-started from the
        previous tick's solution, the hand held at the orientation the demonstrations held
        (checkpoint `ee_rotation`; else the one it had when the episode began: holding the current
        one would let contact torques turn it a little more at every plan). A few damped
        least-squares iterations per tick: the targets move a few cm per tick, so warm-started IK
        lands within a millimetre except next to a joint limit, where it catches up over the
        following ticks. Returns the targets and the worst IK position error (m)."""
        chain = self.kinematics.chain
        if self._held_rotation is None:
            self._held_rotation = (np.asarray(self.cfg.ee_rotation, float) if self.cfg.ee_rotation
                                   else self.kinematics.ee_pose(q_now)[:3, :3].copy())
        qc = self.kinematics.chain_q(q_now)
        rows, worst = [], 0.0
        for tgt in ee_targets:
            r = chain.ik(tgt, qc, target_rotation=self._held_rotation, orientation_weight=0.3, max_iterations=5,
                         position_tolerance=5e-4, orientation_tolerance=1e-2)
            qc = r.joint_positions
            worst = max(worst, r.position_error)
            rows.append(self.kinematics.with_chain_q(q_now, qc))
        return np.array(rows), worst
