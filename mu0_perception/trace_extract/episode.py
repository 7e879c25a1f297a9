"""Episode input for TraceExtract: a rosbag2 (sim or real RealSense recording) or a folder of
frames + depth + intrinsics, read into one `Episode` of numpy arrays.

Bags are read with rosbags' AnyReader (mcap or sqlite3) and a typestore that knows mu0_msgs;
message -> numpy conversion goes through mu0_ros.convert (duck-typed, works on rosbags messages).
Camera pose and ground truth are optional (a real recording has neither).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_core.trace_spec import STEP_PERIOD_S


class EpisodeReadError(ValueError):
    """An episode could not be read; the message names the path and what is wrong."""


@dataclass
class BagTopics:
    color: str = "/camera/camera/color/image_raw"
    depth: str = "/camera/camera/aligned_depth_to_color/image_raw"
    camera_info: str = "/camera/camera/color/camera_info"
    instruction: str = "/mu0/instruction"
    camera_pose: str = "/mu0/sim/camera_pose"
    ground_truth: str = "/mu0/sim/ground_truth"
    joint_states: str = "/joint_states"


@dataclass
class Episode:
    episode_id: str
    color: np.ndarray                    # (T, H, W, 3) uint8 RGB
    depth: np.ndarray                    # (T, H, W) float32 m, NaN invalid
    intrinsics: CameraIntrinsics
    stamps_ns: np.ndarray                # (T,) int64
    instruction: str = ""
    task: str = ""
    T_world_cam: np.ndarray | None = None   # (T, 4, 4) camera pose per frame (world = base), or None
    gt_names: list = field(default_factory=list)
    gt_world: np.ndarray | None = None      # (T, K, 3) ground-truth points in the world frame
    gripper: np.ndarray | None = None       # (T,) gripper opening signal (joint position), or None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        T = len(self.color)
        if T < 2:
            raise EpisodeReadError(f"episode {self.episode_id}: needs >= 2 frames, got {T}")
        if self.color.ndim != 4 or self.color.shape[-1] != 3 or self.color.dtype != np.uint8:
            raise EpisodeReadError(f"episode {self.episode_id}: color must be (T, H, W, 3) uint8, "
                                   f"got {self.color.shape} {self.color.dtype}")
        if self.depth.shape != self.color.shape[:3]:
            raise EpisodeReadError(f"episode {self.episode_id}: depth shape {self.depth.shape} != "
                                   f"color {self.color.shape[:3]}")
        if (self.intrinsics.height, self.intrinsics.width) != self.color.shape[1:3]:
            raise EpisodeReadError(f"episode {self.episode_id}: intrinsics size "
                                   f"{self.intrinsics.width}x{self.intrinsics.height} != image size "
                                   f"{self.color.shape[2]}x{self.color.shape[1]}")
        if self.T_world_cam is not None and self.T_world_cam.shape != (T, 4, 4):
            raise EpisodeReadError(f"episode {self.episode_id}: T_world_cam must be ({T}, 4, 4), "
                                   f"got {self.T_world_cam.shape}")

    @property
    def num_frames(self) -> int:
        return len(self.color)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.color.shape[2], self.color.shape[1]

    def resized(self, width: int, height: int) -> "Episode":
        """The same episode at another image size (intrinsics scaled, depth nearest-neighbour)."""
        if (width, height) == self.image_size:
            return self
        color = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_AREA) for c in self.color])
        depth = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_NEAREST) for d in self.depth])
        return Episode(self.episode_id, color, depth, self.intrinsics.scaled(width, height), self.stamps_ns,
                       self.instruction, self.task, self.T_world_cam, self.gt_names, self.gt_world,
                       self.gripper, self.metadata)


def _nearest(stamps: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index into sorted `stamps` of the nearest stamp to each query."""
    i = np.clip(np.searchsorted(stamps, query), 1, len(stamps) - 1)
    left = stamps[i - 1]
    return np.where(np.abs(query - left) <= np.abs(stamps[i] - query), i - 1, i)


