"""Kinematics: FK against MuJoCo's own site positions (real physics model), URDF parsing, DLS IK."""
import mujoco
import numpy as np
import pytest

from mu0_policy.experts.kinematics import (KinematicsError, RobotKinematics, chain_from_mjcf, chain_from_urdf,
                                   resolve_model_path, rotation_error)

SAWYER = resolve_model_path("metaworld:sawyer_xyz/sawyer_reach_v3.xml")
ARM = [f"right_j{i}" for i in range(7)]
RESET_Q = np.array([1.889, -0.576, -0.977, 1.642, 0.943, 1.044, 2.293])   # Meta-World reach reset pose


@pytest.fixture(scope="module")
def sawyer():
    model = mujoco.MjModel.from_xml_path(SAWYER)
    return chain_from_mjcf(SAWYER, "endEffector", joint_names=ARM), model, mujoco.MjData(model)


@pytest.mark.parametrize("site", ["endEffector", "rightEndEffector", "leftEndEffector"])
def test_sawyer_fk_matches_mujoco_sites(sawyer, site):
    _, model, data = sawyer
    chain = chain_from_mjcf(SAWYER, site, joint_names=ARM + ["r_close", "l_close"])
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.uniform(np.maximum(chain.lower, -3), np.minimum(chain.upper, 3))
        adr = [model.joint(n).qposadr[0] for n in chain.joint_names]
        data.qpos[:] = 0
        data.qpos[adr] = q
        mujoco.mj_kinematics(model, data)
        T = chain.fk(q)
        assert np.linalg.norm(T[:3, 3] - data.site(site).xpos) < 1e-3          # the 1 mm contract
        assert np.abs(T[:3, :3] - data.site(site).xmat.reshape(3, 3)).max() < 1e-6


def test_sawyer_chain_reads_limits_from_the_model(sawyer):
    chain, model, _ = sawyer
    assert chain.joint_names == ARM
    assert np.allclose(chain.lower, [model.jnt_range[model.joint(n).id][0] for n in ARM])
    assert chain.upper[1] == pytest.approx(-0.5)


def test_jacobian_matches_finite_differences(sawyer):
    chain = sawyer[0]
    T, J = chain.jacobian(RESET_Q)
    eps = 1e-6
    for i in range(chain.dof):
        dq = np.zeros(chain.dof)
        dq[i] = eps
        Tp = chain.fk(RESET_Q + dq)
        assert np.allclose((Tp[:3, 3] - T[:3, 3]) / eps, J[:3, i], atol=1e-5)
        assert np.allclose(rotation_error(T[:3, :3], Tp[:3, :3]) / eps, J[3:, i], atol=1e-5)


def test_ik_converges_and_respects_limits(sawyer):
    chain = sawyer[0]
    T0 = chain.fk(RESET_Q)
    rng = np.random.default_rng(0)
    for _ in range(10):
        goal = T0[:3, 3] + rng.uniform(-0.1, 0.1, 3)
        r = chain.ik(goal, RESET_Q, target_rotation=T0[:3, :3])
        assert r.converged, r
        assert np.linalg.norm(chain.fk(r.joint_positions)[:3, 3] - goal) < 2e-4
        assert np.all(r.joint_positions >= chain.lower) and np.all(r.joint_positions <= chain.upper)


def test_ik_unreachable_target_reports_not_converged(sawyer):
    chain = sawyer[0]
    r = chain.ik([3.0, 0.0, 0.5], RESET_Q, max_iterations=50)
    assert not r.converged and r.position_error > 1.0
    assert np.all(r.joint_positions >= chain.lower) and np.all(r.joint_positions <= chain.upper)


def dh_fk(q, a, d, alpha):
    """Standard DH product, written independently of the URDF path."""
    T = np.eye(4)
    for qi, ai, di, al in zip(q, a, d, alpha):
        ct, st, ca, sa = np.cos(qi), np.sin(qi), np.cos(al), np.sin(al)
        T = T @ np.array([[ct, -st * ca, st * sa, ai * ct], [st, ct * ca, -ct * sa, ai * st],
                          [0, sa, ca, di], [0, 0, 0, 1]])
    return T


