"""μ_0 network behaviour: query tokens, trace expert, losses, sampler (tiny config, CPU)."""
import numpy as np
import pytest
import torch

from mu0_core.bspline import TraceNormalizer
from mu0_policy.model.config import Mu0Config, preset
from mu0_policy.model.trace_head import ExpertBlock, fourier_uv, sample_features
from mu0_policy.model.mu0 import ExportableSampler, Mu0Model

NORMALIZER = TraceNormalizer(scale=np.array([0.05, 0.05, 0.05])).to_dict()


def tiny(**kw):
    return preset("tiny", normalizer=NORMALIZER, **kw)


def make_batch(cfg, b=2, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_height, cfg.image_width
    q = torch.cat([torch.rand((b, n, 2), generator=g) * 1.6 - 0.8, 0.6 + 0.3 * torch.rand((b, n, 1), generator=g)], -1)
    steps = torch.arange(cfg.horizon + 1).float()[None, None, :, None]
    vel = (torch.rand((b, n, 1, 3), generator=g) - 0.5) * 0.004
    fut = q[:, :, None] + steps * vel
    hist = q[:, :, None] + torch.arange(-cfg.history, 0).float()[None, None, :, None] * vel
    norm = TraceNormalizer.from_dict(NORMALIZER)
    fv = torch.ones((b, n, cfg.horizon + 1), dtype=torch.bool)
    return {
        "image": torch.rand((b, 3, h, w), generator=g), "depth": 0.5 + torch.rand((b, 1, h, w), generator=g),
        "text_emb": torch.nn.functional.normalize(torch.randn((b, 384), generator=g), dim=-1),
        "query_uvz": q, "query_mask": torch.ones((b, n), dtype=torch.bool),
        "history_uvz": hist, "history_valid": torch.ones((b, n, cfg.history), dtype=torch.bool),
        "future_uvz": fut, "future_valid": fv,
        "ctrl_norm": torch.from_numpy(norm.encode(fut.numpy(), fv.numpy())),
        "ctrl_valid": torch.ones((b, n), dtype=torch.bool),
        "entity_id": torch.zeros((b, n), dtype=torch.long),
    }


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="backbone"):
        Mu0Config(backbone="resnet")
    with pytest.raises(ValueError, match="ctrl_per_token"):
        Mu0Config(ctrl_per_token=3)
    with pytest.raises(ValueError, match="num_ctrl"):
        Mu0Config(num_ctrl=5, ctrl_per_token=5)
    with pytest.raises(ValueError, match="vlm_path"):
        preset("full")
    with pytest.raises(ValueError, match="unknown field"):
        Mu0Config.from_dict({"expert_width": 3})
    cfg = tiny(expert_layers=3)
    assert Mu0Config.from_dict(cfg.to_dict()) == cfg


def test_fourier_features_use_log_spaced_frequencies():
    uv = torch.tensor([[0.25, -0.5]])
    f = fourier_uv(uv, 8)
    assert f.shape == (1, 32)
    # u channel, frequency k=2 -> sin(0.25 * 4 * pi) = sin(pi) ~ 0 ; cos -> -1
    assert abs(float(f[0, 2])) < 1e-5 and abs(float(f[0, 8 + 2]) + 1.0) < 1e-5


def test_bilinear_sampling_hits_the_pixel_under_normalised_uv():
    fmap = torch.arange(12.0).view(1, 1, 3, 4)
    # centre of pixel (u=2, v=1): u_n = 2*(2+0.5)/4-1 = 0.25, v_n = 2*(1+0.5)/3-1 = 0
    out = sample_features(fmap, torch.tensor([[[0.25, 0.0]]]))
    assert float(out[0, 0, 0]) == pytest.approx(6.0)


def test_adaln_zero_blocks_start_as_identity():
    blk = ExpertBlock(16, 2, ctx_dim=8, cross=False, mlp_ratio=2.0)
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    assert torch.equal(blk(x, torch.randn(2, 16), mask), x)


def test_expert_is_permutation_equivariant_over_queries_and_ignores_padding():
    torch.manual_seed(0)
    cfg = tiny()
    model = Mu0Model(cfg).eval()
    for p in model.parameters():  # adaLN-Zero makes a fresh expert trivially equivariant; perturb it
        p.data.add_(torch.randn_like(p) * 0.05)
    batch = make_batch(cfg, b=1, n=6)
    noise = torch.randn(1, 2, 6, cfg.num_points, 3)
    args = [batch[k] for k in ("image", "depth", "text_emb", "query_uvz", "query_mask", "history_uvz", "history_valid")]
    sampler = ExportableSampler(model)
    with torch.no_grad():
        pts, logits = sampler(*args, noise)
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        pargs = list(args)
        for i in (3, 4, 5, 6):
            pargs[i] = args[i][:, perm]
        ppts, plogits = sampler(*pargs, noise[:, :, perm])
        assert torch.allclose(ppts, pts[:, :, perm], atol=1e-5)
        assert torch.allclose(plogits, logits[:, :, perm], atol=1e-5)
        # a padded extra query (garbage values) changes nothing for the real ones
        padded = list(args)
        padded[3] = torch.cat([args[3], torch.full((1, 1, 3), 7.0)], 1)
        padded[4] = torch.cat([args[4], torch.zeros((1, 1), dtype=torch.bool)], 1)
        padded[5] = torch.cat([args[5], torch.full((1, 1, cfg.history, 3), 3.0)], 1)
        padded[6] = torch.cat([args[6], torch.ones((1, 1, cfg.history), dtype=torch.bool)], 1)
        xpts, _ = sampler(*padded, torch.cat([noise, torch.randn(1, 2, 1, cfg.num_points, 3)], 2))
        assert torch.allclose(xpts[:, :, :6], pts, atol=1e-5)
        # different queries do interact (self-attention over the set)
        other = list(args)
        other[3] = args[3].clone()
        other[3][0, 0, :2] += 0.5
        opts, _ = sampler(*other, noise)
        assert not torch.allclose(opts[:, :, 1:], pts[:, :, 1:], atol=1e-6)


