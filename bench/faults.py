"""Fault injection against the running action expert over real Fast DDS (one process per node).

The action expert (sim Sawyer, forward_position, NOT dry-run, use_sim_time) runs in its own
process; this process plays /clock (sim time = wall time unless a fault says otherwise) and the
arm (joint states at 100 Hz), and a separate upstream process plays mu0_node (traces at 10 Hz, or
30 / 60 Hz with 32 traces in the overload scenarios). Faults, in order:

    baseline         nothing wrong (no hold expected)
    kill_upstream    SIGKILL the traces process; later a new one starts     bound: trace_timeout_s
    stop_joint_states  the arm stops publishing; later resumes              bound: joint_state_timeout_s
    freeze_clock     /clock stops; later runs again                         bound: clock_timeout_s + 2 ticks
    rewind_clock     /clock jumps back 10 s (a looping bag)                 bound: one tick
    estop            /mu0/estop true; later ~/reset_estop                   bound: one tick
    overload_30hz    traces at 30 Hz x 32 traces (no hold expected)
    overload_60hz    traces at 60 Hz x 32 traces (no hold expected)

Every command is checked (finite, inside the limits, within a step of the previous command, the
gripper too). Time to hold = fault -> first /diagnostics report (every 50 ms) with a new hold tick;
recovery = fault removed -> first report with a new plan (for kill_upstream that includes starting a
new upstream process: 8-10 s at load average ~20, so it may take up to 30 s; every other fault
10 s). Prints one row per scenario:

    scenario  commands  crashes  out_of_limit  nan  over_rate  hold_ms  bound_ms  recovery_ms  cmd_hz  holds

    python bench/faults.py [--quick]        # --quick: shorter phases (the test suite runs this); a
                                            # no-fault phase there needs plans, not zero holds
Exit status 0 when every fault held within its bound (+ the 50 ms report period), nothing crashed,
no bad command was seen and every fault recovered; else 1.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_harness import (REPO, RESET_Q, SEC, GraphHarness, bench_parser, child_env, expert_proc,  # noqa: E402
                           isolate_domain, joint_state_msg, load_robot, make_logdir, report)

DIAG_PERIOD = 0.05


def upstream(hz: float, n_traces: int) -> int:
    """The stand-in for mu0_node: base-frame traces stamped with the node (sim) clock."""
    sys.path.insert(0, str(REPO))
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mu0_msgs.msg import TraceArray
    from mu0_ros import convert
    from mu0_core.traces import TraceSet

    robot = load_robot()
    ee = robot.build_kinematics().ee_pose(RESET_Q)[:3, 3]
    rclpy.init()
    node = rclpy.create_node("faults_upstream", parameter_overrides=[Parameter("use_sim_time", value=True)])
    pub = node.create_publisher(TraceArray, "/mu0/traces", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    direction = np.array([0.1, 0.0, -0.05])
    offsets = np.linspace(-0.05, 0.05, n_traces)

    def tick():
        now = node.get_clock().now().nanoseconds
        if now <= 0:
            return
        samples = np.stack([ee + [0, o, 0] + np.linspace(0, 1, 33)[:, None] * direction for o in offsets])
        ctrl = np.stack([ee + [0, o, 0] + np.linspace(0, 1, 4)[:, None] * direction for o in offsets])
        ts = TraceSet(stamp_ns=now, frame_id="base_link", instruction="reach", model_id="faults", horizon_steps=32,
                      step_period=0.05, query_ids=np.arange(n_traces, dtype=np.uint32),
                      entities=["gripper"] + ["object"] * (n_traces - 1), pixels=np.zeros((n_traces, 2), np.float32),
                      positions=samples[:, 0], knots=np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), control_points=ctrl,
                      samples=samples, validity=np.ones((n_traces, 33), np.float32),
                      confidence=np.ones(n_traces, np.float32))
        pub.publish(convert.trace_set_to_msg(ts))

    node.create_timer(1.0 / hz, tick)
    try:
        rclpy.spin(node)
    except BaseException:  # noqa: BLE001 - killed or interrupted: just go
        pass
    return 0


def run(args) -> dict:
    isolate_domain(args.domain)
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    from mu0_ros import convert

    robot = load_robot()
    logdir = make_logdir(args.logdir, "mu0_faults_")
    env = child_env()
    phase = args.phase_s

    def start_upstream(hz, n):
        log = open(logdir / f"upstream_{hz:g}hz.log", "w")
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--upstream", "--hz", str(hz),
                                 "--traces", str(n)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    expert = expert_proc("faults_action_expert", logdir, env, "-p", "use_sim_time:=true",
                         "-p", f"diagnostics_period_s:={DIAG_PERIOD}")
    h = GraphHarness("faults_harness", robot)
    node, rel, checker, diags = h.node, h.rel, h.checker, h.diags
    clock_pub = node.create_publisher(Clock, "/clock", 10)
    js_pub = node.create_publisher(JointState, robot.joint_state_topic, 10)
    estop_pub = node.create_publisher(Bool, "/mu0/estop", rel)
    reset = node.create_client(Trigger, "/faults_action_expert/reset_estop")
    stop = h.stop_event
    sim = {"t": 1_000 * SEC, "run": True, "js": True, "last": time.monotonic()}
    sim_lock = threading.Lock()

    def world():
        while not stop.is_set():
            with sim_lock:
                wall = time.monotonic()
                if sim["run"]:
                    sim["t"] += int((wall - sim["last"]) * SEC)
                sim["last"] = wall
                t = sim["t"]
                if sim["run"]:
                    clock_pub.publish(Clock(clock=convert.ns_to_stamp(t)))
                if sim["js"]:
                    js_pub.publish(joint_state_msg(robot, t))
            time.sleep(0.01)

    threading.Thread(target=world, daemon=True).start()
    counter = lambda key: int(diags.get("action_expert", key, 0) or 0)  # noqa: E731

    def wait_new(key, since_value, timeout):
        """Seconds until the diagnostics counter `key` exceeds since_value (None: never)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if counter(key) > since_value:
                return time.monotonic() - t0
            time.sleep(0.005)
        return None

    rows = []
    crashed = {"v": False}

    def scenario(name, inject, remove=None, bound_s=None, hold_expected=True, seconds=phase, recover_s=10.0):
        n0, bad0 = checker.n, checker.bad()
        t_start = time.monotonic()
        holds0, plans0 = counter("runner.hold_ticks"), counter("runner.plans")
        inject()
        hold_s = wait_new("runner.hold_ticks", holds0, max(seconds, (bound_s or 0) + 1.0)) if hold_expected else None
        if not hold_expected:
            time.sleep(seconds)
        recovery_s = None
        if remove is not None:
            time.sleep(0.3)
            plans1 = counter("runner.plans")
            remove()
            recovery_s = wait_new("runner.plans", plans1, recover_s)
        time.sleep(0.5)
        elapsed = time.monotonic() - t_start
        if not expert.alive():
            crashed["v"] = True
        unexpected_holds = counter("runner.hold_ticks") - holds0 if not hold_expected else 0
        row = dict(scenario=name, commands=checker.n - n0, crashes=int(not expert.alive()),
                   out_of_limit=checker.out_of_limit - bad0[0], nan=checker.nan - bad0[1],
                   over_rate=checker.over_rate - bad0[2],
                   hold_ms=None if hold_s is None else round(hold_s * 1e3),
                   bound_ms=None if bound_s is None else round(bound_s * 1e3),
                   recovery_ms=None if recovery_s is None else round(recovery_s * 1e3),
                   cmd_hz=round((checker.n - n0) / elapsed, 1), holds=unexpected_holds,
                   plans=counter("runner.plans") - plans0)
        ok = row["crashes"] == 0 and row["out_of_limit"] == 0 and row["nan"] == 0 and row["over_rate"] == 0
        if hold_expected:
            ok = ok and hold_s is not None and hold_s <= bound_s + DIAG_PERIOD + args.slack_s
        elif args.quick:   # the suite on a shared, loaded machine: still planning, nothing unsafe
            ok = ok and row["plans"] > 0
        else:
            ok = ok and unexpected_holds == 0 and row["plans"] > 0
        if remove is not None:
            ok = ok and recovery_s is not None
        row["ok"] = ok
        rows.append(row)
        return row

    up = {"p": None}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30 and node.count_publishers(robot.command_topic) < 1:
            time.sleep(0.1)
        h.refuse_foreign_commanders(1)
        up["p"] = start_upstream(10, 1)
        while time.monotonic() - t0 < 60 and counter("runner.plans") < 5:
            time.sleep(0.1)
        dt = robot.control_dt
        s = robot.safety

        def kill_upstream():
            up["p"].kill()
            up["p"].wait()

        def restart_upstream(hz=10, n=1, overlap=False):
            def go():
                old = up["p"]
                if old is not None and old.poll() is None and not overlap:
                    old.kill()
                    old.wait()
                up["p"] = start_upstream(hz, n)
                if overlap and old is not None:
                    # the new upstream takes over once it delivers: count its traces on the expert
                    n0, t_end = counter("runner.traces"), time.monotonic() + 30
                    while counter("runner.traces") < n0 + 3 * hz and time.monotonic() < t_end:
                        time.sleep(0.05)
                    if old.poll() is None:
                        old.kill()
                        old.wait()
            return go

        def set_sim(**kw):
            def go():
                with sim_lock:
                    sim.update(kw)
                    sim["last"] = time.monotonic()
            return go

        def rewind():
            with sim_lock:
                sim["t"] -= 10 * SEC

        def estop():
            estop_pub.publish(Bool(data=True))

        def reset_estop():
            reset.wait_for_service(timeout_sec=5)
            fut = reset.call_async(Trigger.Request())
            t_end = time.monotonic() + 5
            while not fut.done() and time.monotonic() < t_end:
                time.sleep(0.01)

        scenario("baseline", lambda: None, hold_expected=False)
        # recovery waits for a fresh Python + rclpy process: its start-up, not the expert, sets the time
        scenario("kill_upstream", kill_upstream, restart_upstream(), bound_s=s.trace_timeout_s + dt, recover_s=30.0)
        scenario("stop_joint_states", set_sim(js=False), set_sim(js=True), bound_s=s.joint_state_timeout_s + dt)
        scenario("freeze_clock", set_sim(run=False), set_sim(run=True), bound_s=0.25 + 2 * dt)
        scenario("rewind_clock", rewind, lambda: None, bound_s=dt)
        scenario("estop", estop, reset_estop, bound_s=dt)
        restart_upstream(30, 32, overlap=True)()
        time.sleep(1.0)
        scenario("overload_30hz", lambda: None, hold_expected=False)
        restart_upstream(60, 32, overlap=True)()
        time.sleep(1.0)
        scenario("overload_60hz", lambda: None, hold_expected=False)
        act_p50 = diags.get("action_expert", "act_ms.p50", None)
    finally:
        if up["p"] is not None and up["p"].poll() is None:
            up["p"].send_signal(signal.SIGINT)
            try:
                up["p"].wait(timeout=10)
            except subprocess.TimeoutExpired:
                up["p"].kill()
        rc, tb = h.close({"expert": expert})["expert"]
    clean = all(r["ok"] for r in rows) and rc == 0 and not tb and not crashed["v"]
    return dict(rows=rows, expert_exit=rc, traceback=tb, act_ms_p50=act_p50, commands_checked=checker.n,
                logdir=str(logdir), clean=clean)


COLUMNS = ["scenario", "commands", "crashes", "out_of_limit", "nan", "over_rate", "hold_ms", "bound_ms", "recovery_ms",
           "cmd_hz", "holds", "ok"]


def summary(result) -> str:
    return (f"{result['commands_checked']} commands checked; expert act p50 {result['act_ms_p50']} ms; "
            f"exit on SIGINT {result['expert_exit']}{' (traceback!)' if result['traceback'] else ''}; "
            f"logs in {result['logdir']}; {'CLEAN' if result['clean'] else 'PROBLEMS'}")


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.add_argument("--phase-s", type=float, default=3.0, help="seconds per scenario")
    ap.add_argument("--slack-s", type=float, default=0.1, help="scheduling slack allowed on a loaded machine")
    ap.add_argument("--quick", action="store_true", help="shorter phases (the test suite)")
    ap.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hz", type=float, default=10.0, help=argparse.SUPPRESS)
    ap.add_argument("--traces", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream:
        return upstream(args.hz, args.traces)
    if args.quick:
        args.phase_s = min(args.phase_s, 1.5)
    result = run(args)
    return report(result, COLUMNS, summary(result), args.json, result["clean"])


if __name__ == "__main__":
    sys.exit(main())
