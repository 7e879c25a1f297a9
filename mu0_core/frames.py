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
