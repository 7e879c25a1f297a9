"""Conversion round trips (rclpy message classes and rosbags typestore classes) and bad input."""
import numpy as np
import pytest

from mu0_core.camera import CameraIntrinsics, RigidTransform
from mu0_core.frames import RGBDFrame
from mu0_core.traces import TraceSet
from mu0_ros import convert

rng = np.random.default_rng(0)
SAMPLES = {
    "rgb8": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "bgr8": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
    "mono8": rng.integers(0, 256, (5, 7), dtype=np.uint8),
    "16UC1": rng.integers(0, 65536, (5, 7), dtype=np.uint16),
    "32FC1": rng.normal(size=(5, 7)).astype(np.float32),
}


@pytest.fixture(scope="module")
def store():
    return convert.mu0_typestore()


def _padded(msg, pad: int, bigendian: bool = False):
    """Re-pack an image message with `pad` extra bytes per row (and optionally big-endian)."""
    dtype, ch = convert.IMAGE_ENCODINGS[msg.encoding]
    px = convert.image_to_numpy(msg)
    if bigendian:
        px = px.astype(np.dtype(dtype).newbyteorder(">"))
    rows = np.ascontiguousarray(px).view(np.uint8).reshape(msg.height, -1)
    rows = np.concatenate([rows, np.full((msg.height, pad), 0xAB, np.uint8)], axis=1)
    msg.step = rows.shape[1]
    msg.is_bigendian = int(bigendian)
    msg.data = rows.reshape(-1).tobytes()
    return msg


@pytest.mark.parametrize("encoding", list(SAMPLES))
def test_image_round_trip_each_encoding(encoding):
    px = SAMPLES[encoding]
    msg = convert.numpy_to_image(px, encoding)
    assert (msg.height, msg.width) == px.shape[:2]
    np.testing.assert_array_equal(convert.image_to_numpy(msg), px)


@pytest.mark.parametrize("encoding", list(SAMPLES))
def test_image_padded_step_and_bigendian(encoding):
    px = SAMPLES[encoding]
    msg = _padded(convert.numpy_to_image(px, encoding), pad=5)
    np.testing.assert_array_equal(convert.image_to_numpy(msg), px)
    if px.dtype.itemsize > 1:
        big = _padded(convert.numpy_to_image(px, encoding), pad=3, bigendian=True)
        out = convert.image_to_numpy(big)
        np.testing.assert_array_equal(out, px)
        assert out.dtype.byteorder in ("=", "|", "<")


def test_image_round_trip_rosbags_types(store):
    msg = convert.numpy_to_image(SAMPLES["rgb8"], "rgb8", typestore=store)
    assert type(msg).__name__ == "sensor_msgs__msg__Image"
    np.testing.assert_array_equal(convert.image_to_numpy(msg), SAMPLES["rgb8"])


def test_color_and_depth_normalisation():
    rgb = SAMPLES["rgb8"]
    np.testing.assert_array_equal(convert.color_from_image(convert.numpy_to_image(rgb[:, :, ::-1].copy(), "bgr8")), rgb)
    gray = convert.color_from_image(convert.numpy_to_image(SAMPLES["mono8"], "mono8"))
    assert gray.shape == (5, 7, 3) and np.all(gray[:, :, 0] == SAMPLES["mono8"])
    mm = np.array([[0, 1000], [1534, 65535]], dtype=np.uint16)
    d = convert.depth_from_image(convert.numpy_to_image(mm, "16UC1"))
    assert np.isnan(d[0, 0]) and d[0, 1] == pytest.approx(1.0) and d[1, 0] == pytest.approx(1.534)
    m = np.array([[np.nan, -1.0], [0.0, 2.5]], dtype=np.float32)
    d = convert.depth_from_image(convert.numpy_to_image(m, "32FC1"))
    assert np.isnan(d[0, 0]) and np.isnan(d[0, 1]) and np.isnan(d[1, 0]) and d[1, 1] == 2.5
    back = convert.depth_from_image(convert.depth_to_image(d, "16UC1"))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(d))
    with pytest.raises(ValueError, match="encoding"):
        convert.depth_from_image(convert.numpy_to_image(rgb, "rgb8"))


