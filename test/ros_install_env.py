"""Helpers of test/test_ros_install_*.py: the real ROS 2 jazzy pieces from ../shared/ros2
(launch, launch_ros, message_filters, tf2_msgs, colcon) made usable with its setup.sh, and a way to
run a script in that environment. Tests skip when ../shared/ros2 is absent."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_ROS2 = REPO.parent / "shared" / "ros2"
SKIP_REASON = (f"{SHARED_ROS2} absent: no colcon / launch / launch_ros / message_filters / tf2_msgs to test "
               "the ROS install path with (on a ROS install, follow the README instead)")
requires_shared_ros2 = pytest.mark.skipif(not (SHARED_ROS2 / "setup.sh").is_file(), reason=SKIP_REASON)


def extras_prefix() -> Path:
    """PREFIX of ../shared/ros2/setup.sh (idempotent: ~90 s once, ~1 s after), outside the git tree."""
    prefix = Path(os.environ.get("MU0_ROS2_EXTRAS", Path(tempfile.gettempdir()) / "mu0_ros2_extras"))
    subprocess.run(["bash", str(SHARED_ROS2 / "setup.sh"), str(prefix)], check=True, capture_output=True,
                   text=True, timeout=900)
    return prefix


def in_ros_env(prefix: Path, command: str, **kwargs):
    """Run `command` in bash with the extras' env.sh sourced."""
    return subprocess.run(["bash", "-c", f"source {prefix}/env.sh && {command}"], capture_output=True, text=True,
                          **kwargs)


def popen_in_ros_env(prefix: Path, command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source {prefix}/env.sh && exec {command}"], text=True, **kwargs)
