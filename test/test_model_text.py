"""Instruction embeddings: the real pretrained all-MiniLM-L6-v2 loaded offline from its wheel."""
import numpy as np
import pytest

from mu0_policy.model.text import EMBED_DIM, SentenceEmbedder, minilm_model_dir


def test_minilm_embeddings_are_semantic_unit_vectors_and_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (minilm_model_dir() / "model.safetensors").is_file()
    emb = SentenceEmbedder()
    texts = ["push the red block to the left", "shove the red cube leftwards", "open the top drawer"]
    e = emb.embed(texts)
    assert e.shape == (3, EMBED_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # paraphrases are closer than unrelated instructions (a random or hashed embedding would not be)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    again = emb.embed([texts[2], texts[0]])
    np.testing.assert_array_equal(again, e[[2, 0]])
    assert len(emb._cache) == 3
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        emb.embed(["ok", 3])