def test_context_reuse_matches_recomputing_the_backbone_every_step():
    torch.manual_seed(1)
    cfg = tiny()
    model = Mu0Model(cfg).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    b = make_batch(cfg, b=2, n=4)
    noise = torch.randn(2, 3, 4, cfg.num_points, 3)
    with torch.no_grad():
        ctx = model.encode(b["image"], b["depth"], b["query_uvz"], b["query_mask"], b["history_uvz"],
                           b["history_valid"], text_emb=b["text_emb"])
        pts, _ = model.sample_from_context(ctx, noise)
        # reference: per sample k, a fresh backbone pass and a manual Euler loop
        for k in range(3):
            x = noise[:, k]
            for i in range(cfg.num_flow_steps):
                c = model.encode(b["image"], b["depth"], b["query_uvz"], b["query_mask"], b["history_uvz"],
                                 b["history_valid"], text_emb=b["text_emb"])
                tau = torch.full((2,), 1.0 - i / cfg.num_flow_steps)
                v, _ = model.expert(c, x, tau)
                x = x - v / cfg.num_flow_steps
            x[:, :, 0] = 0.0   # control point 0 is the anchor
            assert torch.allclose(pts[:, k], x, atol=1e-5)


def test_training_reduces_the_flow_loss_and_uses_every_term():
    torch.manual_seed(0)
    cfg = tiny()
    model = Mu0Model(cfg)
    batch = make_batch(cfg, b=4, n=6)
    batch["entity_id"] = torch.tensor([[0, 0, 0, 1, 1, -1]] * 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for step in range(60):
        loss, info = model.loss(batch, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or info
    assert set(info) == {"loss", "flow", "validity", "rigidity"}
    assert info["validity"] < first["validity"] * 0.5
    # the flow loss is noisy per step; compare averages over fixed noise
    with torch.no_grad():
        g1 = torch.Generator().manual_seed(5)
        late = np.mean([model.loss(batch, generator=g1)[1]["flow"] for _ in range(10)])
        fresh = Mu0Model(cfg)
        g2 = torch.Generator().manual_seed(5)
        early = np.mean([fresh.loss(batch, generator=g2)[1]["flow"] for _ in range(10)])
    assert late < 0.7 * early


def test_rigidity_loss_is_zero_for_rigid_motion_and_positive_for_deformation():
    base = torch.randn(1, 3, 1, 3)
    t = torch.linspace(0, 1, 10)[None, None, :, None]
    rigid = base + t * torch.tensor([0.3, -0.2, 0.1])           # all points translate together
    ent = torch.tensor([[4, 4, 4]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert float(Mu0Model.rigidity_loss(rigid, ent, valid)) < 1e-10
    stretched = rigid.clone()
    stretched[0, 0] = base[0, 0] + t[0, 0] * torch.tensor([2.0, 0.0, 0.0])
    assert float(Mu0Model.rigidity_loss(stretched, ent, valid)) > 1e-3
    # different entities: no constraint between them
    assert float(Mu0Model.rigidity_loss(stretched, torch.tensor([[1, 2, 3]]), valid)) == 0.0


def test_raw_waypoint_variant_targets_are_the_normalised_future():
    cfg = tiny(use_bspline=False)
    assert cfg.num_points == cfg.horizon
    model = Mu0Model(cfg)
    batch = make_batch(cfg, b=1, n=3)
    target, mask = model.targets(batch)
    assert target.shape == (1, 3, cfg.horizon, 3) and bool(mask.all())
    want = (batch["future_uvz"][:, :, 1:] - batch["query_uvz"][:, :, None]) / model.point_scale
    assert torch.allclose(target, want.clamp(-1.5, 1.5), atol=1e-6)
    samples, ctrl = model.points_to_samples(target, batch["query_uvz"])
    assert torch.allclose(samples[..., 1:, :], batch["future_uvz"][:, :, 1:], atol=1e-5)
    loss, _ = model.loss(batch)
    loss.backward()


def test_bspline_decode_of_targets_reproduces_the_trace():
    cfg = tiny()
    model = Mu0Model(cfg)
    batch = make_batch(cfg, b=1, n=3)
    samples, ctrl = model.points_to_samples(batch["ctrl_norm"], batch["query_uvz"])
    assert samples.shape == (1, 3, cfg.horizon + 1, 3) and ctrl.shape == (1, 3, 10, 3)
    assert torch.allclose(samples, batch["future_uvz"], atol=2e-3)   # linear traces fit (ridge) closely
