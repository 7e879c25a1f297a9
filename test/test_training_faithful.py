"""Issue #15 items 2 and 4: training on moving queries only, the moving-only normaliser, and
history dropout (the authors' rules)."""
import json

import numpy as np
import pytest
import torch

from mu0_core.bspline import TraceNormalizer
from mu0_policy.training import augment, train
from mu0_policy.training.data import TraceDataset, write_synthetic_dataset


def _batch(moving):
    moving = torch.as_tensor(moving, dtype=torch.bool)
    b, n = moving.shape
    return {"query_mask": torch.ones(b, n, dtype=torch.bool), "moving": moving,
            "ctrl_valid": torch.ones(b, n, dtype=torch.bool), "history_valid": torch.ones(b, n, 8, dtype=torch.bool),
            "query_uvz": torch.randn(b, n, 3), "captions": [f"c{i}" for i in range(b)]}


def test_moving_query_subset_keeps_only_moving_queries_with_uniform_count():
    moving = np.zeros((3, 10), bool)
    moving[0, [1, 4, 7, 8]] = True                # 4 moving
    moving[2, :] = True                           # 10 moving; sample 1 has none
    g = torch.Generator().manual_seed(0)
    counts = {0: [], 2: []}
    for _ in range(400):
        out = augment.moving_query_subset(_batch(moving), g)
        assert out["captions"] == ["c0", "c2"]     # the sample without a moving query is dropped
        q = out["query_mask"].numpy()
        assert not (q & ~moving[[0, 2]]).any()     # a static query never enters
        assert (out["ctrl_valid"] == out["query_mask"]).all()
        counts[0].append(q[0].sum())
        counts[2].append(q[1].sum())
    assert set(counts[0]) == {1, 2, 3, 4}           # N ~ U[1, #moving]
    assert min(counts[2]) >= 1 and max(counts[2]) == 10
    assert abs(np.mean(counts[2]) - 5.5) < 0.5
    assert augment.moving_query_subset(_batch(np.zeros((2, 5), bool)), g) is None


def test_history_dropout_rates():
    g = torch.Generator().manual_seed(1)
    b = _batch(np.ones((4000, 6), bool))
    hv = augment.history_dropout(b, 0.5, 0.3, g)["history_valid"]
    whole = ~hv.any(-1).any(-1)                   # samples with no history at all
    per_q = ~hv.any(-1)
    assert abs(whole.float().mean() - (0.5 + 0.5 * 0.3 ** 6)) < 0.03
    kept = ~whole
    assert abs(per_q[kept].float().mean() - 0.3) < 0.02
    assert (hv == hv[..., :1]).all()              # a query loses all its steps or none
    assert augment.history_dropout(b, 0.0, 0.0, g)["history_valid"].all()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), num_episodes=8, frames_per_episode=4,
                                   image_hw=(24, 32), num_queries=8)


def test_train_defaults_follow_the_authors(dataset, tmp_path):
    out = tmp_path / "run"
    rc = train.main(["--data", str(dataset), "--out", str(out), "--preset", "tiny", "--steps", "2",
                     "--batch-size", "4", "--eval-every", "2", "--save-every", "2", "--quiet"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    tr = cfg["training"]
    assert tr["queries"] == "moving" and tr["normalizer"] == "moving"
    assert tr["history_dropout"] == {"sample": 0.5, "query": 0.3}
    # the synthetic dataset's normaliser was fitted on all queries: training refits on moving ones
    ds = TraceDataset(dataset, "train")
    want = train.moving_normalizer(ds, ds.index.num_ctrl)
    got = TraceNormalizer.from_dict(cfg["normalizer"])
    np.testing.assert_allclose(got.scale, want.scale, rtol=1e-6)
    assert not np.allclose(got.scale, ds.index.normalizer.scale)
    # static queries shrink the scale: the moving-only one is larger on the moving axis
    assert got.scale[0] > ds.index.normalizer.scale[0]


def test_batch_builder_reencodes_targets_with_the_models_normaliser(dataset):
    from mu0_policy.model.config import preset

    ds = TraceDataset(dataset, "train")
    norm = train.moving_normalizer(ds, ds.index.num_ctrl)
    cfg = preset("tiny", normalizer=norm.to_dict())
    builder = train.BatchBuilder(cfg, None, ds.index.normalizer)
    batch = builder([ds[i] for i in range(4)])
    ref = norm.encode(batch["future_uvz"].numpy(), batch["future_valid"].numpy())
    ok = batch["ctrl_valid"].numpy()
    np.testing.assert_allclose(batch["ctrl_norm"].numpy()[ok], ref[ok], atol=1e-6)
    assert (batch["ctrl_norm"].numpy()[~ok] == 0).all()
    # the dataset's own normaliser: targets are passed through unchanged
    same = train.BatchBuilder(preset("tiny", normalizer=ds.index.normalizer.to_dict()), None, ds.index.normalizer)
    assert same.encoder is None
