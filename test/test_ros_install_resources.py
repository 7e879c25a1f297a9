"""Resources resolved through the package share directory when installed, relative to the source
tree when run from it (mu0_core/resources.py), and the merged parameters every node of a graph
gets (mu0_app.graph_config.write_params_file: what `mu0 run` and the launch files both pass)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from mu0_app.graph_config import load_graph_config, write_params_file
from mu0_core import resources

REPO = Path(__file__).resolve().parent.parent


def test_source_tree_is_the_root_here():
    assert resources.source_root() == REPO
    assert resources.package_root() == REPO
    assert resources.share_path("config/mu0_sim.yaml").is_file()


def test_resolve_prefers_the_working_directory_then_the_package_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resources.resolve("checkpoints/mu0_small") == REPO / "checkpoints" / "mu0_small"
    (tmp_path / "checkpoints" / "mu0_small").mkdir(parents=True)
    assert resources.resolve("checkpoints/mu0_small") == Path("checkpoints/mu0_small")   # the user's own copy
    assert resources.resolve("no/such/thing") == Path("no/such/thing")                   # unchanged: caller reports
    assert resources.resolve(str(REPO / "package.xml")) == REPO / "package.xml"


def test_installed_layout_finds_share_dir(tmp_path):
    """<prefix>/lib/python3.X/site-packages/mu0_core/resources.py -> <prefix>/share/mu0 (what colcon
    and pip install write), from a directory that is neither."""
    site = tmp_path / "install" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "mu0_core").mkdir(parents=True)
    shutil.copy(REPO / "mu0_core" / "resources.py", site / "mu0_core" / "resources.py")
    (site / "mu0_core" / "__init__.py").write_text("")
    share = tmp_path / "install" / "share" / "mu0"
    (share / "config").mkdir(parents=True)
    shutil.copy(REPO / "package.xml", share / "package.xml")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", resources.ENV_ROOT)}
    code = "import mu0_core.resources as r; print(r.package_root())"
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == share
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere,
                         env={**env, "PYTHONPATH": str(site), resources.ENV_ROOT: str(REPO)},
                         capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == REPO


def test_graph_params_carry_use_sim_time_and_absolute_resources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                           # not the source tree
    graph = load_graph_config(resources.share_path("config/mu0_sim.yaml"))
    params = yaml.safe_load(write_params_file(graph, tmp_path).read_text())
    assert "mu0_graph" not in params
    for node in graph.nodes:
        assert params[node]["ros__parameters"]["use_sim_time"] is True, node
    assert params["mu0_node"]["ros__parameters"]["model"] == str(REPO / "checkpoints" / "mu0_base")
    robot = params["mu0_node"]["ros__parameters"].get("robot_config")
    assert robot is None or Path(robot).is_absolute()
    assert params["action_expert"]["ros__parameters"]["robot_config"] == \
        str(REPO / "config" / "robots" / "sim_sawyer_joint_mu0base.yaml")
    arm = load_graph_config(resources.share_path("config/mu0_arm.yaml"), ["mu0_node.model=baseline:zero_motion"])
    assert arm.node_params("mu0_node")["model"] == "baseline:zero_motion"
    assert "use_sim_time" not in arm.node_params("rgbd_sync")
