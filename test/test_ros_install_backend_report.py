"""The backend report (issue: `onnx/cuda` was logged while onnxruntime ran on the CPU provider):
the providers a session REALLY uses are reported, asking for cuda where it is unavailable warns
loudly, and `require_device` refuses. mu0_node logs the report and puts it on /diagnostics; with
require_device its configure fails. No ../shared/ros2 needed (rclpy wheels only)."""
from __future__ import annotations

import time
import warnings

import pytest

from mu0_core.resources import share_path
from mu0_policy.predictors import DeviceUnavailableWarning, describe_backend, make_predictor

CHECKPOINT = share_path("checkpoints/mu0_small")
ort = pytest.importorskip("onnxruntime")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_onnx_cpu_reports_the_cpu_provider():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeviceUnavailableWarning)
        predictor = make_predictor(CHECKPOINT, "onnx", "cpu")
    assert predictor.backend_report["providers"] == ["CPUExecutionProvider"]
    assert describe_backend(predictor.backend_report) == "onnxruntime on cpu [CPUExecutionProvider]"


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here: the fallback cannot happen")
def test_onnx_cuda_without_cuda_warns_and_reports_cpu():
    with pytest.warns(DeviceUnavailableWarning, match=r"'cuda' requested but onnxruntime runs on cpu"):
        predictor = make_predictor(CHECKPOINT, "onnx", "cuda")
    report = predictor.backend_report
    assert report["device"] == "cpu" and report["requested_device"] == "cuda"
    assert "CUDAExecutionProvider" not in report["providers"]
    assert describe_backend(report).endswith("(cuda requested)")
    with pytest.raises(ValueError, match="require_device"):
        make_predictor(CHECKPOINT, "onnx", "cuda", require_device=True)


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime with the CUDA provider")
def test_onnx_cuda_with_cuda_reports_the_gpu_provider():
    predictor = make_predictor(CHECKPOINT, "onnx", "cuda", require_device=True)
    assert predictor.backend_report["device"] == "cuda"
    assert predictor.backend_report["providers"][0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here: the fallback cannot happen")
def test_mu0_node_logs_and_publishes_the_providers_and_require_device_fails_configure():
    rclpy = pytest.importorskip("rclpy")
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from mu0_policy.nodes.mu0_node import Mu0Node

    ctx = rclpy.Context()          # its own context: independent of what other tests left in the default one
    rclpy.init(context=ctx)
    try:
        def node(**extra):
            params = {"model": str(CHECKPOINT), "backend": "onnx", "device": "cuda", "autostart": False,
                      "diagnostics_period": 0.2, **extra}
            return Mu0Node(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()], context=ctx)

        strict = node(require_device=True)
        assert strict.trigger_configure() == TransitionCallbackReturn.FAILURE
        strict.destroy_node()

        lenient = node()
        probe = rclpy.create_node("backend_probe", context=ctx)
        got = []
        probe.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        assert lenient.trigger_configure() == TransitionCallbackReturn.SUCCESS
        executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
        executor.add_node(lenient)
        executor.add_node(probe)
        deadline = time.monotonic() + 20
        values = {}
        while time.monotonic() < deadline and "providers" not in values:
            executor.spin_once(timeout_sec=0.1)
            for arr in got:
                for status in arr.status:
                    if "mu0_node" in status.name:
                        values = {kv.key: kv.value for kv in status.values}
        assert values.get("providers") == "CPUExecutionProvider", values
        assert values.get("device") == "cpu" and "(cuda requested)" in values.get("backend", ""), values
        lenient._free()
        executor.shutdown()
        lenient.destroy_node()
        probe.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
