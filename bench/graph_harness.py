"""The harness shared by the graph benches (bench/faults.py, bench/fuzz_graph.py, bench/soak.py).

Each of them runs nodes as separate processes over real Fast DDS (as `mu0 run` starts them) and
plays the rest of the graph from one harness node in this process. What they share lives here:

- `isolate_domain`: a ROS domain of the bench's own, so a node left over elsewhere never joins;
- `Proc`: one node process logging to a file; `stop()` sends SIGINT and reports a traceback;
- `CommandChecker`: every command of the action expert against the guard's invariants;
- `Diagnostics`: the latest /diagnostics values per status name;
- `GraphHarness`: the harness node, its reliable QoS, the checker / diagnostics subscriptions and
  a background spin thread; `close(procs)` stops the nodes and shuts rclpy down;
- `bench_parser` / `report`: the --logdir / --domain / --json flags, the table and the JSON.

Not a bench itself (`make bench` runs every bench/*.py: running this file does nothing).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FWD_CFG = "config/robots/sim_sawyer_forward.yaml"     # sim Sawyer, forward_position: one array per command
RESET_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])   # the sim arm's reset pose
SEC = 1_000_000_000


# ---------------------------------------------------------------------------------------- processes
def isolate_domain(domain: int | None) -> str:
    """A ROS domain of the bench's own (never the caller's), on loopback; returns the domain id.

    Must run before rclpy is imported by this process and before any node process starts: both
    read the variables once."""
    os.environ["ROS_DOMAIN_ID"] = str(domain if domain is not None else 120 + os.getpid() % 100)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return os.environ["ROS_DOMAIN_ID"]


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return env


def make_logdir(path: str | None, prefix: str) -> Path:
    logdir = Path(path or tempfile.mkdtemp(prefix=prefix))
    logdir.mkdir(parents=True, exist_ok=True)
    return logdir


class Proc:
    """One node process; output goes to a log file (a full pipe must never block a node)."""

    def __init__(self, name, module, args, logdir, env=None):
        self.name = name
        self.log = Path(logdir) / f"{name}.log"
        self._fh = open(self.log, "w")
        self.p = subprocess.Popen([sys.executable, "-m", module, "--ros-args", "-r", f"__node:={name}", *args],
                                  stdout=self._fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout=20.0):
        """SIGINT like Ctrl-C; returns (exit code, traceback seen)."""
        if self.alive():
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._fh.close()
        text = self.log.read_text(errors="replace")
        return self.p.returncode, "Traceback" in text


def expert_proc(name, logdir, env, *params) -> Proc:
    """The action expert on the sim Sawyer (forward_position), commanding (NOT dry-run)."""
    return Proc(name, "mu0_policy.nodes.action_expert_node",
                ["-p", f"robot_config:={REPO / FWD_CFG}", "-p", "dry_run:=false", *params], logdir, env)


def load_robot():
    from mu0_policy.experts import load_robot_config
    return load_robot_config(str(REPO / FWD_CFG))


# ---------------------------------------------------------------------------------------- checks
class CommandChecker:
    """Checks every command of the action expert against the invariants (thread-safe)."""

    def __init__(self, robot):
        self.lower, self.upper = robot.joints.lower, robot.joints.upper
        self.step = np.minimum(robot.joints.max_step_delta, robot.joints.max_velocity * robot.control_dt)
        self.g = robot.gripper
        self.lock = threading.Lock()
        self.prev = None
        self.prev_grip = None
        self.n = 0
        self.n_grip = 0
        self.out_of_limit = self.nan = self.over_rate = self.bad_shape = 0
        self.times = []           # monotonic receipt times

    def command(self, data):
        q = np.asarray(data, dtype=float)
        with self.lock:
            self.n += 1
            self.times.append(time.monotonic())
            if q.shape != self.lower.shape:   # a command for other joints can be inside no limit
                self.bad_shape += 1
                self.out_of_limit += 1
                return
            if not np.all(np.isfinite(q)):
                self.nan += 1
                return
            if np.any(q < self.lower - 1e-9) or np.any(q > self.upper + 1e-9):
                self.out_of_limit += 1
            if self.prev is not None and np.any(np.abs(q - self.prev) > self.step + 1e-9):
                self.over_rate += 1
            self.prev = q

    def gripper(self, data):
        v = np.asarray(data, dtype=float)
        with self.lock:
            self.n_grip += 1
            if v.shape != (1,) or not np.isfinite(v[0]):
                self.nan += 1
                return
            if not self.g.lower - 1e-12 <= v[0] <= self.g.upper + 1e-12:
                self.out_of_limit += 1
            if self.prev_grip is not None and abs(v[0] - self.prev_grip) > self.g.max_step_delta + 1e-12:
                self.over_rate += 1
            self.prev_grip = v[0]

    def since(self, t0) -> int:
        with self.lock:
            return sum(t > t0 for t in self.times)

    def bad(self) -> tuple[int, int, int]:
        """(out_of_limit, nan, over_rate) so far."""
        with self.lock:
            return self.out_of_limit, self.nan, self.over_rate


class Diagnostics:
    """Latest /diagnostics values per status name."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}

    def add(self, msg):
        with self.lock:
            for s in msg.status:
                self.values[s.name] = {kv.key: kv.value for kv in s.values}

    def get(self, name_part, key, default=0):
        with self.lock:
            for name, vals in self.values.items():
                if name_part in name and key in vals:
                    try:
                        return float(vals[key])
                    except ValueError:
                        return vals[key]
        return default

    def sum_prefix(self, name_part, prefix):
        with self.lock:
            for name, vals in self.values.items():
                if name_part in name:
                    return int(sum(float(v) for k, v in vals.items() if k.startswith(prefix)))
        return 0


