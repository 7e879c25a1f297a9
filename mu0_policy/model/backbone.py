"""Backbones: image (+ depth) + instruction -> context tokens and a local feature map.

`Backbone.forward(image, depth, text_emb, input_ids, attention_mask)` returns a
`BackboneOutput`: `tokens (B, L, C)` the trace expert cross-attends to, `token_mask (B, L)`
(True = real token), and `feature_map (B, C, h, w)` that query tokens sample bilinearly at
their keypoint. The backbone runs ONCE per prediction; the flow loop reuses its output (and
the expert's cross-attention keys/values computed from it) for every Euler step and sample.

* `CompactBackbone`: a small conv stem + patch transformer trained with the model. Depth
  enters as extra channels (scaled metres + validity), the instruction as one token from a
  frozen all-MiniLM-L6-v2 sentence embedding (computed outside the graph, cached per string).
* `VLMBackbone`: a Hugging Face Idefics3 / SmolVLM2 model from a local directory, text layers
  truncated to the first K, frozen. Its hidden states after layer K are the context tokens;
  the image-token positions reshaped to their patch grid are the feature map.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mu0_policy.model.config import Mu0Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTH_SCALE_M = 2.0  # depth channel = metres / 2: table-top scenes sit in ~0.3..2 m


@dataclass
class BackboneOutput:
    tokens: torch.Tensor        # (B, L, C)
    token_mask: torch.Tensor    # (B, L) bool
    feature_map: torch.Tensor   # (B, C, h, w)
    layer_tokens: list | None = None  # per backbone layer (B, L, C); the expert's cross blocks read
                                      # the layer matching their depth (the VLM variant)


class Backbone(nn.Module):
    out_dim: int
    needs_text_embedding: bool = False
    needs_input_ids: bool = False

    def forward(self, image, depth, text_emb=None, input_ids=None, attention_mask=None) -> BackboneOutput:
        raise NotImplementedError


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 3.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CompactBackbone(Backbone):
    """Conv stem (stride 8) over RGB + depth channels, a few transformer layers, a text token."""

    needs_text_embedding = True

    def __init__(self, cfg: Mu0Config):
        super().__init__()
        c = cfg.vision_dim
        self.out_dim = c
        self.grid = (cfg.image_height // 8, cfg.image_width // 8)
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # 5 input channels: RGB, depth / 2 m, depth-valid flag
        self.stem = nn.Sequential(
            nn.Conv2d(5, c // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 2, stride=2),
        )
        self.pos = nn.Parameter(torch.randn(1, c, *self.grid) * 0.02)
        self.layers = nn.ModuleList([_EncoderLayer(c, cfg.vision_heads) for _ in range(cfg.vision_layers)])
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, c), nn.GELU(), nn.Linear(c, c))
        self.norm = nn.LayerNorm(c)

    def forward(self, image, depth, text_emb=None, input_ids=None, attention_mask=None) -> BackboneOutput:
        if text_emb is None:
            raise ValueError("text_emb: the compact backbone needs the instruction's sentence embedding")
        rgb = (image - self.rgb_mean) / self.rgb_std
        valid = torch.isfinite(depth) & (depth > 0)
        d = torch.where(valid, depth, torch.zeros_like(depth)) / DEPTH_SCALE_M
        x = self.stem(torch.cat([rgb, d, valid.to(rgb.dtype)], dim=1)) + self.pos
        b, c, h, w = x.shape
        text = self.text_proj(text_emb)[:, None, :]
        tokens = torch.cat([text, x.flatten(2).transpose(1, 2)], dim=1)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        fmap = tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return BackboneOutput(tokens, mask, fmap)


class VLMBackbone(Backbone):
    """Frozen Idefics3 / SmolVLM2 from a local directory, text stack cut to the first K layers.

    Images are resized (no tiling) to the vision tower's size and normalised with mean = std
    = 0.5 (the SigLIP convention these models use); the prompt is the image tokens followed by
    the instruction tokens. Depth is not fed to the VLM here: it reaches the expert through the
    query tokens (depth at each keypoint).
    """

    needs_input_ids = True

    def __init__(self, cfg: Mu0Config, model_dir: str | Path | None = None, hf_model=None):
        super().__init__()
        from transformers import AutoConfig, Idefics3Model

        path = Path(model_dir or cfg.vlm_path)
        if hf_model is not None:  # an in-memory model (benchmarks build a full-size one from a config)
            hf_cfg = hf_model.config
            del hf_model.text_model.layers[cfg.vlm_num_layers:]
            hf_cfg.text_config.num_hidden_layers = len(hf_model.text_model.layers)
            self.vlm = hf_model
        else:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"VLM directory {path}: config.json missing (Mu0Config.vlm_path)")
            hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
            keep = min(cfg.vlm_num_layers, hf_cfg.text_config.num_hidden_layers)
            hf_cfg.text_config.num_hidden_layers = keep     # layers beyond K are never built nor loaded
            self.vlm = Idefics3Model.from_pretrained(str(path), config=hf_cfg, local_files_only=True)
        self.vlm.requires_grad_(False).eval()
        self.out_dim = hf_cfg.text_config.hidden_size
        self.image_token_id = hf_cfg.image_token_id
        self.image_size = hf_cfg.vision_config.image_size
        patches = self.image_size // hf_cfg.vision_config.patch_size
        self.grid = patches // hf_cfg.scale_factor
        self.num_image_tokens = self.grid * self.grid
        self.model_dir = path

    def train(self, mode: bool = True):
        super().train(mode)
        self.vlm.eval()  # frozen: no dropout
        return self

    def build_prompt_ids(self, tokenizer, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids `[image tokens..., instruction tokens...]`, right-padded, and the mask."""
        rows = [[self.image_token_id] * self.num_image_tokens
                + tokenizer(t, add_special_tokens=False)["input_ids"] for t in instructions]
        length = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    @torch.no_grad()
    def forward(self, image, depth, text_emb=None, input_ids=None, attention_mask=None) -> BackboneOutput:
        if input_ids is None or attention_mask is None:
            raise ValueError("input_ids: the VLM backbone needs prompt token ids (build_prompt_ids)")
        dtype = next(self.vlm.parameters()).dtype
        pix = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        pix = ((pix - 0.5) / 0.5).to(dtype)[:, None]                       # (B, 1 image, 3, S, S)
        out = self.vlm(input_ids=input_ids, attention_mask=attention_mask.long(), pixel_values=pix,
                       use_cache=False, output_hidden_states=True)
        hidden = out.last_hidden_state.float()                             # after K layers (+ norm)
        b, _, c = hidden.shape
        is_img = input_ids == self.image_token_id
        img_tokens = hidden[is_img].reshape(b, self.num_image_tokens, c)
        fmap = img_tokens.transpose(1, 2).reshape(b, c, self.grid, self.grid)
        # hidden_states[i + 1] = output of text layer i (the last one carries the final norm)
        layers = [h.float() for h in out.hidden_states[1:-1]] + [hidden]
        return BackboneOutput(hidden, attention_mask.bool(), fmap, layers)


def build_backbone(cfg: Mu0Config) -> Backbone:
    if cfg.backbone == "compact":
        return CompactBackbone(cfg)
    return VLMBackbone(cfg)
