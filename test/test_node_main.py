"""mu0_ros.node_main.spin_node, the main() of every node process, on real rclpy: exit codes for a
stop, a bad parameter and a failed start; the process ends right after the ROS cleanup even when
the interpreter's own teardown would not (here: a non-daemon thread that never ends, standing in
for the 6-15 s teardown of a torch process under load); what was printed last still arrives."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("rclpy")

NODE = textwrap.dedent("""
    import sys, threading, time
    from rclpy.node import Node
    from mu0_ros.node_main import spin_node

    MODE = sys.argv[1]

    class Probe(Node):
        def __init__(self):
            super().__init__("node_main_probe")
            if MODE == "bad_parameter":
                raise ValueError("rate must be > 0, got -1")
            if MODE == "stuck_teardown":   # would keep a plain sys.exit() waiting forever
                threading.Thread(target=lambda: time.sleep(3600), daemon=False).start()
            self._said = False
            self.create_timer(0.05, self.tick)

        def tick(self):   # said from the spin, so a stop sent after it finds the node built
            if not self._said:
                self._said = True
                print("spinning", flush=True)

    def free(node):
        print("freed", end="")          # no newline, no flush: exit_now must flush it

    start = (lambda node: 1) if MODE == "start_fails" else None
    spin_node(Probe, sys.argv[2:], name="probe", start=start, free=free)
""")


def run(tmp_path, mode, signals=(), wait_for="spinning"):
    script = tmp_path / "probe_node.py"
    script.write_text(NODE)
    p = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        if signals:
            line = p.stdout.readline()
            assert wait_for in line, line
            for sig in signals:
                p.send_signal(sig)
                time.sleep(0.02)
        out, _ = p.communicate(timeout=60)     # bounded: a process that did not end fails here
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out


@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)])
def test_a_stop_exits_0_after_the_cleanup_even_with_a_thread_left_running(tmp_path, signals):
    code, out = run(tmp_path, "stuck_teardown", signals)
    assert code == 0, out
    assert out.rstrip().endswith("freed"), out          # the cleanup ran and its output was flushed
    assert "Traceback" not in out, out


def test_bad_parameter_is_one_line_and_exit_2(tmp_path):
    code, out = run(tmp_path, "bad_parameter")
    assert code == 2, out
    assert "probe: bad parameter: rate must be > 0, got -1" in out and "Traceback" not in out, out


def test_a_start_hook_code_ends_the_process_with_it(tmp_path):
    code, out = run(tmp_path, "start_fails")
    assert code == 1, out
    assert out.rstrip().endswith("freed"), out
