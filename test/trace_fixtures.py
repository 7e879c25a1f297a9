"""A one-trace TraceSet for expert tests: a single `gripper` query whose future samples are given,
valid at every step (the control points / knots are unused by the experts, so left zero)."""
import numpy as np

from mu0_core.traces import TraceSet


def gripper_trace(samples, stamp_ns: int, frame_id: str, instruction: str = "reach", model_id: str = "test",
                  step_period: float = 0.05) -> TraceSet:
    """samples: (1, H + 1, 3) in `frame_id`; H = 32."""
    samples = np.asarray(samples, dtype=np.float64)
    return TraceSet(stamp_ns=stamp_ns, frame_id=frame_id, instruction=instruction, model_id=model_id,
                    horizon_steps=samples.shape[1] - 1, step_period=step_period,
                    query_ids=np.zeros(1, np.uint32), entities=["gripper"], pixels=np.zeros((1, 2), np.float32),
                    positions=samples[:, 0], knots=np.zeros(14), control_points=np.zeros((1, 10, 3)),
                    samples=samples, validity=np.ones((1, samples.shape[1]), np.float32),
                    confidence=np.ones(1, np.float32))
