"""Serial kinematic chains in pure numpy: URDF / MJCF loading, forward kinematics, Jacobians and
damped-least-squares inverse kinematics with joint limits.

A chain is a list of elements from the robot base to the tool. Each element is a fixed transform
(`origin`, in its parent's frame) followed, for a movable joint, by the joint's motion about / along
`axis` (expressed in the element's frame after `origin`). The tool frame is the last element's frame
composed with `tip`. This is the URDF joint model; MJCF bodies map onto it (see `chain_from_mjcf`).

No ROS and no MuJoCo at run time: MuJoCo is only used (optionally) to *read* an MJCF file.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

MOVABLE_KINDS = ("revolute", "prismatic")


class KinematicsError(ValueError):
    """A kinematic description could not be loaded (the message names the file and the element)."""


# --------------------------------------------------------------------------------------------- math
def rotation_about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula for a unit axis."""
    x, y, z = axis
    c, s = np.cos(angle), np.sin(angle)
    C = 1.0 - c
    return np.array([
        [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
        [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
        [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
    ])


def rpy_to_matrix(rpy) -> np.ndarray:
    """URDF roll-pitch-yaw (fixed axes X, then Y, then Z): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def quat_wxyz_to_matrix(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def make_transform(rotation=None, translation=None) -> np.ndarray:
    T = np.eye(4)
    if rotation is not None:
        T[:3, :3] = rotation
    if translation is not None:
        T[:3, 3] = translation
    return T


def rotation_error(R_current: np.ndarray, R_target: np.ndarray) -> np.ndarray:
    """Axis-angle vector (base frame) rotating R_current onto R_target."""
    R_err = R_target @ R_current.T
    cos_angle = np.clip((np.trace(R_err) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos_angle)
    v = np.array([R_err[2, 1] - R_err[1, 2], R_err[0, 2] - R_err[2, 0], R_err[1, 0] - R_err[0, 1]])
    if angle < 1e-9:
        return 0.5 * v
    if np.pi - angle < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(R_err) + 1.0) / 2.0, 0.0, None))
        axis *= np.where(v >= 0, 1.0, -1.0)
        return angle * axis / max(np.linalg.norm(axis), 1e-12)
    return angle * v / (2.0 * np.sin(angle))


# --------------------------------------------------------------------------------------------- chain
@dataclass
class ChainJoint:
    name: str
    kind: str                      # "revolute" | "prismatic" | "fixed"
    origin: np.ndarray             # (4, 4) parent frame -> this element's frame at q = 0
    axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    lower: float = -np.inf
    upper: float = np.inf
    max_velocity: float = np.inf


@dataclass
class IKResult:
    joint_positions: np.ndarray    # (n,)
    converged: bool
    position_error: float          # metres
    orientation_error: float       # radians (0 when orientation was not asked for)
    iterations: int


class KinematicChain:
    """A serial chain base -> tip. `joint_names` lists the movable joints in chain order."""

    def __init__(self, elements: list[ChainJoint], tip: np.ndarray | None = None, name: str = ""):
        for e in elements:
            if e.kind not in MOVABLE_KINDS + ("fixed",):
                raise KinematicsError(f"chain {name!r}: joint {e.name!r} has unsupported kind {e.kind!r}")
            if e.kind in MOVABLE_KINDS:
                n = np.linalg.norm(e.axis)
                if not np.isfinite(n) or n < 1e-12:
                    raise KinematicsError(f"chain {name!r}: joint {e.name!r} has a zero axis")
                e.axis = np.asarray(e.axis, dtype=float) / n
        self.name = name
        self.elements = elements
        self.tip = np.eye(4) if tip is None else np.asarray(tip, dtype=float)
        self.movable = [e for e in elements if e.kind in MOVABLE_KINDS]
        self.joint_names = [e.name for e in self.movable]
        self.lower = np.array([e.lower for e in self.movable], dtype=float)
        self.upper = np.array([e.upper for e in self.movable], dtype=float)
        self.max_velocity = np.array([e.max_velocity for e in self.movable], dtype=float)

    @property
    def dof(self) -> int:
        return len(self.movable)

    def _check_q(self, q) -> np.ndarray:
        q = np.asarray(q, dtype=float).reshape(-1)
        if q.shape != (self.dof,):
            raise ValueError(f"joint_positions: expected {self.dof} values for {self.joint_names}, got {q.shape}")
        return q

    def _frames(self, q):
        """Yield (element, frame after origin) for every element, and return the tool frame."""
        T = np.eye(4)
        i = 0
        out = []
        for e in self.elements:
            T = T @ e.origin
            out.append((e, T, q[i] if e.kind in MOVABLE_KINDS else None))
            if e.kind == "revolute":
                M = np.eye(4)
                M[:3, :3] = rotation_about_axis(e.axis, q[i])
                T = T @ M
                i += 1
            elif e.kind == "prismatic":
                M = np.eye(4)
                M[:3, 3] = e.axis * q[i]
                T = T @ M
                i += 1
        return out, T @ self.tip

    def fk(self, q) -> np.ndarray:
        """Tool pose (4, 4) in the chain's base frame."""
        return self._frames(self._check_q(q))[1]

    def fk_position(self, q) -> np.ndarray:
        return self.fk(q)[:3, 3]

    def link_points(self, q) -> np.ndarray:
        """(K, 3) the origin of every movable joint and the tool point, base to tip: the arm's
        skeleton (e.g. for a robot self filter that masks the arm's pixels)."""
        frames, tool = self._frames(self._check_q(q))
        pts = [T[:3, 3] for e, T, _ in frames if e.kind in MOVABLE_KINDS]
        return np.array([*pts, tool[:3, 3]], dtype=float)

    def jacobian(self, q) -> tuple[np.ndarray, np.ndarray]:
        """(tool pose (4, 4), geometric Jacobian (6, n): rows vx vy vz wx wy wz in the base frame)."""
        frames, T_tip = self._frames(self._check_q(q))
        p_tip = T_tip[:3, 3]
        J = np.zeros((6, self.dof))
        col = 0
        for e, T, _ in frames:
            if e.kind == "fixed":
                continue
            axis_w = T[:3, :3] @ e.axis
            if e.kind == "revolute":
                J[:3, col] = np.cross(axis_w, p_tip - T[:3, 3])
                J[3:, col] = axis_w
            else:
                J[:3, col] = axis_w
            col += 1
        return T_tip, J

    def clamp(self, q) -> np.ndarray:
        return np.clip(q, self.lower, self.upper)

    def ik(self, target_position, initial_positions, target_rotation=None, orientation_weight: float = 0.3,
           damping: float = 0.05, max_iterations: int = 100, position_tolerance: float = 1e-4,
           orientation_tolerance: float = 1e-3, max_step: float = 0.2) -> IKResult:
        """Damped least squares (Levenberg-Marquardt style) from `initial_positions`, clamped to the
        joint limits every iteration. With `target_rotation` the orientation error is weighted by
        `orientation_weight` (metres per radian) so position dominates on a redundant arm."""
        target_position = np.asarray(target_position, dtype=float).reshape(3)
        if not np.all(np.isfinite(target_position)):
            raise ValueError(f"target_position must be finite, got {target_position}")
        q = self.clamp(self._check_q(initial_positions).copy())
        use_rot = target_rotation is not None
        rows = 6 if use_rot else 3
        lam2 = damping ** 2
        pos_err = rot_err = np.inf
        for it in range(max_iterations + 1):
            T, J = self.jacobian(q)
            e_pos = target_position - T[:3, 3]
            pos_err = float(np.linalg.norm(e_pos))
            if use_rot:
                e_rot = rotation_error(T[:3, :3], target_rotation)
                rot_err = float(np.linalg.norm(e_rot))
                e = np.concatenate([e_pos, orientation_weight * e_rot])
                Jt = np.vstack([J[:3], orientation_weight * J[3:]])
            else:
                rot_err = 0.0
                e, Jt = e_pos, J[:3]
            if pos_err < position_tolerance and rot_err < orientation_tolerance:
                return IKResult(q, True, pos_err, rot_err, it)
            if it == max_iterations:
                break
            dq = Jt.T @ np.linalg.solve(Jt @ Jt.T + lam2 * np.eye(rows), e)
            biggest = np.max(np.abs(dq))
            if biggest > max_step:
                dq *= max_step / biggest
            q = self.clamp(q + dq)
        return IKResult(q, False, pos_err, rot_err, max_iterations)


# --------------------------------------------------------------------------------------------- URDF
def _floats(text: str | None, n: int, default: float, where: str) -> np.ndarray:
    if text is None:
        return np.full(n, default, dtype=float)
    try:
        vals = np.array([float(v) for v in text.split()], dtype=float)
    except ValueError as err:
        raise KinematicsError(f"{where}: cannot parse numbers from {text!r}") from err
    if vals.shape != (n,):
        raise KinematicsError(f"{where}: expected {n} numbers, got {text!r}")
    return vals


def chain_from_urdf(urdf: str, base_link: str, tip_link: str, tip_offset=None, source: str | None = None
                    ) -> KinematicChain:
    """Build the chain base_link -> tip_link from a URDF file path or XML text.

    Joint types revolute, continuous (unlimited revolute), prismatic and fixed are supported; the
    chain's movable joints are those on the path. `tip_offset` (xyz, tool frame) moves the tool point.
    """
    is_text = urdf.lstrip().startswith("<")
    where = source or ("<urdf text>" if is_text else urdf)
    try:
        root = ET.fromstring(urdf) if is_text else ET.parse(urdf).getroot()
    except (ET.ParseError, OSError) as err:
        raise KinematicsError(f"{where}: cannot read URDF: {err}") from err
    by_child = {}
    for j in root.findall("joint"):
        name = j.get("name")
        parent, child = j.find("parent"), j.find("child")
        if name is None or parent is None or child is None:
            raise KinematicsError(f"{where}: a <joint> lacks a name, <parent> or <child>")
        by_child[child.get("link")] = j
    links = {lk.get("name") for lk in root.findall("link")}
    for needed, what in ((base_link, "base_link"), (tip_link, "tip_link")):
        if needed not in links:
            raise KinematicsError(f"{where}: {what} {needed!r} is not a <link> of the URDF")
    path = []
    link = tip_link
    while link != base_link:
        j = by_child.get(link)
        if j is None:
            raise KinematicsError(f"{where}: no joint path from {base_link!r} to {tip_link!r}")
        path.append(j)
        link = j.find("parent").get("link")
    elements = []
    for j in reversed(path):
        name, kind = j.get("name"), j.get("type")
        w = f"{where}: joint {name!r}"
        if kind == "continuous":
            kind = "revolute_unlimited"
        if kind not in ("revolute", "revolute_unlimited", "prismatic", "fixed"):
            raise KinematicsError(f"{w}: unsupported type {j.get('type')!r}")
        o = j.find("origin")
        xyz = _floats(o.get("xyz") if o is not None else None, 3, 0.0, f"{w} origin xyz")
        rpy = _floats(o.get("rpy") if o is not None else None, 3, 0.0, f"{w} origin rpy")
        a = j.find("axis")
        axis = _floats(a.get("xyz") if a is not None else None, 3, 0.0, f"{w} axis") if a is not None \
            else np.array([1.0, 0.0, 0.0])
        lower, upper, vmax = -np.inf, np.inf, np.inf
        lim = j.find("limit")
        if kind in ("revolute", "prismatic"):
            if lim is None:
                raise KinematicsError(f"{w}: a {kind} joint needs a <limit>")
            lower = float(lim.get("lower", 0.0))
            upper = float(lim.get("upper", 0.0))
        if lim is not None and lim.get("velocity") is not None:
            vmax = float(lim.get("velocity"))
        elements.append(ChainJoint(name=name, kind="revolute" if kind == "revolute_unlimited" else kind,
                                   origin=make_transform(rpy_to_matrix(rpy), xyz), axis=axis,
                                   lower=lower, upper=upper, max_velocity=vmax))
    tip = make_transform(translation=tip_offset) if tip_offset is not None else None
    return KinematicChain(elements, tip=tip, name=f"{os.path.basename(where)}:{base_link}->{tip_link}")


# --------------------------------------------------------------------------------------------- MJCF
def resolve_model_path(path: str, relative_to: str | None = None) -> str:
    """`metaworld:<rel>` -> file inside the installed metaworld assets; relative paths are taken from
    the directory of `relative_to` (the config file that names them)."""
    if path.startswith("metaworld:"):
        import metaworld  # only to locate its bundled assets

        return os.path.join(os.path.dirname(metaworld.__file__), "assets", path.split(":", 1)[1])
    if not os.path.isabs(path) and relative_to:
        return os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    return path


def chain_from_mjcf(xml_path: str, tip_site: str, base_body: str = "world", joint_names=None,
                    tip_offset=None) -> KinematicChain:
    """Read the body tree from an MJCF model (compiled by MuJoCo, so includes and defaults are
    resolved) and return the chain base_body -> tip_site as a pure-numpy KinematicChain.

    Hinge and slide joints become revolute / prismatic elements (MJCF joints pivot about `pos` in
    their body, which becomes origin = Trans(pos) and a fixed Trans(-pos) after the motion). Joints on
    the path that are not in `joint_names` (when given) are an error: the chain must match the robot.
    """
    import mujoco  # read-only use: parse + compile the model

    try:
        model = mujoco.MjModel.from_xml_path(xml_path)
    except Exception as err:  # mujoco raises ValueError with its own message
        raise KinematicsError(f"{xml_path}: cannot load MJCF: {err}") from err
    sid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, tip_site)
    if sid < 0:
        raise KinematicsError(f"{xml_path}: tip site {tip_site!r} not found")
    base_id = 0 if base_body == "world" else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, base_body)
    if base_id < 0:
        raise KinematicsError(f"{xml_path}: base body {base_body!r} not found")
    bodies = []
    b = int(model.site_bodyid[sid])
    while b != base_id:
        if b == 0:
            raise KinematicsError(f"{xml_path}: site {tip_site!r} is not below body {base_body!r}")
        bodies.append(b)
        b = int(model.body_parentid[b])
    elements: list[ChainJoint] = []
    for b in reversed(bodies):
        bname = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b)
        elements.append(ChainJoint(name=f"{bname}_frame", kind="fixed",
                                   origin=make_transform(quat_wxyz_to_matrix(model.body_quat[b]), model.body_pos[b])))
        for j in range(model.body_jntadr[b], model.body_jntadr[b] + model.body_jntnum[b]):
            jname = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j)
            jtype = int(model.jnt_type[j])
            if jtype == mujoco.mjtJoint.mjJNT_HINGE:
                kind = "revolute"
            elif jtype == mujoco.mjtJoint.mjJNT_SLIDE:
                kind = "prismatic"
            else:
                raise KinematicsError(f"{xml_path}: joint {jname!r} on the chain is a ball/free joint")
            if joint_names is not None and jname not in joint_names:
                raise KinematicsError(f"{xml_path}: joint {jname!r} on the chain to {tip_site!r} is not one of "
                                      f"the robot's joints {list(joint_names)}")
            lo, hi = (model.jnt_range[j] if model.jnt_limited[j] else (-np.inf, np.inf))
            pivot = np.array(model.jnt_pos[j], dtype=float)
            elements.append(ChainJoint(name=jname, kind=kind, origin=make_transform(translation=pivot),
                                       axis=np.array(model.jnt_axis[j], dtype=float), lower=float(lo), upper=float(hi)))
            if np.any(pivot != 0):
                elements.append(ChainJoint(name=f"{jname}_unpivot", kind="fixed", origin=make_transform(translation=-pivot)))
    tip = make_transform(quat_wxyz_to_matrix(model.site_quat[sid]), model.site_pos[sid])
    if tip_offset is not None:
        tip = tip @ make_transform(translation=tip_offset)
    chain = KinematicChain(elements, tip=tip, name=f"{os.path.basename(xml_path)}:{base_body}->{tip_site}")
    if joint_names is not None:
        missing = [n for n in joint_names if n not in chain.joint_names]
        if missing and not set(chain.joint_names) <= set(joint_names):
            raise KinematicsError(f"{xml_path}: chain to {tip_site!r} has none of the joints {missing}")
    return chain


# --------------------------------------------------------------------------------------------- robot map
class RobotKinematics:
    """Maps between the robot's command joint vector and the chain's movable joints.

    The command joints may include joints that are not on the chain (a gripper): they pass through
    unchanged. Every chain joint must be a command joint.
    """

    def __init__(self, chain: KinematicChain, command_joint_names: list[str]):
        missing = [n for n in chain.joint_names if n not in command_joint_names]
        if missing:
            raise KinematicsError(f"chain {chain.name!r}: joints {missing} are not among the robot's "
                                  f"joints {command_joint_names}")
        self.chain = chain
        self.joint_names = list(command_joint_names)
        self.index = np.array([command_joint_names.index(n) for n in chain.joint_names], dtype=int)

    def chain_q(self, q_robot) -> np.ndarray:
        return np.asarray(q_robot, dtype=float)[self.index]

    def with_chain_q(self, q_robot, q_chain) -> np.ndarray:
        out = np.array(q_robot, dtype=float, copy=True)
        out[self.index] = q_chain
        return out

    def ee_pose(self, q_robot) -> np.ndarray:
        return self.chain.fk(self.chain_q(q_robot))

    def link_points(self, q_robot) -> np.ndarray:
        return self.chain.link_points(self.chain_q(q_robot))