def read_bag(path, topics: BagTopics | None = None, max_sync_ns: int = 20_000_000) -> Episode:
    """Read one rosbag2 directory (with metadata.yaml) into an Episode.

    Depth is matched to colour by nearest header stamp (within max_sync_ns); pose, ground truth
    and joint states by nearest stamp. Raises EpisodeReadError naming the bag for missing topics,
    undecodable or truncated files, or mismatched sizes."""
    from rosbags.highlevel import AnyReader

    from mu0_ros import convert

    topics = topics or BagTopics()
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise EpisodeReadError(f"bag {path}: no metadata.yaml (not a rosbag2 directory)")
    colors, depths, infos, poses, gts, joints = [], [], [], [], [], []
    instruction = ""
    try:
        with AnyReader([path], default_typestore=convert.mu0_typestore()) as reader:
            have = {c.topic for c in reader.connections}
            for need in (topics.color, topics.depth, topics.camera_info):
                if need not in have:
                    raise EpisodeReadError(f"bag {path}: topic {need} missing (has {sorted(have)})")
            wanted = {topics.color, topics.depth, topics.camera_info, topics.instruction,
                      topics.camera_pose, topics.ground_truth, topics.joint_states}
            conns = [c for c in reader.connections if c.topic in wanted]
            for conn, t_ns, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == topics.instruction:
                    instruction = instruction or str(msg.data)
                    continue
                stamp = convert.stamp_to_ns(msg.header.stamp)
                if conn.topic == topics.color:
                    colors.append((stamp, convert.color_from_image(msg)))
                elif conn.topic == topics.depth:
                    depths.append((stamp, convert.depth_from_image(msg)))
                elif conn.topic == topics.camera_info and not infos:
                    infos.append(convert.intrinsics_from_camera_info(msg))
                elif conn.topic == topics.camera_pose:
                    poses.append((stamp, convert.pose_to_rigid(msg.pose).as_matrix()))
                elif conn.topic == topics.ground_truth:
                    gts.append((stamp, convert.named_points_to_dict(msg)))
                elif conn.topic == topics.joint_states:
                    joints.append((stamp, list(msg.name), np.asarray(msg.position, dtype=np.float64)))
    except EpisodeReadError:
        raise
    except Exception as exc:  # rosbags / mcap raise many types for damaged files
        raise EpisodeReadError(f"bag {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if not colors:
        raise EpisodeReadError(f"bag {path}: no messages on {topics.color}")
    if not depths:
        raise EpisodeReadError(f"bag {path}: no messages on {topics.depth}")
    if not infos:
        raise EpisodeReadError(f"bag {path}: no messages on {topics.camera_info}")
    colors.sort(key=lambda x: x[0])
    depths.sort(key=lambda x: x[0])
    c_st = np.array([s for s, _ in colors], np.int64)
    d_st = np.array([s for s, _ in depths], np.int64)
    j = _nearest(d_st, c_st) if len(d_st) > 1 else np.zeros(len(c_st), int)
    keep = np.abs(d_st[j] - c_st) <= max_sync_ns
    if keep.sum() < 2:
        raise EpisodeReadError(f"bag {path}: fewer than 2 colour frames have depth within "
                               f"{max_sync_ns / 1e6:.0f} ms")
    idx = np.nonzero(keep)[0]
    stamps = c_st[idx]
    color = np.stack([colors[i][1] for i in idx])
    depth = np.stack([depths[j[i]][1] for i in idx]).astype(np.float32)
    meta = {}
    sidecar = path / "episode.json"
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise EpisodeReadError(f"bag {path}: episode.json is not valid JSON ({exc})") from exc

    def by_stamp(items):
        items.sort(key=lambda x: x[0])
        st = np.array([x[0] for x in items], np.int64)
        return _nearest(st, stamps) if len(st) > 1 else np.zeros(len(stamps), int)

    T_world_cam = None
    if poses:
        k = by_stamp(poses)
        T_world_cam = np.stack([poses[i][1] for i in k])
    elif "T_base_cam" in meta:  # static camera: the sidecar's pose for every frame
        T_world_cam = np.repeat(_matrix_from_meta(meta["T_base_cam"], path)[None], len(stamps), axis=0)
    gt_names, gt_world = [], None
    if gts:
        k = by_stamp(gts)
        gt_names = list(gts[0][1])
        gt_world = np.stack([[gts[i][1].get(n, np.full(3, np.nan)) for n in gt_names] for i in k])
    gripper = None
    if joints:
        k = by_stamp(joints)
        names = joints[0][1]
        gi = [i for i, n in enumerate(names) if "grip" in n.lower() or "finger" in n.lower()]
        if gi:
            gripper = np.array([np.mean(joints[i][2][gi]) for i in k])
    return Episode(episode_id=str(meta.get("episode_id", path.name)), color=color, depth=depth,
                   intrinsics=infos[0], stamps_ns=stamps, instruction=instruction or str(meta.get("instruction", "")),
                   task=str(meta.get("task", "")), T_world_cam=T_world_cam, gt_names=gt_names,
                   gt_world=gt_world, gripper=gripper, metadata=meta)


def _matrix_from_meta(value, path) -> np.ndarray:
    """T_base_cam in episode.json: a 4x4 list, or {translation: [3], quat_xyzw: [4]}."""
    from mu0_core.camera import RigidTransform

    try:
        if isinstance(value, dict):
            q = value.get("quat_xyzw", value.get("rotation"))
            return RigidTransform.from_quat_xyzw(q, value["translation"]).as_matrix()
        M = np.asarray(value, dtype=float)
        if M.shape == (4, 4):
            return M
        if M.shape == (7,):  # x y z qx qy qz qw
            return RigidTransform.from_quat_xyzw(M[3:], M[:3]).as_matrix()
    except (KeyError, TypeError, ValueError) as exc:
        raise EpisodeReadError(f"bag {path}: episode.json field T_base_cam is malformed ({exc})") from exc
    raise EpisodeReadError(f"bag {path}: episode.json field T_base_cam has unsupported shape {M.shape}")


def read_folder(path) -> Episode:
    """A folder episode: `color/*.png` (RGB), `depth/*.png` (uint16 mm) or `depth/*.npy` (float m),
    `intrinsics.json` ({width, height, fx, fy, cx, cy}), optional `episode.json` (instruction,
    task, optional `T_world_cam` list of 4x4 per frame). Frames pair by sorted file name."""
    import imageio.v3 as iio

    path = Path(path)
    cfile = path / "intrinsics.json"
    if not cfile.is_file():
        raise EpisodeReadError(f"folder {path}: intrinsics.json missing")
    try:
        k = json.loads(cfile.read_text())
        intr = CameraIntrinsics(int(k["width"]), int(k["height"]), float(k["fx"]), float(k["fy"]),
                                float(k["cx"]), float(k["cy"]))
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise EpisodeReadError(f"folder {path}: intrinsics.json malformed ({exc})") from exc
    cfiles = sorted((path / "color").glob("*.png")) + sorted((path / "color").glob("*.jpg"))
    dfiles = sorted((path / "depth").glob("*.png")) + sorted((path / "depth").glob("*.npy"))
    if not cfiles or len(cfiles) != len(dfiles):
        raise EpisodeReadError(f"folder {path}: {len(cfiles)} colour vs {len(dfiles)} depth frames")
    color = np.stack([np.asarray(iio.imread(f))[..., :3] for f in cfiles]).astype(np.uint8)
    depth = []
    for f in dfiles:
        if f.suffix == ".npy":
            d = np.load(f, allow_pickle=False).astype(np.float32)
        else:
            raw = np.asarray(iio.imread(f))
            d = raw.astype(np.float32) / 1000.0
            d[raw == 0] = np.nan
        depth.append(d)
    meta = json.loads((path / "episode.json").read_text()) if (path / "episode.json").is_file() else {}
    T = meta.get("T_world_cam")
    period_ns = int(float(meta.get("step_period", STEP_PERIOD_S)) * 1e9)
    return Episode(episode_id=str(meta.get("episode_id", path.name)), color=color, depth=np.stack(depth),
                   intrinsics=intr, stamps_ns=np.arange(len(color), dtype=np.int64) * period_ns,
                   instruction=str(meta.get("instruction", "")), task=str(meta.get("task", "")),
                   T_world_cam=None if T is None else np.asarray(T, dtype=float), metadata=meta)


def read_episode(path, topics: BagTopics | None = None) -> Episode:
    """A bag directory (metadata.yaml) or a frame folder (intrinsics.json)."""
    path = Path(path)
    if (path / "metadata.yaml").is_file():
        return read_bag(path, topics)
    if (path / "intrinsics.json").is_file():
        return read_folder(path)
    raise EpisodeReadError(f"{path}: neither a rosbag2 directory (metadata.yaml) nor a frame folder "
                           f"(intrinsics.json)")
