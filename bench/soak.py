"""Soak: the whole graph at 30 Hz for `--minutes` (default 10) over real Fast DDS; RSS of every node
sampled; prints memory growth and output-rate stability.

Processes (one per node, as `mu0 run` starts them): rgbd_sync -> mu0_node (`--model`, default the
bundled checkpoints/mu0_small; `queries: given`) -> action_expert (sim Sawyer, forward_position, NOT
dry-run). This process plays the camera (colour + depth + camera_info at `--hz`), the arm (joint
states at 100 Hz) and the query points (10 Hz), and checks every command, the gripper's too
(finite, in limits, within a step of the previous one). RSS (VmRSS) of each node every 5 s;
growth = median of the last minute over the median of the first minute after `--warmup-s`.
Output rates per 10 s window.

    python bench/soak.py [--minutes 10] [--hz 30] [--model checkpoints/mu0_small] [--size 160x120]

Rows: node, RSS first/last minute (MiB), growth %, output, rate in / out (Hz), worst 10 s window %.
Targets (issue 13): RSS growth < 5 %, output rate within 5 % of input (mu0_node drops frames by
design when it is slower than the camera: keep-newest, never a backlog; its rate is reported).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_harness import (GraphHarness, Proc, bench_parser, child_env, expert_proc, isolate_domain,  # noqa: E402
                           joint_state_msg, load_robot, make_logdir, report)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def run(args) -> dict:
    isolate_domain(args.domain)
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String

    from mu0_core.camera import CameraIntrinsics
    from mu0_core.frames import RGBDFrame
    from mu0_msgs.msg import RGBD, QueryPoints, TraceArray
    from mu0_ros import convert
    from mu0_ros.qos import latched_qos

    robot = load_robot()
    w, h = (int(v) for v in args.size.split("x"))
    logdir = make_logdir(args.logdir, "mu0_soak_")
    env = child_env()
    # the sim camera's pose: traces reach the expert in the base frame
    extrinsic = "[-1.1, -0.4, 0.6, 0.736838, -0.305208, 0.230856, -0.557335]"
    procs = {
        "rgbd_sync": Proc("soak_rgbd_sync", "mu0_perception.nodes.rgbd_sync", [], logdir, env),
        "mu0_node": Proc("soak_mu0_node", "mu0_policy.nodes.mu0_node",
                         ["-p", f"model:={args.model}", "-p", "queries:=given", "-p", f"camera_to_base:={extrinsic}",
                          "-p", f"expected_period:={1.0 / args.hz}"], logdir, env),
        "action_expert": expert_proc("soak_action_expert", logdir, env),
    }
    harness = GraphHarness("soak_harness", robot)
    node, rel, checker, diags = harness.node, harness.rel, harness.checker, harness.diags
    lock = threading.Lock()
    arrivals = {"rgbd": [], "traces": [], "commands": []}

    def arrived(key):
        with lock:
            arrivals[key].append(time.monotonic())

    node.create_subscription(RGBD, "/mu0/rgbd", lambda m: arrived("rgbd"), rel)
    node.create_subscription(TraceArray, "/mu0/traces", lambda m: arrived("traces"), rel)
    harness.on_command.append(lambda m: arrived("commands"))
    pubs = {"color": node.create_publisher(Image, "/camera/camera/color/image_raw", rel),
            "depth": node.create_publisher(Image, "/camera/camera/aligned_depth_to_color/image_raw", rel),
            "info": node.create_publisher(CameraInfo, "/camera/camera/color/camera_info", rel),
            "js": node.create_publisher(JointState, robot.joint_state_topic, 10),
            "queries": node.create_publisher(QueryPoints, "/mu0/queries", rel),
            "instruction": node.create_publisher(String, "/mu0/instruction", latched_qos())}
    stop = harness.stop_event
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(h, 2 * w, 3), dtype=np.uint8)
    depth = np.linspace(0.8, 1.6, w, dtype=np.float32)[None].repeat(h, 0)
    intr = CameraIntrinsics.from_K(np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]]), w, h)
    sent = {"frames": []}

    def camera():
        period, k, t_next = 1.0 / args.hz, 0, time.monotonic()
        while not stop.is_set():
            stamp = node.get_clock().now().nanoseconds
            shift = k % w
            f = RGBDFrame(stamp_ns=stamp, frame_id="camera", color=np.ascontiguousarray(texture[:, shift:shift + w]),
                          depth=depth, intrinsics=intr)
            msg = convert.frame_to_rgbd_msg(f)
            pubs["color"].publish(msg.color)
            pubs["depth"].publish(msg.depth)
            pubs["info"].publish(msg.camera_info)
            sent["frames"].append(time.monotonic())
            k += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def arm():
        k = 0
        while not stop.is_set():
            t = node.get_clock().now().nanoseconds
            pubs["js"].publish(joint_state_msg(robot, t))
            if k % 10 == 0:
                q = QueryPoints()
                q.header.stamp = convert.ns_to_stamp(t)
                q.query_ids = [0, 1, 2]
                q.pixel_u = [float(v) for v in np.linspace(0.2 * w, 0.8 * w, 3)]
                q.pixel_v = [float(v) for v in np.linspace(0.3 * h, 0.7 * h, 3)]
                q.entities = ["gripper", "object", "object"]
                pubs["queries"].publish(q)
            k += 1
            time.sleep(0.01)

    samples = {name: [] for name in procs}   # (monotonic, MiB)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                pubs[k].get_subscription_count() > 0 for k in ("color", "depth", "info", "js", "queries")):
            time.sleep(0.2)
        pubs["instruction"].publish(String(data="reach the block"))
        threads = [threading.Thread(target=camera, daemon=True), threading.Thread(target=arm, daemon=True)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        end = t0 + args.warmup_s + args.minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            for name, p in procs.items():
                if p.alive():
                    samples[name].append((now, rss_mib(p.p.pid)))
            time.sleep(5.0)
        alive = {name: p.alive() for name, p in procs.items()}
    finally:
        exits = harness.close(procs)

    t_start, t_end = t0 + args.warmup_s, end

    def window_rates(times):
        edges = np.arange(t_start, t_end + 1e-9, 10.0)
        counts, _ = np.histogram(np.asarray(times), bins=edges)
        return counts / 10.0

    frames_in = window_rates(sent["frames"])
    rows = []
    for name, out_key in (("rgbd_sync", "rgbd"), ("mu0_node", "traces"), ("action_expert", "commands")):
        s = [(t, v) for t, v in samples[name] if v is not None and t >= t_start]
        first = np.median([v for t, v in s if t < t_start + 60]) if s else float("nan")
        last = np.median([v for t, v in s if t > t_end - 60]) if s else float("nan")
        rates = window_rates(arrivals[out_key])
        rate_in = robot.control_rate_hz if name == "action_expert" else float(np.mean(frames_in))
        worst = float(np.min(rates) / rate_in * 100) if len(rates) else float("nan")
        rows.append(dict(node=name, rss_first_mib=round(float(first), 1), rss_last_mib=round(float(last), 1),
                         growth_pct=round(float((last - first) / first * 100), 2), output=out_key,
                         rate_in_hz=round(rate_in, 2), rate_out_hz=round(float(np.mean(rates)), 2),
                         rate_out_pct=round(float(np.mean(rates)) / rate_in * 100, 1), worst_window_pct=round(worst, 1),
                         alive=alive[name], exit=exits[name][0], traceback=exits[name][1]))
    return dict(minutes=args.minutes, hz=args.hz, model=args.model, size=args.size, rows=rows,
                commands_checked=checker.n, out_of_limit=checker.out_of_limit, nan=checker.nan,
                over_rate=checker.over_rate, mu0_diagnostics=diags.values.get("mu0: mu0_node", {}),
                logdir=str(logdir))


COLUMNS = ["node", "rss_first_mib", "rss_last_mib", "growth_pct", "output", "rate_in_hz", "rate_out_hz", "rate_out_pct",
           "worst_window_pct", "alive", "exit"]


def summary(r) -> str:
    d = r["mu0_diagnostics"]
    return (f"{r['minutes']} min at {r['hz']} Hz ({r['size']}, model {r['model']}); {r['commands_checked']} commands "
            f"checked: {r['out_of_limit']} out of limit, {r['nan']} non-finite, {r['over_rate']} over rate; mu0_node "
            f"total_ms p50 {d.get('total_ms.p50', '?')}, dropped_frames {d.get('dropped_frames', '?')}; "
            f"logs in {r['logdir']}")


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--hz", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=30.0)
    ap.add_argument("--model", default="checkpoints/mu0_small")
    ap.add_argument("--size", default="160x120")
    args = ap.parse_args(argv)
    r = run(args)
    bad = r["out_of_limit"] or r["nan"] or r["over_rate"] or any(not row["alive"] or row["exit"] for row in r["rows"])
    return report(r, COLUMNS, summary(r), args.json, not bad)


if __name__ == "__main__":
    sys.exit(main())