def test_bad_images_raise_naming_the_field():
    good = convert.numpy_to_image(SAMPLES["rgb8"], "rgb8")
    bad = convert.numpy_to_image(SAMPLES["rgb8"], "rgb8")
    bad.encoding = "yuv422"
    with pytest.raises(ValueError, match="encoding"):
        convert.image_to_numpy(bad)
    short = convert.numpy_to_image(SAMPLES["rgb8"], "rgb8")
    short.data = bytes(good.data)[:-1]
    with pytest.raises(ValueError, match="data"):
        convert.image_to_numpy(short)
    narrow = convert.numpy_to_image(SAMPLES["rgb8"], "rgb8")
    narrow.step = 5
    with pytest.raises(ValueError, match="step"):
        convert.image_to_numpy(narrow)

    class Negative:  # rclpy refuses negative uint32 values, a bag decoder does not check
        encoding, height, width, step, is_bigendian, data = "mono8", -2, 3, 3, 0, b""
    with pytest.raises(ValueError, match="negative"):
        convert.image_to_numpy(Negative())
    with pytest.raises(ValueError, match="pixels"):
        convert.numpy_to_image(SAMPLES["mono8"], "rgb8")


def test_camera_info_round_trip_and_errors(store):
    intr = CameraIntrinsics(640, 480, 615.2, 614.8, 321.5, 238.25, "plumb_bob", (0.1, -0.05, 0.001, 0.0, 0.0))
    for ts in (None, store):
        back = convert.intrinsics_from_camera_info(convert.camera_info_from_intrinsics(intr, typestore=ts))
        assert back == intr
    msg = convert.camera_info_from_intrinsics(intr)
    msg.width = 0
    with pytest.raises(ValueError, match="width"):
        convert.intrinsics_from_camera_info(msg)
    msg = convert.camera_info_from_intrinsics(intr)
    msg.k = [0.0] * 9
    with pytest.raises(ValueError, match="camera_info.k"):
        convert.intrinsics_from_camera_info(msg)


def _frame():
    intr = CameraIntrinsics(7, 5, 5.0, 5.0, 3.0, 2.0)
    depth = np.abs(SAMPLES["32FC1"]) + 0.2
    depth[0, 0] = np.nan
    return RGBDFrame(1_700_000_000_123_456_789, "cam_optical", SAMPLES["rgb8"], depth.astype(np.float32), intr)


@pytest.mark.parametrize("use_store", [False, True])
def test_rgbd_round_trip(use_store, store):
    f = _frame()
    back = convert.rgbd_msg_to_frame(convert.frame_to_rgbd_msg(f, typestore=store if use_store else None))
    assert back.stamp_ns == f.stamp_ns and back.frame_id == f.frame_id and back.intrinsics == f.intrinsics
    np.testing.assert_array_equal(back.color, f.color)
    np.testing.assert_array_equal(back.depth, f.depth)


