"""Query tokens and the trace expert (flow-matching velocity field over control points).

Query token (per keypoint, set-structured): MLP(concat(Fourier(u, v) with log-spaced
frequencies 2^k * pi, local backbone feature sampled bilinearly at (u, v), depth at the point,
history embedding)). It is computed once per prediction; each flow step adds the embedding of
the noisy control points (grouped `points_per_token` to a token) and a group embedding.

Expert: blocks alternate cross-attention to the backbone tokens (even blocks) and
self-attention over all query tokens (odd blocks), each followed by an MLP; the flow time
enters every block through adaLN-Zero (shift/scale/gate regressed from the time embedding,
zero-initialised so each block starts as the identity). No positional signal distinguishes
queries, so the expert is permutation-equivariant over them; padded queries are masked out of
self-attention. Cross-attention keys/values depend only on the backbone output, so
`ExpertContext` computes them once and every Euler step (and every sample) reuses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mu0_policy.model.config import Mu0Config


def fourier_uv(uv: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """(..., 2) in [-1, 1] -> (..., 4 * num_freqs): sin/cos at 2^k * pi, k = 0..num_freqs-1."""
    freqs = (2.0 ** torch.arange(num_freqs, device=uv.device, dtype=uv.dtype)) * math.pi
    ang = uv[..., None] * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)


def timestep_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    """(B,) flow time in [0, 1] -> (B, dim) sinusoidal features with log-spaced periods."""
    frac = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** frac
    ang = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1).to(t.dtype)


def sample_features(fmap: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear sample (B, C, h, w) at normalised uv (B, N, 2) -> (B, N, C).

    With align_corners=False grid_sample's -1/+1 are the outer image edges: exactly our
    normalised image coordinates, whatever the feature grid's resolution.
    """
    out = F.grid_sample(fmap, uv[:, None].to(fmap.dtype), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[:, :, 0].transpose(1, 2)


class QueryEncoder(nn.Module):
    def __init__(self, cfg: Mu0Config, feat_dim: int):
        super().__init__()
        e = cfg.expert_dim
        self.cfg = cfg
        in_dim = 4 * cfg.fourier_freqs + feat_dim + 3 + cfg.history * 4
        self.feat_norm = nn.LayerNorm(feat_dim)
        self.static = nn.Sequential(nn.Linear(in_dim, e), nn.GELU(), nn.Linear(e, e))
        self.point_in = nn.Linear(cfg.points_per_token * 3, e)
        self.group_emb = nn.Parameter(torch.randn(cfg.tokens_per_query, e) * 0.02)

    def static_tokens(self, query_uvz, query_mask, history_rel, history_valid, fmap) -> torch.Tensor:
        """(B, N, E) per-query embedding, independent of the flow state."""
        uv = query_uvz[..., :2]
        z = query_uvz[..., 2:3]
        z_ok = torch.isfinite(z) & (z > 0)
        z = torch.where(z_ok, z, torch.zeros_like(z))
        depth_feat = torch.cat([z / 2.0, torch.log(z.clamp_min(0.05)), z_ok.to(z.dtype)], dim=-1)
        hv = history_valid.to(history_rel.dtype)
        hist = torch.where(history_valid[..., None], history_rel, torch.zeros_like(history_rel)).clamp(-5, 5)
        local = self.feat_norm(sample_features(fmap, uv))
        feats = torch.cat([fourier_uv(uv, self.cfg.fourier_freqs), local, depth_feat,
                           hist.flatten(-2), hv], dim=-1)
        return self.static(feats) * query_mask[..., None].to(feats.dtype)

    def flow_tokens(self, static, x_t) -> torch.Tensor:
        """static (B, N, E) + noisy points (B, N, P, 3) -> (B, N * G, E)."""
        b, n, p, _ = x_t.shape
        g = self.cfg.tokens_per_query
        pts = self.point_in(x_t.reshape(b, n, g, (p // g) * 3))
        return (static[:, :, None] + pts + self.group_emb).reshape(b, n * g, -1)


class ExpertBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ctx_dim: int, cross: bool, mlp_ratio: float):
        super().__init__()
        self.cross, self.heads, self.dim = cross, heads, dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.q = nn.Linear(dim, dim)
        if cross:
            self.ctx_norm = nn.LayerNorm(ctx_dim)
            self.kv = nn.Linear(ctx_dim, 2 * dim)
        else:
            self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)   # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def _split_heads(self, x):
        b, l, _ = x.shape
        return x.view(b, l, self.heads, self.dim // self.heads).transpose(1, 2)

    def context_kv(self, ctx: torch.Tensor):
        k, v = self.kv(self.ctx_norm(ctx)).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def forward(self, x, t_emb, attn_mask, kv=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(t_emb)[:, None].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q = self._split_heads(self.q(h))
        if self.cross:
            k, v = kv
        else:
            k, v = (self._split_heads(y) for y in self.kv(h).chunk(2, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        a = a.transpose(1, 2).reshape(x.shape)
        x = x + gate1 * self.out(a)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


@dataclass
class ExpertContext:
    """Everything a flow step needs that does not change between steps."""
    cross_kv: list          # per cross block: (k, v) each (B, heads, L, dh)
    ctx_mask: torch.Tensor  # (B, 1, 1, L) bool
    self_mask: torch.Tensor  # (B, 1, 1, N*G) bool
    static: torch.Tensor    # (B, N, E)

    def repeat(self, k: int) -> "ExpertContext":
        """The same context for k samples per batch element (batch becomes B * k)."""
        def rep(x):  # (B, ...) -> (B * k, ...), each element k times in a row
            return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).reshape(-1, *x.shape[1:])
        return ExpertContext([(rep(a), rep(b)) for a, b in self.cross_kv], rep(self.ctx_mask),
                             rep(self.self_mask), rep(self.static))


class TraceExpert(nn.Module):
    def __init__(self, cfg: Mu0Config, ctx_dim: int):
        super().__init__()
        e = cfg.expert_dim
        self.cfg = cfg
        self.query = QueryEncoder(cfg, ctx_dim)
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.blocks = nn.ModuleList(
            [ExpertBlock(e, cfg.expert_heads, ctx_dim, cross=(i % 2 == 0), mlp_ratio=cfg.mlp_ratio)
             for i in range(cfg.expert_layers)])
        self.final_norm = nn.LayerNorm(e, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(e, 2 * e))
        nn.init.zeros_(self.final_ada[1].weight)
        nn.init.zeros_(self.final_ada[1].bias)
        self.velocity_out = nn.Linear(e, cfg.points_per_token * 3)
        self.validity_norm = nn.LayerNorm(e)
        self.validity_out = nn.Linear(e, cfg.horizon + 1)

    def build_context(self, backbone_out, query_uvz, query_mask, history_rel, history_valid) -> ExpertContext:
        layers = backbone_out.layer_tokens
        if layers:
            # like the authors' SmolVLA-style expert: expert block i reads the backbone layer at
            # the same relative depth (the expert has as many or fewer layers than the VLM)
            n_exp, n_bb = len(self.blocks), len(layers)
            cross_kv = [blk.context_kv(layers[min(n_bb - 1, (i * n_bb) // n_exp)])
                        for i, blk in enumerate(self.blocks) if blk.cross]
        else:
            cross_kv = [blk.context_kv(backbone_out.tokens) for blk in self.blocks if blk.cross]
        ctx_mask = backbone_out.token_mask[:, None, None, :]
        g = self.cfg.tokens_per_query
        self_mask = query_mask.repeat_interleave(g, dim=1)[:, None, None, :]
        static = self.query.static_tokens(query_uvz, query_mask, history_rel, history_valid,
                                          backbone_out.feature_map)
        return ExpertContext(cross_kv, ctx_mask, self_mask, static)

    def forward(self, ctx: ExpertContext, x_t: torch.Tensor, t: torch.Tensor):
        """x_t (B, N, P, 3), t (B,) -> velocity (B, N, P, 3), validity logits (B, N, H+1)."""
        b, n, p, _ = x_t.shape
        x = self.query.flow_tokens(ctx.static, x_t)
        t_emb = self.time_mlp(timestep_embedding(t, self.cfg.expert_dim).to(x.dtype))
        cross = iter(ctx.cross_kv)
        for blk in self.blocks:
            if blk.cross:
                x = blk(x, t_emb, ctx.ctx_mask, next(cross))
            else:
                x = blk(x, t_emb, ctx.self_mask)
        shift, scale = self.final_ada(t_emb)[:, None].chunk(2, dim=-1)
        h = self.final_norm(x) * (1 + scale) + shift
        v = self.velocity_out(h).reshape(b, n, p, 3)
        per_query = h.reshape(b, n, self.cfg.tokens_per_query, -1).mean(2)
        validity = self.validity_out(self.validity_norm(per_query))
        return v, validity
