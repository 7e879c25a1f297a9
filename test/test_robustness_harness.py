"""The fuzz and fault harnesses (bench/fuzz_graph.py, bench/faults.py) in their reduced seeded
modes, over real DDS: 0 crashes, 0 out-of-limit / non-finite / over-rate commands, every node serves
good input afterwards and exits 0 on SIGINT; every fault holds within its bound and recovers."""
import json
import subprocess
import sys


def run_bench(script, tmp_path, *extra):
    out = tmp_path / "result.json"
    p = subprocess.run([sys.executable, f"bench/{script}", "--quick", "--json", str(out),
                        "--logdir", str(tmp_path / "logs"), *extra],
                       capture_output=True, text=True, timeout=240)
    assert out.exists(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads(out.read_text())


def test_fuzz_graph_quick(tmp_path):
    p, r = run_bench("fuzz_graph.py", tmp_path, "--seed", "7")
    assert p.returncode == 0 and r["clean"], p.stdout
    assert {(row["node"], row["type"]) for row in r["rows"]} == {
        ("rgbd_sync", "color"), ("rgbd_sync", "depth"), ("rgbd_sync", "camera_info"),
        ("action_expert", "traces"), ("action_expert", "joint_states")}
    assert all(row["sent"] >= 350 for row in r["rows"])
    assert r["commands_checked"] > 20


def test_faults_quick(tmp_path):
    p, r = run_bench("faults.py", tmp_path, "--slack-s", "0.5")   # a shared machine: scheduling slack
    assert p.returncode == 0 and r["clean"], p.stdout
    held = {row["scenario"]: row for row in r["rows"]}
    for name in ("kill_upstream", "stop_joint_states", "freeze_clock", "rewind_clock", "estop"):
        assert held[name]["hold_ms"] is not None and held[name]["recovery_ms"] is not None, held[name]