def make_trace_set(n=3, d=10, h=32):
    r = np.random.default_rng(1)
    samples = r.normal(size=(n, h + 1, 3))
    return TraceSet(
        stamp_ns=42_000_000_007, frame_id="base_link", instruction="pick up the cube", model_id="mu0_small@abc",
        horizon_steps=h, step_period=0.0125, query_ids=np.arange(n, dtype=np.uint32) + 10,
        entities=["gripper", "object", "cluster_3"][:n], pixels=r.uniform(0, 300, (n, 2)).astype(np.float32),
        positions=samples[:, 0].copy(), knots=np.array([0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1.0]),
        control_points=r.normal(size=(n, d, 3)), samples=samples,
        validity=r.uniform(size=(n, h + 1)).astype(np.float32), confidence=r.uniform(size=n).astype(np.float32),
        camera_to_frame=RigidTransform.from_quat_xyzw([0.1, 0.2, 0.3, 0.9], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize("use_store", [False, True])
def test_trace_array_round_trip(use_store, store):
    ts = make_trace_set()
    back = convert.trace_msg_to_set(convert.trace_set_to_msg(ts, typestore=store if use_store else None))
    for name in ("stamp_ns", "frame_id", "instruction", "model_id", "horizon_steps", "entities", "degree"):
        assert getattr(back, name) == getattr(ts, name), name
    assert back.step_period == pytest.approx(ts.step_period)
    for name in ("query_ids", "knots", "control_points", "samples", "positions"):
        np.testing.assert_allclose(getattr(back, name), getattr(ts, name), err_msg=name)
    for name in ("pixels", "validity", "confidence"):  # float32 fields
        np.testing.assert_allclose(getattr(back, name), getattr(ts, name), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(back.camera_to_frame.as_matrix(), ts.camera_to_frame.as_matrix(), atol=1e-12)


def test_trace_array_inconsistent_raises():
    msg = convert.trace_set_to_msg(make_trace_set())
    msg.traces[1].samples = msg.traces[1].samples[:-1]
    with pytest.raises(ValueError, match=r"traces\[1\].samples"):
        convert.trace_msg_to_set(msg)
    msg = convert.trace_set_to_msg(make_trace_set())
    msg.traces[0].samples[3].x = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        convert.trace_msg_to_set(msg)
    with pytest.raises(ValueError, match="samples"):
        ts = make_trace_set()
        TraceSet(**{**ts.__dict__, "samples": ts.samples[:, :5]})


@pytest.mark.parametrize("use_store", [False, True])
def test_robot_messages_round_trip(use_store, store):
    ts = store if use_store else None
    names = [f"j{i}" for i in range(3)]
    stamp, n, pos, vel = convert.joint_state_to_arrays(convert.joint_state_msg(5, names, [1, 2, 3], [0.1, 0.2, 0.3], ts))
    assert (stamp, n) == (5, names) and pos.tolist() == [1, 2, 3] and vel.tolist() == [0.1, 0.2, 0.3]
    rows = np.arange(6.0).reshape(2, 3)
    n, p, t = convert.joint_trajectory_to_points(convert.joint_trajectory_msg(names, rows, [0.05, 0.1], typestore=ts))
    assert n == names and np.array_equal(p, rows) and np.allclose(t, [0.05, 0.1])
    assert convert.float64_array_to_numpy(convert.float64_array_msg([1.5, -2], ts)).tolist() == [1.5, -2.0]


def test_robot_messages_bad_input():
    names = ["a", "b"]
    with pytest.raises(ValueError, match="position"):
        convert.joint_state_to_arrays(convert.joint_state_msg(0, names, [1, 2]).__class__(name=names, position=[1.0]))
    with pytest.raises(ValueError, match="times_from_start"):
        convert.joint_trajectory_msg(names, np.zeros((2, 2)), [0.1, 0.1])
    with pytest.raises(ValueError, match="non-finite"):
        convert.float64_array_to_numpy(convert.float64_array_msg([np.nan]))


def test_query_points_and_markers():
    from mu0_msgs.msg import QueryPoints
    px, ids, ents = convert.query_points_to_arrays(QueryPoints(pixel_u=[1.0, 2.0], pixel_v=[3.0, 4.0], query_ids=[7, 8]))
    assert px.tolist() == [[1, 3], [2, 4]] and ids == [7, 8] and ents == []
    with pytest.raises(ValueError, match="pixel_v"):
        convert.query_points_to_arrays(QueryPoints(pixel_u=[1.0], pixel_v=[]))
    with pytest.raises(ValueError, match="entities"):
        convert.query_points_to_arrays(QueryPoints(pixel_u=[1.0], pixel_v=[2.0], entities=["a", "b"]))
    from types import SimpleNamespace
    strip = SimpleNamespace(stamp_ns=5, frame_id="cam", namespace="gripper", marker_id=3, width=0.01,
                            points=np.zeros((4, 3)), colors=np.ones((4, 4)))
    msg = convert.marker_array_msg([strip], lifetime_s=0.2, deleted_namespaces=["object"])
    assert [m.action for m in msg.markers] == [convert.DELETEALL, convert.ADD]
    assert msg.markers[1].ns == "gripper" and len(msg.markers[1].points) == 4 and msg.markers[1].lifetime.nanosec == 200_000_000
