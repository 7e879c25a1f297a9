"""Seeded message fuzzer over real Fast DDS: every subscriber of the graph gets malformed messages.

The graph runs one process per node, as `mu0 run` starts it: rgbd_sync, action_expert (sim Sawyer,
forward_position, NOT dry-run) and, unless `--targets` leaves it out, mu0_node (a baseline
predictor, `queries: given`). This process plays everything else: the camera and the arm (valid background input at
30 Hz / 50 Hz, query points at 10 Hz), and the fuzzer, which sends `--messages` messages (default 10,000) per subscriber
and message type, cycling through the field classes

    sizes      height / width / step / horizon_steps / array counts: 0, 1, huge (2^31-1, 2^32-1)
    encodings  valid, unknown, empty, unicode and very long encodings
    nonfinite  NaN / +-inf in every float field
    stamps     negative, zero, an hour ahead, an hour back, nanosec >= 1e9, int32 extremes
    names      frame ids, joint names, entities: empty, duplicate, unicode, 10 kB long
    lengths    arrays whose lengths disagree with each other or with the declared sizes
    values     finite but wrong: joints beyond their limits, huge jumps, negative depth
    valid      a correct message (every class cycle), so good traffic is interleaved

with a seeded numpy Generator. Every command the action expert publishes is checked: finite,
inside the position limits, within min(max_step_delta, max_velocity * dt) of the previous command;
the gripper command too. `received` counts what reached the node's callback (background traffic
included; best-effort / keep-last inputs may drop under load, by design), `dropped_counted` what the
node reported dropping on /diagnostics. Afterwards each node must still serve good input (output within
`--recover-s`), and exit 0 on SIGINT without a traceback. Prints one table row per (node, type):

    node  type  sent  received  crashes  out_of_limit  nan  over_rate  served_after  exit

    python bench/fuzz_graph.py [--seed 0] [--messages 10000] [--targets rgbd_sync,action_expert,mu0_node]
    python bench/fuzz_graph.py --quick       # reduced seeded run (the test suite runs this)
Exit status 0 when every row is clean (0 crashes, 0 bad commands, served after, exit 0), else 1.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_harness import (RESET_Q, SEC, GraphHarness, Proc, bench_parser, child_env, expert_proc,  # noqa: E402
                           isolate_domain, load_robot, make_logdir, report)

CLASSES = ("sizes", "encodings", "nonfinite", "stamps", "names", "lengths", "values", "valid")
U32 = 2**32 - 1
I32 = 2**31 - 1
WEIRD = ["", " ", "\u00e9\u4e2d\U0001f600", "a" * 10_000, "base_link\x00x", "../../etc", "%s%n", "\\", "camera"]


# ---------------------------------------------------------------------------------------- messages
def _stamp(rng, now_ns, cls):
    from builtin_interfaces.msg import Time
    if cls != "stamps":
        return Time(sec=int(now_ns // SEC), nanosec=int(now_ns % SEC))
    choice = rng.integers(8)
    sec, nsec = [(-1, 0), (-I32 - 1, 0), (0, 0), (I32, U32), (int(now_ns // SEC) + 3600, 0),
                 (max(0, int(now_ns // SEC) - 3600), 0), (int(now_ns // SEC), U32),
                 (int(now_ns // SEC) - int(rng.integers(1, 100)), 0)][choice]
    return Time(sec=int(sec), nanosec=int(nsec))


def _name(rng, good, cls):
    return WEIRD[rng.integers(len(WEIRD))] if cls == "names" else good


def _size(rng):
    return int(rng.choice([0, 1, 2, 3, 7, 640, 65535, I32, U32]))


def _float(rng, cls, good):
    if cls == "nonfinite" and rng.random() < 0.5:
        return float(rng.choice([np.nan, np.inf, -np.inf]))
    return good


def make_image(rng, now_ns, cls, kind, w=16, h=12, frame="cam"):
    """kind: color | depth. A valid image is rgb8 / 32FC1 of w x h."""
    from sensor_msgs.msg import Image
    enc, ch, item = ("rgb8", 3, 1) if kind == "color" else ("32FC1", 1, 4)
    m = Image()
    m.header.stamp = _stamp(rng, now_ns, cls)
    m.header.frame_id = _name(rng, frame, cls)
    m.height, m.width, m.encoding, m.is_bigendian = h, w, enc, 0
    m.step = w * ch * item
    if kind == "color":
        data = rng.integers(0, 256, size=h * m.step, dtype=np.uint8)
    else:
        depth = rng.uniform(0.3, 2.0, size=(h, w)).astype(np.float32)
        if cls == "nonfinite":
            depth.reshape(-1)[rng.integers(0, h * w, size=h * w // 2)] = rng.choice([np.nan, np.inf, -np.inf])
        if cls == "values":
            depth = -depth if rng.random() < 0.5 else np.zeros_like(depth)
        data = depth.view(np.uint8).reshape(-1)
    if cls == "sizes":
        m.height, m.width, m.step = _size(rng), _size(rng), _size(rng)
    elif cls == "encodings":
        m.encoding = str(rng.choice(["", "rgb16", "bayer_rggb8", "16UC1", "mono8", "bgr8", "32FC1", "8UC3",
                                     "\u00e9", "x" * 5000, "mono16", "rgba8"]))
        m.is_bigendian = int(rng.integers(0, 256))
    elif cls == "lengths":
        cut = int(rng.integers(0, max(1, data.size)))
        data = data[:cut] if rng.random() < 0.5 else np.concatenate([data, data[:cut]])
    m.data = data.tobytes()
    return m


def make_info(rng, now_ns, cls, w=16, h=12, frame="cam"):
    from sensor_msgs.msg import CameraInfo
    m = CameraInfo()
    m.header.stamp = _stamp(rng, now_ns, cls)
    m.header.frame_id = _name(rng, frame, cls)
    m.width, m.height = w, h
    k = [20.0, 0.0, w / 2, 0.0, 20.0, h / 2, 0.0, 0.0, 1.0]
    m.distortion_model = "plumb_bob"
    m.d = [0.0] * 5
    if cls == "sizes":
        m.width, m.height = _size(rng), _size(rng)
    elif cls == "nonfinite":
        k = [_float(rng, cls, v) for v in k]
        m.d = [float(rng.choice([np.nan, np.inf, 0.0]))] * 5
    elif cls == "values":
        k = list(rng.uniform(-1e12, 1e12, size=9)) if rng.random() < 0.5 else [0.0] * 9
    elif cls == "lengths":
        m.d = [0.0] * int(rng.choice([0, 1, 3, 14, 100_000]))
    elif cls == "encodings" or cls == "names":
        m.distortion_model = WEIRD[rng.integers(len(WEIRD))]
    m.k = [float(v) for v in k]
    m.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    m.p = [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return m


def make_traces(rng, now_ns, cls, start):
    """A TraceArray in base_link: valid = one gripper trace from `start`, 32 steps."""
    from geometry_msgs.msg import Point
    from mu0_msgs.msg import Trace, TraceArray
    H = 32
    m = TraceArray()
    m.header.stamp = _stamp(rng, now_ns, cls)
    m.header.frame_id = _name(rng, "base_link", cls)
    m.instruction, m.model_id = "reach", "fuzz"
    m.horizon_steps, m.step_period = H, 0.05
    m.camera_to_frame.rotation.w = 1.0
    n = 1
    if cls == "sizes":
        m.horizon_steps = int(rng.choice([0, 1, I32, U32, 10_001, 100]))
        n = int(rng.choice([0, 1, 2, 200]))
    direction = np.array([0.1, 0.0, -0.05])
    knots = [0, 0, 0, 0, 1, 1, 1, 1.0]
    for i in range(n):
        t = Trace()
        t.query_id, t.entity = i, _name(rng, "gripper", cls)
        samples = start + np.linspace(0, 1, H + 1)[:, None] * direction
        if cls == "values":
            samples = samples * float(rng.choice([1e6, -1e6, 1e30, 0.0]))
        if cls == "nonfinite":
            samples[rng.integers(H + 1), rng.integers(3)] = float(rng.choice([np.nan, np.inf, -np.inf]))
        ctrl = start + np.linspace(0, 1, 4)[:, None] * direction
        t.position = Point(x=float(samples[0, 0]), y=float(samples[0, 1]), z=float(samples[0, 2]))
        t.degree = int(rng.integers(0, 256)) if cls == "lengths" and rng.random() < 0.3 else 3
        t.knots = knots if cls != "lengths" else [0.0] * int(rng.integers(0, 40))
        t.control_points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in ctrl]
        count = H + 1 if cls != "lengths" else int(rng.integers(0, 2 * H + 3))
        t.samples = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in samples[:count]] + \
            [Point() for _ in range(max(0, count - (H + 1)))]
        t.validity = [float(_float(rng, cls, 1.0)) for _ in range(H + 1 if cls != "lengths" else int(rng.integers(0, 70)))]
        t.pixel_u, t.pixel_v = _float(rng, cls, 1.0), _float(rng, cls, 1.0)
        t.confidence = _float(rng, cls, 1.0)
        m.traces.append(t)
    if cls == "nonfinite":
        m.step_period = float(rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.05]))
    return m


def make_joint_state(rng, now_ns, cls, names, q):
    from sensor_msgs.msg import JointState
    m = JointState()
    m.header.stamp = _stamp(rng, now_ns, cls)
    names = list(names) + ["gripper"]
    pos = list(q) + [-1.0]
    if cls == "names":
        r = rng.integers(4)
        if r == 0:
            names = [names[0]] * len(names)                          # duplicates
        elif r == 1:
            names = [WEIRD[rng.integers(len(WEIRD))] + str(i) for i in range(len(names))]
        elif r == 2:
            idx = rng.permutation(len(names))[: rng.integers(1, len(names))]
            names, pos = [names[i] for i in idx], [pos[i] for i in idx]   # a subset, shuffled
        else:
            names = names[::-1]                                       # reordered, values not
    elif cls == "lengths":
        pos = pos[: rng.integers(0, len(pos))] if rng.random() < 0.5 else pos + [0.0] * int(rng.integers(1, 50))
        m.velocity = [0.0] * int(rng.integers(0, 20))
    elif cls == "nonfinite":
        pos = [_float(rng, cls, v) for v in pos]
    elif cls == "values":
        # finite but wrong: beyond a limit, a huge jump, or a tiny glitch
        pos = list(np.asarray(pos) + rng.choice([10.0, -10.0, 2.25, 1e9, 0.3]) * (rng.random(len(pos)) < 0.5))
    elif cls == "sizes":
        n = int(rng.choice([0, 1, 1000]))
        names = [f"j{i}" for i in range(n)]
        pos = [0.0] * n
    m.name = names
    m.position = [float(v) for v in pos]
    return m


def make_rgbd(rng, now_ns, cls):
    from mu0_msgs.msg import RGBD
    m = RGBD()
    m.header.stamp = _stamp(rng, now_ns, cls)
    m.header.frame_id = _name(rng, "cam", cls)
    m.color = make_image(rng, now_ns, cls, "color")
    m.depth = make_image(rng, now_ns, cls, "depth")
    m.camera_info = make_info(rng, now_ns, cls)
    return m


def make_queries(rng, now_ns, cls):
    from mu0_msgs.msg import QueryPoints
    m = QueryPoints()
    m.header.stamp = _stamp(rng, now_ns, cls)
    n = int(rng.choice([0, 1, 5, 1000])) if cls == "sizes" else 3
    m.pixel_u = [_float(rng, cls, float(v)) for v in rng.uniform(0, 16, n)]
    m.pixel_v = [_float(rng, cls, float(v)) for v in rng.uniform(0, 12, n if cls != "lengths" else max(0, n - 1))]
    m.query_ids = list(range(n if cls != "lengths" else n + 2))
    m.entities = [_name(rng, "gripper", cls)] * n
    return m


def make_instruction(rng, now_ns, cls):
    from std_msgs.msg import String
    return String(data=WEIRD[rng.integers(len(WEIRD))] if cls != "valid" else "reach the block")


# ---------------------------------------------------------------------------------------- the run
TARGETS = {
    "rgbd_sync": [("color", "/camera/camera/color/image_raw"),
                  ("depth", "/camera/camera/aligned_depth_to_color/image_raw"),
                  ("camera_info", "/camera/camera/color/camera_info")],
    "action_expert": [("traces", "/mu0/traces"), ("joint_states", "/joint_states")],
    "mu0_node": [("rgbd", "/mu0/rgbd"), ("instruction", "/mu0/instruction"), ("queries", "/mu0/queries")],
}


def run(args) -> dict:
    isolate_domain(args.domain)
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import String

    from mu0_msgs.msg import RGBD, QueryPoints, TraceArray
    from mu0_ros.qos import latched_qos

    robot = load_robot()
    ee = robot.build_kinematics().ee_pose(RESET_Q)[:3, 3]
    targets = [t for t in args.targets.split(",") if t]
    logdir = make_logdir(args.logdir, "mu0_fuzz_")
    env = child_env()
    procs = {}
    if "rgbd_sync" in targets:
        procs["rgbd_sync"] = Proc("fuzz_rgbd_sync", "mu0_perception.nodes.rgbd_sync", [], logdir, env)
    if "action_expert" in targets:
        procs["action_expert"] = expert_proc("fuzz_action_expert", logdir, env, "-p", "diagnostics_period_s:=0.5")
    if "mu0_node" in targets:
        procs["mu0_node"] = Proc("fuzz_mu0_node", "mu0_policy.nodes.mu0_node",
                                 ["-p", "model:=baseline:constant_velocity", "-p", "diagnostics_period:=0.5",
                                  "-p", "queries:=given",
                                  "-r", "/mu0/traces:=/fuzz/mu0_traces", "-r", "/mu0/traces_camera:=/fuzz/mu0_traces_camera",
                                  "-r", "/mu0/trace_markers:=/fuzz/markers"], logdir, env)

    h = GraphHarness("fuzz_graph_harness", robot)
    node, rel, checker, diags = h.node, h.rel, h.checker, h.diags
    outputs = {"rgbd": [], "mu0_traces": []}
    node.create_subscription(RGBD, "/mu0/rgbd", lambda m: outputs["rgbd"].append(time.monotonic()), rel)
    node.create_subscription(TraceArray, "/fuzz/mu0_traces", lambda m: outputs["mu0_traces"].append(time.monotonic()), rel)
    types = {"color": Image, "depth": Image, "camera_info": CameraInfo, "traces": TraceArray,
             "joint_states": JointState, "rgbd": RGBD, "instruction": String, "queries": QueryPoints}
    pubs = {}
    for t in targets:
        for kind, topic in TARGETS[t]:
            qos = latched_qos() if kind == "instruction" else rel
            pubs[kind] = node.create_publisher(types[kind], topic, qos)
    if "instruction" not in pubs:
        pubs["instruction"] = node.create_publisher(String, "/mu0/instruction", latched_qos())
    for kind in ("color", "depth", "camera_info", "traces", "joint_states"):
        if kind not in pubs:
            pubs[kind] = node.create_publisher(types[kind], dict(sum(TARGETS.values(), []))[kind], rel)
    stop_spin = h.stop_event
    now = h.now_ns
    bg_rng = np.random.default_rng(args.seed + 1)
    background = {"on": True}

    def background_loop():
        """The camera (30 Hz) and the arm (50 Hz, at RESET_Q) and an upstream of traces (10 Hz)."""
        k = 0
        while not stop_spin.is_set():
            if background["on"]:
                t = now()
                pubs["joint_states"].publish(make_joint_state(bg_rng, t, "valid", robot.joint_names, RESET_Q))
                if k % 5 == 0:
                    pubs["traces"].publish(make_traces(bg_rng, t, "valid", ee))
                    if "mu0_node" in targets:
                        pubs["queries"].publish(make_queries(bg_rng, t, "valid"))
                if k % 2 == 0 and "rgbd_sync" in targets:
                    pubs["color"].publish(make_image(bg_rng, t, "valid", "color"))
                    pubs["depth"].publish(make_image(bg_rng, t, "valid", "depth"))
                    pubs["camera_info"].publish(make_info(bg_rng, t, "valid"))
            k += 1
            time.sleep(0.02)

    bg = threading.Thread(target=background_loop, daemon=True)
    deadline = time.monotonic() + 60
    try:
        # wait for every subscriber to match
        while time.monotonic() < deadline:
            if all(pubs[kind].get_subscription_count() > 0 for t in targets for kind, _ in TARGETS[t]) \
                    and all(p.alive() for p in procs.values()):
                break
            time.sleep(0.2)
        pubs["instruction"].publish(String(data="reach the block"))
        h.refuse_foreign_commanders(int("action_expert" in targets))
        bg.start()
        time.sleep(args.warmup_s)
        rng = np.random.default_rng(args.seed)
        sent = {(t, kind): 0 for t in targets for kind, _ in TARGETS[t]}
        makers = {
            "color": lambda c: make_image(rng, now(), c, "color"),
            "depth": lambda c: make_image(rng, now(), c, "depth"),
            "camera_info": lambda c: make_info(rng, now(), c),
            "traces": lambda c: make_traces(rng, now(), c, ee),
            "joint_states": lambda c: make_joint_state(rng, now(), c, robot.joint_names, RESET_Q),
            "rgbd": lambda c: make_rgbd(rng, now(), c),
            "instruction": lambda c: make_instruction(rng, now(), c),
            "queries": lambda c: make_queries(rng, now(), c),
        }
        kinds = [(t, kind) for t in targets for kind, _ in TARGETS[t]]
        t0 = time.monotonic()
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        crashes_at = {}
        for i in range(args.messages):
            cls = CLASSES[i % len(CLASSES)]
            for key in kinds:
                try:
                    msg = makers[key[1]](cls)
                except (ValueError, TypeError, AssertionError, OverflowError):
                    # rclpy refuses the field value itself (out of its type's range): not sendable
                    continue
                pubs[key[1]].publish(msg)
                sent[key] += 1
            if period:
                ahead = t0 + (i + 1) * period - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            if i % 200 == 0:
                for name, p in procs.items():
                    if not p.alive() and name not in crashes_at:
                        crashes_at[name] = i
        fuzz_s = time.monotonic() - t0
        time.sleep(1.0)
        # good input only: every node must serve it again
        mark = time.monotonic()
        plans0 = diags.get("action_expert", "runner.plans", 0)
        served = {}
        end = mark + args.recover_s
        while time.monotonic() < end:
            served = {
                "rgbd_sync": sum(t > mark for t in outputs["rgbd"]) > 0,
                "action_expert": checker.since(mark) > 0 and diags.get("action_expert", "runner.plans", 0) > plans0,
                "mu0_node": sum(t > mark for t in outputs["mu0_traces"]) > 0,
            }
            if all(served[t] for t in targets):
                break
            time.sleep(0.2)
        for name, p in procs.items():
            if not p.alive() and name not in crashes_at:
                crashes_at[name] = args.messages
        time.sleep(1.0)   # one more diagnostics period
        received = {
            ("rgbd_sync", "color"): diags.get("rgbd_sync", "in_color", None),
            ("rgbd_sync", "depth"): diags.get("rgbd_sync", "in_depth", None),
            ("rgbd_sync", "camera_info"): diags.get("rgbd_sync", "in_info", None),
            ("action_expert", "traces"): diags.get("action_expert", "in_traces", None),
            ("action_expert", "joint_states"): diags.get("action_expert", "in_joint_states", None),
            ("mu0_node", "rgbd"): diags.get("mu0_node", "received_frames", None),
        }
        stream_of = {"color": "color", "depth": "depth", "camera_info": "info"}
        drops = {(t, kind): diags.sum_prefix(t, f"dropped.{stream_of.get(kind, kind)}.")
                 for t in targets for kind, _ in TARGETS[t]}
        if "rgbd_sync" in targets:   # frames refused after matching count for every stream of the frame
            frame_faults = sum(int(diags.get("rgbd_sync", f, 0)) for f in
                               ("bad_encoding", "size_mismatch", "bad_camera_info", "invalid_depth", "malformed"))
            for kind, s in stream_of.items():
                drops[("rgbd_sync", kind)] += frame_faults + sum(
                    int(diags.get("rgbd_sync", f"{c}_{s}", 0)) for c in ("unmatched", "overflow", "out_of_order"))
                drops[("rgbd_sync", kind)] += int(diags.get("rgbd_sync", "bad_stamp", 0)) // 3
    finally:
        background["on"] = False
        exits = h.close(procs)
    rows = []
    for (t, kind) in kinds:
        rc, tb = exits[t]
        bad = t == "action_expert"
        rows.append(dict(node=t, type=kind, sent=sent[(t, kind)],
                         received=received.get((t, kind)), crashes=int(t in crashes_at),
                         out_of_limit=checker.out_of_limit if bad else 0, nan=checker.nan if bad else 0,
                         over_rate=checker.over_rate if bad else 0, served_after=bool(served.get(t)),
                         exit=rc, traceback=tb, dropped_counted=drops.get((t, kind))))
    result = dict(seed=args.seed, messages_per_type=args.messages, fuzz_s=round(fuzz_s, 1), rows=rows,
                  diagnostics=diags.values,
                  commands_checked=checker.n, gripper_commands_checked=checker.n_grip, logdir=str(logdir),
                  clean=all(r["crashes"] == 0 and r["out_of_limit"] == 0 and r["nan"] == 0 and r["over_rate"] == 0
                            and r["served_after"] and r["exit"] == 0 and not r["traceback"] for r in rows))
    return result


COLUMNS = ["node", "type", "sent", "received", "crashes", "out_of_limit", "nan", "over_rate", "served_after", "exit",
           "dropped_counted"]


def summary(result) -> str:
    return (f"seed {result['seed']}, {result['messages_per_type']} messages per (node, type) in {result['fuzz_s']} s; "
            f"{result['commands_checked']} joint commands and {result['gripper_commands_checked']} gripper commands "
            f"checked; logs in {result['logdir']}; {'CLEAN' if result['clean'] else 'PROBLEMS'}")


def main(argv=None):
    ap = bench_parser(__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--messages", type=int, default=10_000, help="messages per subscriber and message type")
    ap.add_argument("--targets", default="rgbd_sync,action_expert,mu0_node")
    ap.add_argument("--rate", type=float, default=200.0, help="fuzz rounds per second (one message per type each)")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--recover-s", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true", help="reduced seeded run: 400 messages per type, no mu0_node")
    args = ap.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 400)
        if args.targets == ap.get_default("targets"):
            args.targets = "rgbd_sync,action_expert"
    result = run(args)
    return report(result, COLUMNS, summary(result), args.json, result["clean"])


if __name__ == "__main__":
    sys.exit(main())