def test_ur5e_urdf_fk_matches_dh_parameters():
    chain = chain_from_urdf("config/robots/ur5e.urdf", "base_link", "tool0")
    assert chain.joint_names == ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
                                 "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
    a, d = [0, -0.425, -0.3922, 0, 0, 0], [0.1625, 0, 0, 0.1333, 0.0997, 0.0996]
    alpha = [np.pi / 2, 0, 0, np.pi / 2, -np.pi / 2, 0]
    rng = np.random.default_rng(3)
    for _ in range(20):
        q = rng.uniform(-np.pi, np.pi, 6)
        assert np.allclose(chain.fk(q), dh_fk(q, a, d, alpha), atol=1e-9)
    assert np.allclose(chain.max_velocity, 3.1416)


URDF_TEXT = """<robot name="t">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="tool"/>
  <joint name="slide" type="prismatic"><parent link="base"/><child link="l1"/>
    <origin xyz="0 0 0.5" rpy="0 0 1.5707963267948966"/><axis xyz="1 0 0"/>
    <limit lower="0" upper="0.3" velocity="0.5"/></joint>
  <joint name="spin" type="continuous"><parent link="l1"/><child link="l2"/>
    <origin xyz="0.2 0 0" rpy="1.5707963267948966 0 0"/><axis xyz="0 0 1"/></joint>
  <joint name="flange" type="fixed"><parent link="l2"/><child link="tool"/><origin xyz="0.1 0 0"/></joint>
</robot>"""


def test_urdf_prismatic_continuous_fixed_and_rpy():
    chain = chain_from_urdf(URDF_TEXT, "base", "tool")
    assert chain.joint_names == ["slide", "spin"] and np.isinf(chain.upper[1])
    # base->l1: yaw 90 deg, so the slide's local x is the base's +y
    assert np.allclose(chain.fk([0.1, 0.0])[:3, 3], [0.0, 0.1 + 0.2 + 0.1, 0.5])
    # Rz(90) Rx(90) Rz(spin=90) maps the flange offset (0.1, 0, 0) onto base +z
    assert np.allclose(chain.fk([0.0, np.pi / 2])[:3, 3], [0.0, 0.2, 0.6], atol=1e-12)
    assert np.allclose(chain.fk([0.0, 0.0])[:3, 3], [0.0, 0.3, 0.5], atol=1e-12)


@pytest.mark.parametrize("mutate,msg", [
    (lambda s: s.replace('<link name="tool"/>', ""), "tip_link 'tool'"),
    (lambda s: s.replace('type="fixed"', 'type="floating"'), "unsupported type"),
    (lambda s: s.replace('xyz="0.2 0 0"', 'xyz="0.2 0"'), "expected 3 numbers"),
    (lambda s: s.replace('<limit lower="0" upper="0.3" velocity="0.5"/>', ""), "needs a <limit>"),
])
def test_bad_urdf_names_the_problem(mutate, msg):
    with pytest.raises(KinematicsError, match=msg):
        chain_from_urdf(mutate(URDF_TEXT), "base", "tool", source="t.urdf")


def test_robot_kinematics_passes_the_gripper_through(sawyer):
    rk = RobotKinematics(sawyer[0], ARM + ["gripper"])
    q = np.append(RESET_Q, 0.7)
    assert np.allclose(rk.chain_q(q), RESET_Q)
    out = rk.with_chain_q(q, RESET_Q + 0.1)
    assert out[-1] == 0.7 and np.allclose(out[:7], RESET_Q + 0.1)
    with pytest.raises(KinematicsError, match="right_j6"):
        RobotKinematics(sawyer[0], ARM[:6])


def test_mjcf_errors_name_the_file():
    with pytest.raises(KinematicsError, match="no_such_site"):
        chain_from_mjcf(SAWYER, "no_such_site")
    with pytest.raises(KinematicsError, match="not one of the robot's joints"):
        chain_from_mjcf(SAWYER, "endEffector", joint_names=ARM[:6])
