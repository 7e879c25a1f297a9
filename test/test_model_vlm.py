"""VLM backbone (Idefics3 / SmolVLM2 family) on a tiny randomly initialised model built from a
config and saved to a local directory (no hub), with a small word-level tokenizer."""
import json

import numpy as np
import pytest
import torch

from mu0_core.camera import CameraIntrinsics
from mu0_core.bspline import TraceNormalizer
from mu0_policy.inference import TraceRequest
from mu0_policy.predictors import make_predictor
from mu0_policy.model.backbone import VLMBackbone
from mu0_policy.model.checkpoint import save_checkpoint
from mu0_policy.model.config import preset
from mu0_policy.model.mu0 import Mu0Model

WORDS = ["[PAD]", "[UNK]", "push", "the", "block", "left", "open", "drawer", "red"]
IMAGE_TOKEN_ID = 60


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_idefics3")
    cfg = Idefics3Config(
        image_token_id=IMAGE_TOKEN_ID, scale_factor=2,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64, pad_token_id=0),
    )
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(cfg).save_pretrained(path)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    return path


def vlm_cfg(path, **kw):
    return preset("tiny", backbone="vlm", vlm_path=str(path), vlm_num_layers=2,
                  normalizer=TraceNormalizer(scale=np.array([0.05, 0.05, 0.05])).to_dict(), **kw)


def test_vlm_backbone_keeps_first_k_layers_frozen_and_matches_the_full_model(vlm_dir):
    from transformers import AutoTokenizer, Idefics3Model

    bb = VLMBackbone(vlm_cfg(vlm_dir))
    assert len(bb.vlm.text_model.layers) == 2
    assert not any(p.requires_grad for p in bb.vlm.parameters())
    tok = AutoTokenizer.from_pretrained(str(vlm_dir), local_files_only=True)
    ids, mask = bb.build_prompt_ids(tok, ["push the block left", "open drawer"])
    assert ids.shape[0] == 2 and int((ids[0] == IMAGE_TOKEN_ID).sum()) == bb.num_image_tokens == 4
    image = torch.rand(2, 3, 24, 32)
    out = bb(image, torch.ones(2, 1, 24, 32), input_ids=ids, attention_mask=mask)
    assert out.tokens.shape == (2, ids.shape[1], 32) and out.feature_map.shape == (2, 32, 2, 2)
    assert torch.equal(out.token_mask, mask)
    # reference: the untruncated model; its hidden state after layer K (+ final norm) is ours
    full = Idefics3Model.from_pretrained(str(vlm_dir)).eval()
    assert len(full.text_model.layers) == 3
    pix = (torch.nn.functional.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False) - 0.5) / 0.5
    with torch.no_grad():
        ref = full(input_ids=ids, attention_mask=mask.long(), pixel_values=pix[:, None], output_hidden_states=True)
        want = full.text_model.norm(ref.hidden_states[2])
    assert torch.allclose(out.tokens[mask], want[mask], atol=1e-4)
    assert not torch.allclose(out.tokens[mask], ref.last_hidden_state[mask], atol=1e-3)
    # per-layer tokens for the expert's cross blocks: layer 1's output, then the final (normed) one
    assert len(out.layer_tokens) == 2 and torch.equal(out.layer_tokens[-1], out.tokens)
    assert torch.allclose(out.layer_tokens[0][mask], ref.hidden_states[1][mask], atol=1e-4)


def test_mu0_with_vlm_backbone_trains_only_the_expert_and_round_trips(vlm_dir, tmp_path):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    cfg = vlm_cfg(vlm_dir)
    model = Mu0Model(cfg)
    tok = AutoTokenizer.from_pretrained(str(vlm_dir), local_files_only=True)
    ids, mask = model.backbone.build_prompt_ids(tok, ["push the block left"] * 2)
    b, n = 2, 5
    q = torch.cat([torch.rand(b, n, 2) - 0.5, torch.full((b, n, 1), 0.8)], -1)
    batch = {
        "image": torch.rand(b, 3, 32, 32), "depth": torch.full((b, 1, 32, 32), 0.8), "input_ids": ids,
        "attention_mask": mask, "query_uvz": q, "query_mask": torch.ones(b, n, dtype=torch.bool),
        "history_uvz": q[:, :, None].repeat(1, 1, 8, 1), "history_valid": torch.ones(b, n, 8, dtype=torch.bool),
        "future_valid": torch.ones(b, n, 33, dtype=torch.bool), "ctrl_norm": torch.randn(b, n, 10, 3) * 0.3,
        "ctrl_valid": torch.ones(b, n, dtype=torch.bool), "entity_id": torch.zeros(b, n, dtype=torch.long),
    }
    loss, _ = model.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())

    ckpt = save_checkpoint(tmp_path / "vlm_ckpt", model, cfg)
    from safetensors.numpy import load_file
    assert not any(k.startswith("backbone.vlm.") for k in load_file(str(ckpt / "model.safetensors")))
    assert json.loads((ckpt / "config.json").read_text())["model"]["vlm_path"] == str(vlm_dir)
    pred = make_predictor(ckpt)
    req = TraceRequest(np.zeros((24, 32, 3), np.uint8), np.full((24, 32), 0.8, np.float32),
                       CameraIntrinsics(32, 24, 30, 30, 15.5, 11.5), "open the red drawer",
                       np.array([[3.0, 4.0], [20.0, 10.0]]))
    (res,) = pred.predict([req], num_samples=2, seed=0)
    assert res.samples_uvz.shape == (2, 2, 33, 3) and np.all(np.isfinite(res.samples_uvz))
