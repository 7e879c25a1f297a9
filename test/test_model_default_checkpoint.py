"""The bundled default checkpoint (checkpoints/mu0_small) loads on both backends and agrees."""
from pathlib import Path

import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_policy.inference import TraceRequest
from mu0_policy.predictors import make_predictor

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "mu0_small"


def test_default_checkpoint_torch_and_onnxruntime_agree_and_traces_start_at_the_queries():
    assert (CKPT / "model.safetensors").stat().st_size < 20e6 and (CKPT / "model.onnx").is_file()
    rng = np.random.default_rng(0)
    w, h = 160, 120
    query = rng.uniform(0, 119, (64, 2))
    req = TraceRequest(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), np.full((h, w), 1.2, np.float32),
                       CameraIntrinsics(w, h, 140.0, 140.0, 79.5, 59.5), "push the puck to the goal", query)
    torch_pred = make_predictor(CKPT)
    ort_pred = make_predictor(CKPT, backend="onnxruntime")
    assert torch_pred.model_id == "mu0_small" and torch_pred.horizon == 32 and torch_pred.num_ctrl == 10
    a = torch_pred.predict([req], num_samples=2, seed=1)[0]
    b = ort_pred.predict([req], num_samples=2, seed=1)[0]
    np.testing.assert_allclose(a.samples_uvz, b.samples_uvz, atol=1e-4)
    np.testing.assert_allclose(a.validity, b.validity, atol=1e-4)
    uv = 2 * (query + 0.5) / np.array([w, h]) - 1
    np.testing.assert_allclose(a.samples_uvz[:, :, 0, :2], np.broadcast_to(uv, (2, 64, 2)), atol=1e-5)
    np.testing.assert_allclose(a.samples_uvz[:, :, 0, 2], 1.2, atol=1e-5)
    assert np.all((a.validity >= 0) & (a.validity <= 1))
