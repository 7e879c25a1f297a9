"""The hot path's converters against the reference ones.

* `trace_set_to_cdr` / `marker_array_cdr` write the same TraceArray / MarkerArray that
  `trace_set_to_msg` / `marker_array_msg` build (checked through rclpy's and rosbags' own
  deserializers), and `trace_cdr_to_set` reads rclpy's serialization back with the same checks.
* rgbd_sync's message path (`RGBDAssembler(output="message")`) passes the camera's images on
  undecoded, accepts and rejects exactly the sets the decoding path (offline replay) does, and
  mu0_node decodes them to the very frame offline replay gets.
"""
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from mu0_core.camera import CameraIntrinsics, RigidTransform  # noqa: E402
from mu0_core.traces import TraceSet  # noqa: E402
from mu0_msgs.msg import RGBD, TraceArray  # noqa: E402
from mu0_perception.sync import FAULTS, RGBDAssembler, assemble_frame  # noqa: E402
from mu0_policy.trace_postprocess import LineStrip  # noqa: E402
from mu0_ros import convert  # noqa: E402

SEC = 1_000_000_000


def trace_set(n=5, horizon=32, num_ctrl=10, seed=0):
    """step_period exact in float32, so a set survives the wire bit for bit."""
    rng = np.random.default_rng(seed)
    return TraceSet(
        stamp_ns=1_700_000_123_456_789, frame_id="base_link", instruction="pick the blöck", model_id="mu0 abc",
        horizon_steps=horizon, step_period=0.015625, query_ids=np.arange(n, dtype=np.uint32) * 7 + 2 ** 31 * (n > 3),
        entities=[f"cluster_{i % 3}" + "x" * i for i in range(n)], pixels=rng.random((n, 2)).astype(np.float32) * 100,
        positions=rng.normal(size=(n, 3)), knots=np.linspace(0, 1, num_ctrl + 4),
        control_points=rng.normal(size=(n, num_ctrl, 3)), samples=rng.normal(size=(n, horizon + 1, 3)),
        validity=rng.random((n, horizon + 1)).astype(np.float32), confidence=rng.random(n).astype(np.float32),
        degree=3, camera_to_frame=RigidTransform.from_quat_xyzw([0.1, -0.2, 0.3, 0.9], [1.0, -2.0, 0.5]))


