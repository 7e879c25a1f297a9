"""The μ_0 network: backbone + trace expert, the flow-matching objective and the Euler sampler.

Flow convention (the authors'): P_tau = tau * eps + (1 - tau) * P*, the expert predicts the
velocity eps - P*, and sampling integrates from tau = 1 (noise) to tau = 0 with N Euler steps.
P* are the normalised, anchor-relative control points (`TraceNormalizer`: samples =
anchor + basis @ P * scale). With `use_bspline=False` (the paper's ablation) P* are the H raw
future waypoints in the same normalised space.

Losses: flow MSE over control points of queries with >= D valid future steps; BCE of the
per-step validity logits against `future_valid` (weight 0.5); rigidity = variance over the
control-point axis of pairwise distances between predicted clean control points of queries in
the same entity cluster (weight 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mu0_core.bspline import TraceNormalizer, basis_matrix
from mu0_policy.model.backbone import build_backbone
from mu0_policy.model.config import Mu0Config
from mu0_policy.model.trace_head import ExpertContext, TraceExpert

HISTORY_CLIP = 5.0


class Mu0Model(nn.Module):
    def __init__(self, cfg: Mu0Config, backbone=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_backbone(cfg)
        self.expert = TraceExpert(cfg, self.backbone.out_dim)
        scale = TraceNormalizer.from_dict(cfg.normalizer).scale if cfg.normalizer else [1.0, 1.0, 1.0]
        self.register_buffer("point_scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        basis = basis_matrix(cfg.num_ctrl, cfg.horizon, cfg.degree)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32), persistent=False)
        anchor_free = torch.ones(cfg.num_points, 1)
        anchor_free[0] = 0.0 if cfg.use_bspline else 1.0
        self.register_buffer("anchor_free", anchor_free, persistent=False)

    # --- inputs --------------------------------------------------------------------------
    def relative_history(self, history_uvz, query_uvz):
        """History in the normalised, anchor-relative space of the targets."""
        rel = (history_uvz - query_uvz[:, :, None, :]) / self.point_scale
        return torch.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0).clamp(-HISTORY_CLIP, HISTORY_CLIP)

    def encode(self, image, depth, query_uvz, query_mask, history_uvz, history_valid,
               text_emb=None, input_ids=None, attention_mask=None) -> ExpertContext:
        """Run the backbone once and build everything the flow steps reuse."""
        out = self.backbone(image, depth, text_emb=text_emb, input_ids=input_ids, attention_mask=attention_mask)
        hist = self.relative_history(history_uvz, query_uvz)
        history_valid = history_valid & query_mask[..., None]
        return self.expert.build_context(out, query_uvz, query_mask, hist, history_valid)

    # --- training ------------------------------------------------------------------------
    def targets(self, batch):
        """(P*, per-point loss mask): control points, or raw waypoints in the ablation."""
        qmask = batch["query_mask"]
        if self.cfg.use_bspline:
            mask = (batch["ctrl_valid"] & qmask)[..., None].expand(-1, -1, self.cfg.num_ctrl)
            return batch["ctrl_norm"], mask
        fut = batch["future_uvz"][:, :, 1:]
        rel = (fut - batch["query_uvz"][:, :, None, :]) / self.point_scale
        valid = batch["future_valid"][:, :, 1:] & qmask[..., None] & torch.isfinite(rel).all(-1)
        rel = torch.where(valid[..., None], torch.nan_to_num(rel), torch.zeros_like(rel))
        return rel.clamp(-1.5, 1.5), valid

    def forward(self, batch):
        """Training forward = the loss (so DistributedDataParallel wraps it unchanged)."""
        return self.loss(batch)

    def loss(self, batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        target, point_mask = self.targets(batch)
        b = target.shape[0]
        dev = target.device
        ctx = self.encode(batch["image"], batch["depth"], batch["query_uvz"], batch["query_mask"],
                          batch["history_uvz"], batch["history_valid"], text_emb=batch.get("text_emb"),
                          input_ids=batch.get("input_ids"), attention_mask=batch.get("attention_mask"))
        noise = torch.randn(target.shape, device=dev, generator=generator)
        beta = torch.distributions.Beta(torch.tensor(cfg.time_beta_alpha), torch.tensor(cfg.time_beta_beta))
        tau = (beta.sample((b,)).to(dev) * 0.999 + 0.001)
        t4 = tau[:, None, None, None]
        x_t = t4 * noise + (1 - t4) * target
        v, validity_logits = self.expert(ctx, x_t, tau)
        m = point_mask[..., None].to(v.dtype)
        fm = ((v - (noise - target)) ** 2 * m).sum() / (m.sum() * 3).clamp_min(1.0)

        qmask = batch["query_mask"]
        vmask = qmask[..., None].expand_as(validity_logits).to(v.dtype)
        bce = F.binary_cross_entropy_with_logits(validity_logits, batch["future_valid"].to(v.dtype),
                                                 reduction="none")
        validity_loss = (bce * vmask).sum() / vmask.sum().clamp_min(1.0)

        clean = x_t - t4 * v
        rigidity = self.rigidity_loss(clean, batch.get("entity_id"), point_mask.all(-1) & qmask)
        total = fm + cfg.validity_weight * validity_loss + cfg.rigidity_weight * rigidity
        return total, {"loss": float(total.detach()), "flow": float(fm.detach()),
                       "validity": float(validity_loss.detach()), "rigidity": float(rigidity.detach())}

    @staticmethod
    def rigidity_loss(clean, entity_id, valid):
        """Mean over same-entity pairs of the variance (over control points) of their distance."""
        if entity_id is None:
            return clean.new_zeros(())
        same = (entity_id[:, :, None] == entity_id[:, None, :]) & (entity_id[:, :, None] >= 0)
        pair = same & valid[:, :, None] & valid[:, None, :]
        pair = torch.triu(pair, diagonal=1)
        if not bool(pair.any()):
            return clean.new_zeros(())
        # distances only for the selected pairs: (num_pairs, P)
        bi, i, j = pair.nonzero(as_tuple=True)
        dist = (clean[bi, i] - clean[bi, j]).norm(dim=-1)
        return dist.var(dim=-1, unbiased=False).mean()

    # --- sampling ------------------------------------------------------------------------
    def sample_from_context(self, ctx: ExpertContext, noise: torch.Tensor, num_steps: int | None = None):
        """noise (B, K, N, P, 3) -> clean points (B, K, N, P, 3), validity logits (B, K, N, H+1)."""
        b, k, n, p, c = noise.shape
        steps = num_steps or self.cfg.num_flow_steps
        ctx = ctx.repeat(k)
        x = noise.reshape(b * k, n, p, c)
        dt = 1.0 / steps
        logits = None
        for i in range(steps):
            tau = torch.full((b * k,), 1.0 - i * dt, dtype=x.dtype, device=x.device)
            v, logits = self.expert(ctx, x, tau)
            x = x - dt * v
        if self.cfg.use_bspline:
            # control point 0 IS the anchor (targets pin it to 0): make the trace start at the query
            x = x * self.anchor_free
        return x.reshape(b, k, n, p, c), logits.reshape(b, k, n, -1)

    def points_to_samples(self, points, query_uvz):
        """Normalised points (..., N, P, 3) -> absolute samples (..., N, H+1, 3) and ctrl (..., N, D, 3)."""
        anchor = query_uvz[..., None, :]
        if self.cfg.use_bspline:
            ctrl_abs = points * self.point_scale + anchor
            samples = torch.matmul(self.basis, points) * self.point_scale + anchor
            return samples, ctrl_abs
        way = points * self.point_scale + anchor
        samples = torch.cat([anchor, way], dim=-2)
        # raw mode has no spline; report the ridge fit's natural stand-in: waypoints at the
        # control points' Greville-like positions (evenly spaced samples)
        idx = torch.linspace(0, self.cfg.horizon, self.cfg.num_ctrl, device=points.device).round().long()
        return samples, samples[..., idx, :]


class ExportableSampler(nn.Module):
    """The whole prediction as one graph (compact backbone): for ONNX export and the torch backend.

    Inputs: image (B, 3, h, w) in [0, 1]; depth (B, 1, h, w) metres with NaN holes; text_emb
    (B, 384); query_uvz (B, N, 3); query_mask (B, N) bool; history_uvz (B, N, h, 3);
    history_valid (B, N, h) bool; noise (B, K, N, P, 3).
    Outputs: points (B, K, N, P, 3) normalised; validity logits (B, K, N, H+1).
    """

    def __init__(self, model: Mu0Model, num_steps: int | None = None):
        super().__init__()
        self.model = model
        self.num_steps = num_steps or model.cfg.num_flow_steps

    def forward(self, image, depth, text_emb, query_uvz, query_mask, history_uvz, history_valid, noise):
        ctx = self.model.encode(image, depth, query_uvz, query_mask, history_uvz, history_valid, text_emb=text_emb)
        return self.model.sample_from_context(ctx, noise, self.num_steps)
