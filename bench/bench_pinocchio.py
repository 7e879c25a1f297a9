"""Pinocchio (`pin` from the package registry; ros-<distro>-pinocchio on ROS) against our pure-numpy
kinematics (mu0_policy/experts/kinematics.py): FK agreement and speed on the UR5e URDF and on the
Sawyer MJCF (both against MuJoCo's own FK for the MJCF), IK success and speed with the same damped
least squares solver driven by each library's FK + Jacobian.

    pip install --target /tmp/pinx pin      # ~450 MB (cmeel boost, urdfdom, assimp, coal, ...)
    PINOCCHIO_PATH=/tmp/pinx python bench/bench_pinocchio.py [--n 500]

Results are recorded in docs/runtime.md ("Kinematics: pinocchio evaluated").
"""
from __future__ import annotations

import argparse
import os
import site
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from mu0_policy.experts.kinematics import chain_from_mjcf, chain_from_urdf, resolve_model_path  # noqa: E402


def import_pin():
    if os.environ.get("PINOCCHIO_PATH"):
        site.addsitedir(os.environ["PINOCCHIO_PATH"])
    import pinocchio as pin
    return pin


def dls_ik(fk_jac, q0, target, lower, upper, damping=0.05, iters=100, tol=1e-4, max_step=0.2):
    """The solver of KinematicChain.ik (position only), on any FK + position Jacobian."""
    q = np.clip(q0.copy(), lower, upper)
    for it in range(iters + 1):
        p, J = fk_jac(q)
        e = target - p
        if np.linalg.norm(e) < tol:
            return q, True, it
        if it == iters:
            break
        dq = J.T @ np.linalg.solve(J @ J.T + damping ** 2 * np.eye(3), e)
        big = np.max(np.abs(dq))
        if big > max_step:
            dq *= max_step / big
        q = np.clip(q + dq, lower, upper)
    return q, False, iters


def compare(name, ours, pin, model, frame_id, n, rng, mj=None):
    data = model.createData()
    lower, upper = ours.lower.copy(), ours.upper.copy()
    lower, upper = np.maximum(lower, -np.pi), np.minimum(upper, np.pi)
    qs = rng.uniform(lower, upper, size=(n, ours.dof))

    def pin_fk(q):
        pin.framesForwardKinematics(model, data, q)
        return data.oMf[frame_id].translation.copy(), data.oMf[frame_id].rotation.copy()

    def pin_fk_jac(q):
        pin.computeJointJacobians(model, data, q)
        pin.framesForwardKinematics(model, data, q)
        J = pin.getFrameJacobian(model, data, frame_id, pin.ReferenceFrame.LOCAL_WORLD_ALIGNED)
        return data.oMf[frame_id].translation.copy(), J[:3]

    def our_fk_jac(q):
        T, J = ours.jacobian(q)
        return T[:3, 3], J[:3]

    dp, dr = [], []
    for q in qs:
        T = ours.fk(q)
        p, R = pin_fk(q)
        dp.append(np.linalg.norm(T[:3, 3] - p))
        dr.append(np.linalg.norm(T[:3, :3] - R))
    t0 = time.perf_counter(); [ours.fk(q) for q in qs]; t_ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter(); [pin_fk(q) for q in qs]; t_pin = (time.perf_counter() - t0) / n
    print(f"{name}: FK ours vs pinocchio over {n} random q: max |dp| {max(dp):.2e} m, max |dR| {max(dr):.2e}; "
          f"FK {t_ours * 1e6:.1f} us (ours) vs {t_pin * 1e6:.1f} us (pinocchio)")
    if mj is not None:
        mj_fk = mj
        d_ours = max(np.linalg.norm(ours.fk(q)[:3, 3] - mj_fk(q)) for q in qs[:200])
        d_pin = max(np.linalg.norm(pin_fk(q)[0] - mj_fk(q)) for q in qs[:200])
        print(f"{name}: FK vs MuJoCo (200 q): ours {d_ours:.2e} m, pinocchio {d_pin:.2e} m")
    # IK: reachable targets (FK of random q), from the middle of the range
    q_home = (lower + upper) / 2
    targets = [ours.fk(q)[:3, 3] for q in rng.uniform(lower, upper, size=(n // 2, ours.dof))]
    for label, fj in (("ours", our_fk_jac), ("pinocchio", pin_fk_jac)):
        t0 = time.perf_counter()
        res = [dls_ik(fj, q_home, t, ours.lower, ours.upper) for t in targets]
        dt = (time.perf_counter() - t0) / len(targets)
        ok = [r for r in res if r[1]]
        print(f"{name}: IK ({label} FK+J, same DLS): success {len(ok)}/{len(res)}, median iterations "
              f"{np.median([r[2] for r in ok]) if ok else float('nan'):.0f}, {dt * 1e3:.2f} ms per solve")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args(argv)
    pin = import_pin()
    rng = np.random.default_rng(0)
    print(f"pinocchio {pin.__version__}")
    urdf = REPO / "config" / "robots" / "ur5e.urdf"
    ours = chain_from_urdf(str(urdf), "base_link", "tool0")
    full = pin.buildModelFromUrdf(str(urdf))
    model = full
    compare("UR5e URDF", ours, pin, model, model.getFrameId("tool0"), args.n, rng)

    import mujoco

    xml = resolve_model_path("metaworld:sawyer_xyz/sawyer_reach_v3.xml")
    ours = chain_from_mjcf(xml, "endEffector")
    mjm = mujoco.MjModel.from_xml_path(xml)
    mjd = mujoco.MjData(mjm)
    arm = [mujoco.mj_name2id(mjm, mujoco.mjtObj.mjOBJ_JOINT, f"right_j{i}") for i in range(7)]
    adr = [mjm.jnt_qposadr[j] for j in arm]
    sid = mujoco.mj_name2id(mjm, mujoco.mjtObj.mjOBJ_SITE, "endEffector")

    def mj_fk(q):
        mjd.qpos[adr] = q
        mujoco.mj_kinematics(mjm, mjd)
        return mjd.site_xpos[sid].copy()

    try:
        pm = pin.buildModelFromMJCF(xml)
    except Exception as exc:  # noqa: BLE001
        print(f"Sawyer MJCF: pinocchio cannot load the Meta-World MJCF: {exc!r}")
        return 0
    keep = [pm.getJointId(f"right_j{i}") for i in range(7)]
    lock = [j for j in range(1, pm.njoints) if j not in keep]
    reduced = pin.buildReducedModel(pm, lock, pin.neutral(pm)) if lock else pm
    fid = reduced.getFrameId("endEffector") if reduced.existFrame("endEffector") else None
    if fid is None:
        print(f"Sawyer MJCF: pinocchio's MJCF parser built {pm.njoints - 1} joint(s) {list(pm.names)[1:]} and "
              f"no endEffector frame: it does not follow Meta-World's <include>d robot (MuJoCo does)")
        return 0
    compare("Sawyer MJCF", ours, pin, reduced, fid, args.n, rng, mj=mj_fk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
