"""Training-time choices of what the model sees (issue #15, the authors' rules).

- ``moving_query_subset``: a training sample keeps only its MOVING queries, a random subset of
  N ~ U[1, #moving] of them (the authors: static points never enter the loss, and the number of
  queries varies so the expert sees small and large query sets). Samples without a moving query
  are dropped from the batch.
- ``history_dropout``: the history is withheld for a whole sample with probability 0.5 and, in
  the other samples, for each query with probability 0.3 (the authors' rates), so the model
  learns the history-free setting the paper's headline evaluation uses.

Both act on a collated batch (torch tensors with a leading batch axis) and take a
``torch.Generator`` so a run is reproducible.
"""
from __future__ import annotations

import torch

HISTORY_DROP_SAMPLE = 0.5
HISTORY_DROP_QUERY = 0.3


def _select(batch: dict, keep: torch.Tensor) -> dict:
    """The batch restricted to samples ``keep`` (B,) bool (tensors and per-sample lists)."""
    b = int(keep.shape[0])
    idx = torch.nonzero(keep).flatten()
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, list) and len(v) == b:
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out


def moving_query_subset(batch: dict, generator: torch.Generator | None = None) -> dict | None:
    """Keep a random N ~ U[1, #moving] of each sample's moving queries (query_mask); drop samples
    without any. Returns the new batch, or None when no sample has a moving query."""
    qmask = batch["query_mask"].bool()
    moving = batch["moving"].bool() & qmask
    count = moving.sum(1)                                                # (B,)
    has = count > 0
    if not bool(has.any()):
        return None
    b, n = qmask.shape
    # N_b ~ U{1, ..., count_b}
    u = torch.rand(b, generator=generator)
    n_keep = (u * count.cpu().float()).floor().long().clamp_min(0) + 1
    # a random order of the moving queries: rank of a random score among them
    score = torch.rand(b, n, generator=generator)
    score = torch.where(moving.cpu(), score, torch.full_like(score, 2.0))
    rank = score.argsort(1).argsort(1)
    keep_q = moving.cpu() & (rank < n_keep[:, None])
    out = dict(batch)
    out["query_mask"] = keep_q.to(qmask.device)
    if "ctrl_valid" in out:
        out["ctrl_valid"] = out["ctrl_valid"] & out["query_mask"]
    return _select(out, has)


def history_dropout(batch: dict, p_sample: float = HISTORY_DROP_SAMPLE, p_query: float = HISTORY_DROP_QUERY,
                    generator: torch.Generator | None = None) -> dict:
    """Withhold the history of whole samples (``p_sample``) and of single queries (``p_query``)."""
    hv = batch["history_valid"]
    b, n = hv.shape[:2]
    drop_s = torch.rand(b, generator=generator) < p_sample
    drop_q = torch.rand(b, n, generator=generator) < p_query
    drop = (drop_s[:, None] | drop_q).to(hv.device)
    out = dict(batch)
    out["history_valid"] = hv & ~drop[..., None]
    return out