# ---------------------------------------------------------------------------------------- the harness node
class GraphHarness:
    """The harness node: checks the expert's commands, reads /diagnostics, spins in the background.

    Call after `isolate_domain` (it initialises rclpy in the bench's domain)."""

    def __init__(self, name: str, robot):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64MultiArray

        self._rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node(name)
        # reliable and deep: a command the harness misses is a command it never checked
        self.rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.robot = robot
        self.checker = CommandChecker(robot)
        self.diags = Diagnostics()
        self.on_command = []      # extra callbacks, called after the check
        self.node.create_subscription(Float64MultiArray, robot.command_topic, self._command, self.rel)
        self.node.create_subscription(Float64MultiArray, robot.gripper.topic,
                                      lambda m: self.checker.gripper(m.data), self.rel)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.add, self.rel)
        self._ex = SingleThreadedExecutor()
        self._ex.add_node(self.node)
        self.stop_event = threading.Event()
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()

    def _command(self, msg):
        self.checker.command(msg.data)
        for cb in self.on_command:
            cb(msg)

    def _spin_loop(self):
        while not self.stop_event.is_set():
            self._ex.spin_once(timeout_sec=0.01)

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def refuse_foreign_commanders(self, expected: int):
        """More publishers on the command topic than the bench started: the checks would mix streams."""
        n = self.node.count_publishers(self.robot.command_topic)
        if n > expected:
            raise RuntimeError(f"{n - expected} other publisher(s) on {self.robot.command_topic} in ROS domain "
                               f"{os.environ.get('ROS_DOMAIN_ID')}: the command checks would mix streams")

    def close(self, procs) -> dict:
        """Stops the spin thread and every node process (SIGINT); returns {name: (exit, traceback)}."""
        self.stop_event.set()
        exits = {name: p.stop() for name, p in procs.items()}
        self._spin.join(timeout=5)
        self.node.destroy_node()
        self._rclpy.try_shutdown()
        return exits


def joint_state_msg(robot, stamp_ns: int, q=RESET_Q, gripper: float = -1.0):
    """A valid /joint_states of the arm at q (the gripper joint last, open)."""
    from sensor_msgs.msg import JointState

    from mu0_ros import convert
    m = JointState(name=list(robot.joint_names) + ["gripper"], position=[float(v) for v in q] + [gripper])
    m.header.stamp = convert.ns_to_stamp(stamp_ns)
    return m


# ---------------------------------------------------------------------------------------- CLI and output
def bench_parser(doc: str):
    """The bench's argument parser (its description: the docstring's first line) with the flags
    every graph bench takes: --logdir, --domain, --json."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--logdir", default=None, help="node logs (default: a new temporary folder)")
    ap.add_argument("--domain", type=int, default=None,
                    help="ROS_DOMAIN_ID (default: 120 + pid %% 100, never the caller's)")
    ap.add_argument("--json", default=None, help="also write the result here")
    return ap


def print_table(rows, cols):
    """Fixed-width table; None prints as '-'."""
    rows = [{c: ("-" if r[c] is None else r[c]) for c in cols} for r in rows]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def report(result: dict, cols, summary: str, json_path: str | None, ok: bool) -> int:
    """Prints the rows and the summary line, writes the result as JSON (if asked); returns the
    bench's exit status (0 when ok)."""
    print_table(result["rows"], cols)
    print(summary)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(0)
