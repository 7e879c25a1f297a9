"""ament_python package `mu0` (and a plain pip-installable core).

On a real ROS install, colcon builds this next to mu0_msgs; nodes are then found by
`ros2 run mu0 <node>` (setup.cfg puts the scripts in lib/mu0). Without ROS, scripts/setup.sh
installs it editable in .venv and the same console scripts are on PATH.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mu0"


def tree(src):
    """data_files entries that keep the sub-directory layout of `src` under share/mu0/."""
    entries = {}
    for path in glob(f"{src}/**/*", recursive=True):
        if "__pycache__" in path.split("/") or path.endswith(".pyc"):
            continue
        if not path.endswith("/") and "." in path.rsplit("/", 1)[-1]:
            entries.setdefault(f"share/{PACKAGE}/{path.rsplit('/', 1)[0]}", []).append(path)
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["mu0_core*", "mu0_ros*", "mu0_perception*", "mu0_policy*", "mu0_sim*", "mu0_app*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("checkpoints"),
    ],
    install_requires=["numpy", "scipy", "pyyaml"],
    zip_safe=False,
    maintainer="mu0-ros maintainers",
    maintainer_email="maintainers@mu0-ros.org",
    description="ROS 2 runtime and training suite for the mu0 3D interaction-trace world model",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # the umbrella CLI: mu0 demo | sim | replay | run | record | extract | train | eval | export
            "mu0 = mu0_app.cli:main",
            # nodes (same names as in launch/)
            "rgbd_sync = mu0_perception.nodes.rgbd_sync:main",
            "realsense_camera = mu0_perception.nodes.realsense_camera:main",
            "mu0_node = mu0_policy.nodes.mu0_node:main",
            "action_expert = mu0_policy.nodes.action_expert_node:main",
            "sim_arm = mu0_sim.nodes.sim_node:main",
            "bag_player = mu0_ros.bag_player:main",
        ],
    },
)
