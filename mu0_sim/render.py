"""Offscreen RGB + metric-depth rendering of one MuJoCo camera, with its intrinsics and pose.

One render pass reads colour and depth together. MuJoCo's depth buffer is a (reversed) OpenGL
z-buffer, not metres; `zbuffer_to_metres` undoes the projection. Cameras whose image comes out
upside down (their "up" axis points down in the world) are rotated 180 degrees, and their
intrinsics and optical-frame pose are rotated with them, so pixels, intrinsics and pose always
agree. No ROS imports.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from mu0_core.camera import CameraIntrinsics, RigidTransform

# Beyond this a depth reading is sky/far floor, not a surface a depth camera would return.
DEFAULT_MAX_DEPTH_M = 10.0

# MuJoCo cameras look down -z with y up; the optical frame has y down and z forward.
_MJCAM_TO_OPTICAL = np.diag([1.0, -1.0, -1.0])
_ROT_Z_180 = np.diag([-1.0, -1.0, 1.0])


def zbuffer_to_metres(zbuf: np.ndarray, znear: float, zfar: float) -> np.ndarray:
    """Linear depth (metres along the optical axis) from MuJoCo's reversed-Z depth buffer.

    MuJoCo 3 renders with reversed Z: window depth 1 at the near plane and 0 at the far plane,
    z = znear * (zfar - d) / (d * (zfar - znear)) for a point at optical-axis distance d. Inverted
    in float64, since float32 loses precision far from the camera.
    """
    z = zbuf.astype(np.float64)
    depth = (znear * zfar) / (znear + z * (zfar - znear))
    return depth.astype(np.float32)


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> CameraIntrinsics:
    """Pinhole intrinsics of a MuJoCo camera (vertical field of view, square pixels)."""
    if not (0.0 < fovy_deg < 180.0):
        raise ValueError(f"fovy_deg must be in (0, 180), got {fovy_deg}")
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
    # the frustum spans the outer pixel edges; pixel centres are at integers
    return CameraIntrinsics(int(width), int(height), f, f, (width - 1) / 2.0, (height - 1) / 2.0)


@dataclass
class CameraModel:
    name: str
    camera_id: int
    intrinsics: CameraIntrinsics
    rotate_180: bool


class CameraRenderer:
    """Renders one named camera of a model to (colour uint8 RGB, depth float32 metres, NaN invalid)."""

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, camera: str, width: int = 320,
                 height: int = 240, shadows: bool = False, reflections: bool = False,
                 max_depth_m: float = DEFAULT_MAX_DEPTH_M):
        if width <= 0 or height <= 0:
            raise ValueError(f"width/height must be positive, got {width}x{height}")
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"camera {camera!r} is not in the model; available: {names}")
        self.model = model
        self.width, self.height = int(width), int(height)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        # Meta-World's corner cameras (corner..corner4) have their "up" axis pointing down in the
        # world, so their images come out upside down: decide from the pose, not from a name list
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        up_world = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        self.camera = CameraModel(camera, cam_id,
                                  intrinsics_from_fovy(float(model.cam_fovy[cam_id]), width, height),
                                  bool(up_world[2] < 0.0))
        if not (max_depth_m > 0):
            raise ValueError(f"max_depth_m must be positive, got {max_depth_m}")
        self.max_depth_m = float(max_depth_m)
        self._gl = mujoco.GLContext(self.width, self.height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        # read depth as reversed Z (1 = near, 0 = far): float depth keeps precision far away;
        # the default (0 = near) would need the other inverse in zbuffer_to_metres
        self._ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=10000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(shadows)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflections)
        self._option = mujoco.MjvOption()
        self._mjv_cam = mujoco.MjvCamera()
        self._mjv_cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._mjv_cam.fixedcamid = cam_id
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._zbuf = np.empty((self.height, self.width), np.float32)
        extent = model.stat.extent
        self.znear = float(model.vis.map.znear * extent)
        self.zfar = float(model.vis.map.zfar * extent)

    @property
    def intrinsics(self) -> CameraIntrinsics:
        intr = self.camera.intrinsics
        if self.camera.rotate_180:
            # rotating the image 180 degrees maps u -> W-1-u, v -> H-1-v
            return CameraIntrinsics(intr.width, intr.height, intr.fx, intr.fy,
                                    intr.width - 1 - intr.cx, intr.height - 1 - intr.cy)
        return intr

    def camera_pose(self, data: mujoco.MjData) -> RigidTransform:
        """T_world_cam of the (possibly rotated) colour optical frame, from data.cam_xpos/xmat."""
        cid = self.camera.camera_id
        R = data.cam_xmat[cid].reshape(3, 3) @ _MJCAM_TO_OPTICAL
        if self.camera.rotate_180:
            R = R @ _ROT_Z_180
        # re-orthonormalise: cam_xmat is float64 but may carry tiny drift after moved cameras
        u, _, vt = np.linalg.svd(R)
        return RigidTransform(u @ vt, data.cam_xpos[cid].copy())

    def render(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        self._gl.make_current()
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._mjv_cam,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._rect, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, self._zbuf, self._rect, self._ctx)
        depth = zbuffer_to_metres(self._zbuf, self.znear, self.zfar)
        # nothing hit (far plane) or beyond a depth camera's range: invalid
        depth[depth >= min(0.999 * self.zfar, self.max_depth_m)] = np.nan
        # OpenGL rows are bottom-up
        if self.camera.rotate_180:
            color, depth = self._rgb[:, ::-1], depth[:, ::-1]
        else:
            color, depth = self._rgb[::-1], depth[::-1]
        return np.ascontiguousarray(color), np.ascontiguousarray(depth)

    def render_segmentation(self, data: mujoco.MjData) -> np.ndarray:
        """(H, W) int32 geom id seen at each pixel (-1: nothing), aligned with `render`'s images.
        For evaluation (which body a query landed on), not for the robot's own perception."""
        self._gl.make_current()
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        try:
            mujoco.mjv_updateScene(self.model, data, self._option, None, self._mjv_cam,
                                   mujoco.mjtCatBit.mjCAT_ALL, self._scene)
            mujoco.mjr_render(self._rect, self._scene, self._ctx)
            rgb = np.empty_like(self._rgb)
            mujoco.mjr_readPixels(rgb, None, self._rect, self._ctx)
        finally:
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 0
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        ids = rgb[..., 0].astype(np.int32) + rgb[..., 1].astype(np.int32) * 256 + rgb[..., 2].astype(np.int32) * 65536
        seg_obj = np.full(ids.shape, -1, np.int32)      # scene geoms carry 1-based segids
        hit = ids > 0
        geoms = self._scene.geoms
        objid = np.array([geoms[i].objid for i in range(self._scene.ngeom)], np.int32)
        objtype = np.array([geoms[i].objtype for i in range(self._scene.ngeom)], np.int32)
        k = ids[hit] - 1
        ok = k < len(objid)
        vals = np.full(k.shape, -1, np.int32)
        vals[ok] = np.where(objtype[k[ok]] == int(mujoco.mjtObj.mjOBJ_GEOM), objid[k[ok]], -1)
        seg_obj[hit] = vals
        seg = seg_obj[::-1] if not self.camera.rotate_180 else seg_obj[:, ::-1]
        return np.ascontiguousarray(seg)

    def close(self) -> None:
        if self._ctx is not None:
            self._gl.make_current()
            self._ctx.free()
            self._ctx = None
            self._gl.free()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass
