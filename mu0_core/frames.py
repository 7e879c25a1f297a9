"""RGBDFrame: the core (ROS-free) form of one synchronised RGB-D frame (mu0_msgs/RGBD)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mu0_core.camera import CameraIntrinsics


@dataclass
class RGBDFrame:
    stamp_ns: int            # camera stamp of the colour image
    frame_id: str            # colour optical frame
    color: np.ndarray        # (H, W, 3) uint8 RGB
    depth: np.ndarray        # (H, W) float32 metres, NaN = invalid
    intrinsics: CameraIntrinsics

    def __post_init__(self):
        if self.color.ndim != 3 or self.color.shape[2] != 3 or self.color.dtype != np.uint8:
            raise ValueError(f"color must be (H, W, 3) uint8, got {self.color.shape} {self.color.dtype}")
        if self.depth.shape != self.color.shape[:2]:
            raise ValueError(f"depth shape {self.depth.shape} != color shape {self.color.shape[:2]}")
        if self.depth.dtype != np.float32:
            raise ValueError(f"depth must be float32 metres, got {self.depth.dtype}")
        if (self.intrinsics.height, self.intrinsics.width) != self.color.shape[:2]:
            raise ValueError(
                f"camera_info size {self.intrinsics.width}x{self.intrinsics.height} != image size "
                f"{self.color.shape[1]}x{self.color.shape[0]}")


# --- the model's image inputs: one resize rule for training batches and served requests ----------
# A model reads colour and depth at its own input size. Training (mu0_policy.training.data.collate)
# and serving (the predictors) resize with these two functions, so a served frame reaches the network
# as a training frame did (test/test_preprocessing_parity.py).

def model_image(color: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 in [0, 1]; area averaging when the size changes
    (it does not alias when shrinking, as a camera image to a model's input always is)."""
    import cv2

    c = np.asarray(color)
    if c.ndim != 3 or c.shape[2] != 3 or c.dtype != np.uint8:
        raise ValueError(f"color must be (H, W, 3) uint8, got {c.dtype} {c.shape}")
    h, w = (int(x) for x in hw)
    if c.shape[:2] != (h, w):
        c = cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_AREA)
    return c.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)


def model_depth(depth: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) metres (NaN holes) -> (1, h, w) float32, nearest pixel: averaging across a hole's
    edge or a depth edge would invent depth no surface has. ``None`` (no depth) is all NaN."""
    import cv2

    h, w = (int(x) for x in hw)
    if depth is None:
        return np.full((1, h, w), np.nan, np.float32)
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {d.shape}")
    if d.shape != (h, w):
        d = cv2.resize(np.ascontiguousarray(d), (w, h), interpolation=cv2.INTER_NEAREST)
    return d[None]