def assert_same_set(a: TraceSet, b: TraceSet):
    for f in ("stamp_ns", "frame_id", "instruction", "model_id", "horizon_steps", "step_period", "entities", "degree"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("query_ids", "pixels", "positions", "knots", "control_points", "samples", "validity", "confidence"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert np.allclose(a.camera_to_frame.as_matrix(), b.camera_to_frame.as_matrix(), atol=1e-12)


@pytest.mark.parametrize("n", [1, 5, 24])
def test_trace_cdr_is_the_message_rclpy_and_rosbags_read(n):
    ts = trace_set(n)
    reference = convert.trace_set_to_msg(ts)
    data = convert.trace_set_to_cdr(ts)
    wire = serialize_message(reference)
    assert len(data) == len(wire)
    # compared after the wire (float32 fields such as step_period hold a float64 before it)
    assert deserialize_message(data, TraceArray) == deserialize_message(wire, TraceArray)
    store = convert.mu0_typestore()
    assert_same_set(convert.trace_msg_to_set(store.deserialize_cdr(data, "mu0_msgs/msg/TraceArray")), ts)


@pytest.mark.parametrize("n", [1, 24])
def test_trace_cdr_reader_matches_the_message_reader(n):
    ts = trace_set(n, horizon=20, num_ctrl=7)
    raw = serialize_message(convert.trace_set_to_msg(ts))
    assert_same_set(convert.trace_cdr_to_set(raw), convert.trace_msg_to_set(deserialize_message(raw, TraceArray)))
    assert_same_set(convert.trace_cdr_to_set(convert.trace_set_to_cdr(ts)), ts)


def test_trace_cdr_reader_rejects_malformed_bytes_naming_the_field():
    ts = trace_set(3)
    good = convert.trace_set_to_cdr(ts)
    with pytest.raises(ValueError, match="CDR"):
        convert.trace_cdr_to_set(b"\x00\x00" + good[2:])          # big-endian / other encapsulation
    for cut in (3, 10, 40, len(good) // 2, len(good) - 1):
        with pytest.raises(ValueError):
            convert.trace_cdr_to_set(good[:cut])
    bad = ts
    bad.samples[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"traces\[1\].samples: non-finite"):
        convert.trace_cdr_to_set(convert.trace_set_to_cdr(bad))
    for horizon in (0, 2 ** 31):
        msg = convert.trace_set_to_msg(trace_set(2))
        msg.horizon_steps = horizon
        with pytest.raises(ValueError, match="horizon_steps"):
            convert.trace_cdr_to_set(serialize_message(msg))
    msg = convert.trace_set_to_msg(trace_set(2))
    msg.traces[1].samples = msg.traces[1].samples[:-1]
    with pytest.raises(ValueError, match=r"traces\[1\].samples"):
        convert.trace_cdr_to_set(serialize_message(msg))
    msg = convert.trace_set_to_msg(trace_set(2))
    msg.traces[1].knots = msg.traces[1].knots[:-1]
    with pytest.raises(ValueError, match=r"traces\[1\]: spline"):
        convert.trace_cdr_to_set(serialize_message(msg))


def test_a_huge_claimed_count_is_rejected_before_allocating():
    data = bytearray(convert.trace_set_to_cdr(trace_set(1)))
    # the traces count follows the camera_to_frame transform: find it as the first uint32 == 1 after it
    msg = convert.trace_set_to_msg(trace_set(1))
    msg.traces = []
    offset = len(serialize_message(msg)) - 4
    assert int.from_bytes(data[offset:offset + 4], "little") == 1
    data[offset:offset + 4] = (2 ** 32 - 1).to_bytes(4, "little")
    with pytest.raises(ValueError, match="traces"):
        convert.trace_cdr_to_set(bytes(data))


def test_marker_array_cdr_is_the_marker_array_msg():
    rng = np.random.default_rng(1)
    strips = [LineStrip(f"cluster_{i % 3}", i, "base_link", 1_234_567_890_123 + i, rng.random((2 + i, 3)),
                        rng.random((2 + i, 4)).astype(np.float32), 0.006) for i in range(6)]
    for deleted in (set(), {"gone", "cluster_9"}):
        reference = convert.marker_array_msg(strips, 0.25, deleted, 5 * SEC, "base_link")
        data = convert.marker_array_cdr(strips, 0.25, deleted, 5 * SEC, "base_link")
        wire = serialize_message(reference)
        assert len(data) == len(wire)
        assert deserialize_message(data, MarkerArray) == deserialize_message(wire, MarkerArray)
    assert convert.marker_array_cdr([], 0.2) == serialize_message(convert.marker_array_msg([], 0.2))


# ---------------------------------------------------------------------------------------------- RGBD
W, H = 32, 24
INTR = CameraIntrinsics(W, H, 30.0, 30.0, 15.5, 11.5)


def camera_msgs(stamp_ns, color_encoding="rgb8", depth_encoding="16UC1", seed=0):
    rng = np.random.default_rng(seed)
    header = lambda: convert.make_header(stamp_ns, "camera_color_optical_frame")  # noqa: E731
    color = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    color_msg = convert.numpy_to_image(color[:, :, ::-1].copy() if color_encoding == "bgr8" else color,
                                       color_encoding, header())
    mm = (1 + rng.random((H, W)) * 3000).astype(np.uint16)
    mm[:4] = 0                                   # holes
    if depth_encoding == "32FC1":
        depth = mm.astype(np.float32) / 1000
        depth[:2] = np.nan
        depth_msg = convert.numpy_to_image(depth, "32FC1", header())
    else:
        depth_msg = convert.numpy_to_image(mm, "16UC1", header())
    return {"color": color_msg, "depth": depth_msg, "info": convert.camera_info_from_intrinsics(INTR, header())}


@pytest.mark.parametrize("color_encoding", ["rgb8", "bgr8"])
@pytest.mark.parametrize("depth_encoding", ["16UC1", "32FC1"])
def test_rgbd_message_path_carries_the_images_undecoded_and_decodes_to_the_offline_frame(color_encoding,
                                                                                         depth_encoding):
    live, offline = RGBDAssembler(output="message"), RGBDAssembler()
    msgs = [camera_msgs((k + 1) * SEC // 10, color_encoding, depth_encoding, seed=k) for k in range(3)]
    out_live, out_off = [], []
    for m in msgs:
        for s in ("color", "depth", "info"):
            out_off += offline.add(s, m[s])
            out_live += live.add(s, m[s])
    assert len(out_live) == len(out_off) == 3
    for m, rgbd, frame in zip(msgs, out_live, out_off):
        assert isinstance(rgbd, RGBD)
        assert rgbd.depth.encoding == depth_encoding and rgbd.color.encoding == "rgb8"
        if depth_encoding == "16UC1":   # the camera's bytes, not a re-encoding
            assert bytes(rgbd.depth.data) == bytes(m["depth"].data)
        wire = deserialize_message(serialize_message(rgbd), RGBD)
        got = convert.rgbd_msg_to_frame(wire)
        assert got.stamp_ns == frame.stamp_ns and got.frame_id == frame.frame_id
        assert np.array_equal(got.color, frame.color)
        assert np.array_equal(got.depth, frame.depth, equal_nan=True)
        assert got.intrinsics == frame.intrinsics
        assert all(p.header.stamp == rgbd.header.stamp for p in (wire.color, wire.depth, wire.camera_info))


def test_depth_decode_matches_the_32fc1_round_trip_of_before():
    """16UC1 travelling to mu0_node gives bit-identical metres to the former 32FC1 re-encoding."""
    m = camera_msgs(SEC)
    metres = convert.depth_from_image(m["depth"])
    again = convert.depth_from_image(convert.depth_to_image(metres, "32FC1"))
    assert np.array_equal(metres, again, equal_nan=True)
    assert np.array_equal(np.isnan(metres), convert.image_to_numpy(m["depth"]) == 0)


def _break(case, m):
    if case == "bad_encoding":
        m["color"].encoding = "bayer_rggb8"
    elif case == "depth_as_color":
        m["color"] = m["depth"]
    elif case == "size_mismatch":
        m["info"] = convert.camera_info_from_intrinsics(CameraIntrinsics(W + 2, H, 30.0, 30.0, 15.5, 11.5),
                                                        m["info"].header)
    elif case == "short_data":
        m["depth"].data = m["depth"].data[:-2]
    elif case == "invalid_depth":
        m["depth"] = convert.numpy_to_image(np.zeros((H, W), np.uint16), "16UC1", m["depth"].header)
    elif case == "bad_camera_info":
        m["info"].k = [0.0] * 9


@pytest.mark.parametrize("case", ["bad_encoding", "depth_as_color", "size_mismatch", "short_data", "invalid_depth",
                                  "bad_camera_info"])
def test_both_paths_reject_the_same_sets_with_the_same_fault(case):
    live, offline = RGBDAssembler(output="message"), RGBDAssembler()
    for asm in (live, offline):
        m = camera_msgs(SEC)
        _break(case, m)
        assert sum((asm.add(s, m[s]) for s in ("color", "depth", "info")), []) == []
    assert live.faults == offline.faults and sum(live.faults.values()) == 1
    assert set(live.faults) == set(FAULTS)


def test_assemble_frame_keeps_its_contract():
    m = camera_msgs(SEC)
    frame = assemble_frame(m["color"], m["depth"], m["info"])
    assert frame.depth.dtype == np.float32 and np.isnan(frame.depth[:4]).all() and np.isfinite(frame.depth[4:]).all()
    with pytest.raises(ValueError):
        RGBDAssembler(output="bytes")
