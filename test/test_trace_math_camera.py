"""Camera geometry: normalised coordinates, (de)projection with and without distortion, extrinsics,
arc-length reparameterisation."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mu0_core import camera
from mu0_core.camera import CameraIntrinsics, RigidTransform

INTR = CameraIntrinsics(640, 480, 615.3, 612.8, 318.7, 243.1)
PLUMB = CameraIntrinsics(640, 480, 615.3, 612.8, 318.7, 243.1, "plumb_bob", (0.08, -0.15, 0.001, -0.002, 0.04))
RATIONAL = CameraIntrinsics(640, 480, 615.3, 612.8, 318.7, 243.1, "rational_polynomial",
                            (0.1, -0.2, 0.001, 0.002, 0.05, 0.01, 0.02, 0.01))


def _pixels(rng, n=200):
    return rng.uniform([0, 0], [639, 479], size=(n, 2))


def test_normalized_convention_edges_and_centres():
    # the outer edges of the image are -1 / +1, pixel centres at integers
    np.testing.assert_allclose(camera.pixels_to_normalized([[-0.5, -0.5], [639.5, 479.5]], 640, 480),
                               [[-1, -1], [1, 1]])
    np.testing.assert_allclose(camera.pixels_to_normalized([319.5, 239.5], 640, 480), [0, 0])
    rng = np.random.default_rng(0)
    uv = _pixels(rng).reshape(4, 50, 2)
    back = camera.normalized_to_pixels(camera.pixels_to_normalized(uv, 640, 480), 640, 480)
    np.testing.assert_allclose(back, uv, atol=1e-12)


def test_deproject_pinhole_by_hand():
    xyz = camera.deproject([[318.7 + 615.3, 243.1 - 2 * 612.8]], [2.0], INTR)
    np.testing.assert_allclose(xyz, [[2.0, -4.0, 2.0]], atol=1e-12)


@pytest.mark.parametrize("intr", [INTR, PLUMB, RATIONAL], ids=["pinhole", "plumb_bob", "rational"])
def test_pixel_3d_pixel_round_trip(intr):
    rng = np.random.default_rng(1)
    uv = _pixels(rng).reshape(10, 20, 2)
    depth = rng.uniform(0.2, 5.0, size=(10, 20))
    xyz = camera.deproject(uv, depth, intr)
    assert xyz.shape == (10, 20, 3)
    np.testing.assert_array_equal(xyz[..., 2], depth)
    uv2, z2 = camera.project(xyz, intr)
    np.testing.assert_allclose(uv2, uv, atol=1e-9, rtol=0)
    np.testing.assert_allclose(z2, depth, atol=1e-12)
    # 3D -> pixel -> 3D as well
    xyz2 = camera.deproject(uv2, z2, intr)
    np.testing.assert_allclose(xyz2, xyz, atol=1e-9, rtol=0)


def test_distortion_actually_applied():
    rng = np.random.default_rng(2)
    uv = _pixels(rng)
    xyz_pin = camera.deproject(uv, np.ones(len(uv)), INTR)
    xyz_dist = camera.deproject(uv, np.ones(len(uv)), PLUMB)
    # away from the centre the rays must differ noticeably
    assert np.abs(xyz_pin - xyz_dist).max() > 3e-3  # several pixels at 1 m
    # and match OpenCV's own forward model
    import cv2
    proj, _ = cv2.projectPoints(xyz_dist.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), PLUMB.K,
                                np.array(PLUMB.distortion))
    np.testing.assert_allclose(proj.reshape(-1, 2), uv, atol=1e-9)


def test_uvz_xyz_round_trip():
    rng = np.random.default_rng(3)
    uvz = np.concatenate([rng.uniform(-1, 1, (5, 33, 2)), rng.uniform(0.3, 3, (5, 33, 1))], -1)
    xyz = camera.uvz_to_xyz(uvz, INTR)
    np.testing.assert_allclose(camera.xyz_to_uvz(xyz, INTR), uvz, atol=1e-12)
    # consistency with the pixel path
    px = camera.normalized_to_pixels(uvz[..., :2], 640, 480)
    np.testing.assert_allclose(xyz, camera.deproject(px, uvz[..., 2], INTR), atol=1e-12)


def test_points_behind_camera_and_nan_depth():
    uv, z = camera.project([[0.1, 0.2, -1.0], [0.0, 0.0, 2.0]], INTR)
    assert np.all(np.isnan(uv[0])) and z[0] == -1.0
    np.testing.assert_allclose(uv[1], [INTR.cx, INTR.cy])
    xyz = camera.deproject([[10.0, 10.0]], [np.nan], INTR)
    assert np.all(np.isnan(xyz))


def test_extrinsic_round_trips():
    rng = np.random.default_rng(4)
    q = Rotation.random(random_state=5).as_quat()          # scipy's order is xyzw, as ROS
    T_base_cam = RigidTransform.from_quat_xyzw(q, [0.4, -0.1, 0.9])
    pts_cam = rng.normal(size=(7, 33, 3))
    pts_base = T_base_cam.apply(pts_cam)
    np.testing.assert_allclose(T_base_cam.inverse().apply(pts_base), pts_cam, atol=1e-12)
    np.testing.assert_allclose((T_base_cam @ T_base_cam.inverse()).as_matrix(), np.eye(4), atol=1e-12)
    q_back = T_base_cam.to_quat_xyzw()
    assert np.allclose(q_back, q, atol=1e-12) or np.allclose(q_back, -q, atol=1e-12)
    np.testing.assert_allclose(RigidTransform.from_matrix(T_base_cam.as_matrix()).apply(pts_cam),
                               pts_base, atol=1e-12)
    # a 90 degree yaw about z, by hand: x -> y
    T = RigidTransform.from_quat_xyzw([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)], [1, 0, 0])
    np.testing.assert_allclose(T.apply([1.0, 0.0, 0.0]), [1.0, 1.0, 0.0], atol=1e-12)
    # camera -> base -> camera of a deprojected pixel lands on the same pixel
    xyz = camera.deproject([[100.0, 300.0]], [1.5], INTR)
    uv, _ = camera.project(T_base_cam.inverse().apply(T_base_cam.apply(xyz)), INTR)
    np.testing.assert_allclose(uv, [[100.0, 300.0]], atol=1e-9)


def test_arc_length_reparameterize():
    # a quadratic-in-time motion along a line: equal arc-length steps, regardless of speed
    t = np.linspace(0, 1, 20)
    pts = np.stack([t ** 2, 2 * t ** 2, np.zeros_like(t)], -1)
    out = camera.arc_length_reparameterize(pts, None, 5)
    np.testing.assert_allclose(out, np.linspace(0, 1, 5)[:, None] * [1, 2, 0], atol=1e-12)
    # an L-shaped path with a skipped (invalid) wild point
    pts = np.array([[0, 0], [1, 0], [50, 50], [1, 1]], float)
    valid = np.array([True, True, False, True])
    out = camera.arc_length_reparameterize(pts, valid, 5)
    np.testing.assert_allclose(out, [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1]], atol=1e-12)
    # batched and static traces
    batch = np.stack([pts[[0, 1, 3, 3]], np.ones((4, 2))])
    out = camera.arc_length_reparameterize(batch, None, 3)
    np.testing.assert_allclose(out[0], [[0, 0], [1, 0], [1, 1]], atol=1e-12)
    np.testing.assert_allclose(out[1], np.ones((3, 2)))
    steps = np.linalg.norm(np.diff(camera.arc_length_reparameterize(
        np.stack([np.cos(3 * t), np.sin(3 * t)], -1), None, 33), axis=0), axis=-1)
    assert steps.std() / steps.mean() < 0.01


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="uv_px"):
        camera.deproject(np.zeros((4, 3)), np.ones(4), INTR)
    with pytest.raises(ValueError, match="depth_m"):
        camera.deproject(np.zeros((4, 2)), np.ones(3), INTR)
    with pytest.raises(ValueError, match="uv_px"):
        camera.deproject([[np.nan, 1.0]], [1.0], INTR)
    with pytest.raises(ValueError, match="xyz"):
        camera.project(np.zeros((4, 2)), INTR)
    with pytest.raises(ValueError, match="xyz"):
        camera.project([[np.inf, 0, 1]], INTR)
    with pytest.raises(ValueError, match="intr"):
        camera.project([[0, 0, 1.0]], "not intrinsics")
    with pytest.raises(ValueError, match="distortion_model"):
        fisheye = CameraIntrinsics(640, 480, 600, 600, 320, 240, "equidistant", (0.1, 0.01, 0, 0))
        camera.deproject([[1.0, 2.0]], [1.0], fisheye)
    with pytest.raises(ValueError, match="distortion"):
        camera.project([[0, 0, 1.0]], CameraIntrinsics(640, 480, 600, 600, 320, 240, "plumb_bob", (0.1, 0.2)))
    with pytest.raises(ValueError, match="uvz"):
        camera.uvz_to_xyz(np.zeros((3, 2)), INTR)
    with pytest.raises(ValueError, match="width/height"):
        camera.pixels_to_normalized([[0, 0]], 0, 480)
    with pytest.raises(ValueError, match="valid"):
        camera.arc_length_reparameterize(np.zeros((5, 3)), np.zeros(5, bool), 4)
    with pytest.raises(ValueError, match="num_samples"):
        camera.arc_length_reparameterize(np.zeros((5, 3)), None, 1)
    with pytest.raises(ValueError, match="quat_xyzw"):
        RigidTransform.from_quat_xyzw([0, 0, 0, 0], [0, 0, 0])
