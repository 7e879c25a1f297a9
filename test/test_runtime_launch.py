"""Launch files compile; the process launcher validates configs, propagates exit codes and stops
every child cleanly on SIGINT (what Ctrl-C on `mu0 run` does)."""
import py_compile
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mu0_app.graph_config import GraphConfigError, load_graph_config
from mu0_app.launcher import run_graph

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["arm.launch.py", "replay.launch.py", "sim.launch.py", "_mu0_graph.py"])
def test_launch_files_compile(name):
    py_compile.compile(str(REPO / "launch" / name), doraise=True)


def test_graph_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("mu0_graph:\n  ros__parameters:\n    nodes: [rgbd_sync, teleporter]\n")
    with pytest.raises(GraphConfigError, match=r"g.yaml.*nodes.*teleporter"):
        load_graph_config(bad)
    cfg = load_graph_config(REPO / "config/mu0_replay.yaml", ["mu0_node.max_queries=7"])
    assert cfg.node_params("mu0_node")["max_queries"] == 7 and cfg.node_params("rgbd_sync")["use_sim_time"] is True
    with pytest.raises(GraphConfigError, match="override"):
        load_graph_config(REPO / "config/mu0_replay.yaml", ["nonsense"])


def test_failing_child_exit_code_is_propagated(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("mu0_graph:\n  ros__parameters:\n    nodes: [rgbd_sync, action_expert]\n"
                   "action_expert:\n  ros__parameters:\n    robot_config: /no/such/robot.yaml\n")
    code = run_graph(cfg, duration_s=60, log_dir=tmp_path / "logs")
    assert code != 0
    assert "robot.yaml" in (tmp_path / "logs" / "action_expert.log").read_text()


def test_sigint_stops_all_children_cleanly(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("mu0_graph:\n  ros__parameters:\n    nodes: [rgbd_sync, mu0_node]\n"
                   "mu0_node:\n  ros__parameters:\n    model: baseline:zero_motion\n")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from mu0_app.launcher import main_run; "
                             f"sys.exit(main_run(['{cfg}', '--log-dir', '{tmp_path / 'logs'}']))"], cwd=REPO)
    log = tmp_path / "logs" / "mu0_node.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.is_file() and "loaded" in log.read_text()):
        time.sleep(0.2)
    assert "loaded" in log.read_text()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    out = subprocess.run(["pgrep", "-f", str(cfg.parent)], capture_output=True, text=True)
    assert out.stdout.strip() == ""                      # no orphaned node process
