"""SafetyGuard (pure code): clamps, step/velocity limits, stale-input holds, e-stop latch, dry-run, NaN."""
import numpy as np
import pytest

from mu0_policy.experts import safety as S
from mu0_policy.experts import load_robot_config
from mu0_policy.experts.robot_config import RobotConfigError
from mu0_policy.experts.safety import GuardSettings, JointLimits, SafetyGuard

SEC = 1_000_000_000
DT = 0.1


def make_guard(dry_run=False, **kw):
    limits = JointLimits(("a", "b"), lower=[-1.0, -2.0], upper=[1.0, 2.0],
                         max_velocity=[1.0, 0.5], max_step_delta=[0.2, 0.2])
    return SafetyGuard(DT, GuardSettings(dry_run=dry_run, trace_timeout_s=1.0, joint_state_timeout_s=0.5, **kw), limits)


def cmd(guard, targets, measured=(0.0, 0.0), now=10 * SEC, js_age=0.0, tr_age=0.0):
    return guard.joint_command(now, None if targets is None else np.asarray(targets, float),
                               None if measured is None else np.asarray(measured, float),
                               now - int(js_age * SEC), now - int(tr_age * SEC))


def test_position_clamp_and_step_limits():
    g = make_guard()
    # per-tick step: joint a min(0.2, 1.0*0.1)=0.1, joint b min(0.2, 0.5*0.1)=0.05
    out = cmd(g, [[5.0, -5.0]] * 30)
    assert not out.hold and out.send
    steps = np.diff(np.vstack([[0.0, 0.0], out.values]), axis=0)
    assert np.all(np.abs(steps[:, 0]) <= 0.1 + 1e-12) and np.all(np.abs(steps[:, 1]) <= 0.05 + 1e-12)
    assert np.allclose(out.values[0], [0.1, -0.05])
    # after enough ticks the target is reached — but clamped to the limits, never beyond
    assert np.allclose(out.values[-1], [1.0, -1.5]) and out.values[:, 0].max() <= 1.0
    assert out.clamped == 60 and out.rate_limited > 0


def test_targets_within_limits_pass_unchanged():
    g = make_guard()
    t = [[0.05, 0.02], [0.1, 0.04]]
    out = cmd(g, t)
    assert np.allclose(out.values, t) and out.clamped == 0 and out.rate_limited == 0


def test_consecutive_ticks_continue_from_scheduled_command():
    g = make_guard()
    first = cmd(g, [[1.0, 0.0]], now=10 * SEC)
    assert np.allclose(first.values, [[0.1, 0.0]])
    # robot followed half-way; the next tick is limited from the command (0.1), not from measured
    second = cmd(g, [[1.0, 0.0]], measured=(0.05, 0.0), now=10 * SEC + int(DT * SEC))
    assert np.allclose(second.values, [[0.2, 0.0]])


def test_command_never_runs_far_ahead_of_a_robot_that_does_not_move():
    g = make_guard(max_tracking_steps=2.0)
    now = 10 * SEC
    for i in range(20):
        out = cmd(g, [[1.0, 0.0]], measured=(0.0, 0.0), now=now + i * int(DT * SEC))
        assert abs(out.values[0, 0]) <= 3 * 0.1 + 1e-9


@pytest.mark.parametrize("js_age,tr_age,reason", [
    (0.6, 0.0, S.STALE_JOINT_STATES), (0.0, 1.5, S.STALE_TRACES), (-0.9, 0.0, S.STALE_JOINT_STATES)])
def test_stale_inputs_hold_at_measured_position(js_age, tr_age, reason):
    g = make_guard()
    out = cmd(g, [[0.5, 0.5]], measured=(0.3, -0.2), js_age=js_age, tr_age=tr_age)
    assert out.hold and reason in out.reasons
    assert np.allclose(out.values, [[0.3, -0.2]])
    assert g.counts[f"hold_{reason}"] == 1


def test_missing_inputs_hold_and_nothing_sendable_without_any_position():
    g = make_guard()
    out = g.joint_command(10 * SEC, np.zeros((1, 2)), None, None, 10 * SEC)
    assert out.hold and S.NO_JOINT_STATES in out.reasons and out.values is None and not out.send
    out = g.joint_command(10 * SEC, np.zeros((1, 2)), np.zeros(2), 10 * SEC, None)
    assert out.hold and S.NO_TRACES in out.reasons and np.allclose(out.values, 0.0)


def test_nan_joint_state_holds_at_last_command_and_never_emits_nan():
    g = make_guard()
    good = cmd(g, [[0.1, 0.05]])
    bad = cmd(g, [[0.5, 0.5]], measured=(np.nan, 0.0), now=10 * SEC + int(DT * SEC))
    assert bad.hold and S.NON_FINITE_JOINT_STATES in bad.reasons
    assert np.allclose(bad.values, good.values[-1]) and np.all(np.isfinite(bad.values))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_command_holds(bad):
    g = make_guard()
    out = cmd(g, [[0.1, 0.0], [bad, 0.0]], measured=(0.2, 0.1))
    assert out.hold and S.NON_FINITE_COMMAND in out.reasons
    assert np.allclose(out.values, [[0.2, 0.1]]) and np.all(np.isfinite(out.values))


def test_wrong_target_shape_is_a_value_error():
    with pytest.raises(ValueError, match="targets"):
        cmd(make_guard(), [[0.1, 0.2, 0.3]])


def test_estop_latches_until_reset():
    g = make_guard()
    g.latch_estop("button")
    for i in range(5):  # fresh inputs do not release it
        out = cmd(g, [[0.5, 0.5]], measured=(0.2, 0.1), now=10 * SEC + i * int(DT * SEC))
        assert out.hold and out.reasons == (S.ESTOP,) and np.allclose(out.values, [[0.2, 0.1]])
    assert g.estop_latched and g.estop_reason == "button"
    assert g.reset_estop() is True and not g.estop_latched
    assert g.reset_estop() is False
    out = cmd(g, [[0.5, 0.5]], measured=(0.2, 0.1), now=11 * SEC)
    assert not out.hold and np.allclose(out.values, [[0.3, 0.15]])


def test_dry_run_computes_but_does_not_send():
    g = make_guard(dry_run=True)
    out = cmd(g, [[5.0, 0.0]])
    assert out.values is not None and np.allclose(out.values, [[0.1, 0.0]]) and not out.send
    assert g.counts["dry_run_commands"] == 1 and g.counts["sent_commands"] == 0
    g.dry_run = False
    assert cmd(g, [[5.0, 0.0]], now=11 * SEC).send


def test_expert_without_command_holds():
    out = cmd(make_guard(), None, measured=(0.4, 0.4))
    assert out.hold and S.NO_COMMAND in out.reasons and np.allclose(out.values, [[0.4, 0.4]])


# ------------------------------------------------------------------ ee_delta interface
def ee_guard(**kw):
    s = dict(dry_run=False, max_ee_step_m=0.01, metres_per_unit=0.01, clip=1.0, gripper_default=-1.0)
    s.update(kw)
    return SafetyGuard(0.0125, GuardSettings(**s))


def test_ee_deltas_are_step_limited_and_converted_to_units():
    g = ee_guard()
    now = 5 * SEC
    out = g.ee_command(now, [[0.004, 0.0, 0.0, -1.0], [0.03, 0.04, 0.0, 2.0]], np.array([0.0, 0.6, 0.2]), now, now)
    assert not out.hold and out.send
    assert np.allclose(out.values[0], [0.4, 0.0, 0.0, -1.0])
    assert np.allclose(out.values[1], [0.6, 0.8, 0.0, 1.0])     # 5 cm -> 1 cm along the same direction
    assert out.rate_limited == 1 and out.clamped == 1          # the gripper 2.0 -> 1.0


def test_ee_workspace_box_stops_motion_out_of_it():
    g = ee_guard(workspace_lower=(-0.5, 0.4, 0.05), workspace_upper=(0.5, 1.0, 0.7))
    now = 5 * SEC
    out = g.ee_command(now, [[0.0, 0.0, -0.01, -1.0]] * 3, np.array([0.0, 0.6, 0.065]), now, now)
    z = 0.065 + np.cumsum(out.values[:, 2] * 0.01)
    assert z.min() >= 0.05 - 1e-12 and np.isclose(z[-1], 0.05)


def test_ee_hold_is_zero_motion_and_nan_never_passes():
    g = ee_guard()
    now = 5 * SEC
    out = g.ee_command(now, [[np.nan, 0.0, 0.0, 1.0]], np.array([0.0, 0.6, 0.2]), now, now)
    assert out.hold and np.allclose(out.values, [[0, 0, 0, -1.0]])
    g.latch_estop()
    out = g.ee_command(now, [[0.01, 0.0, 0.0, 1.0]], np.array([0.0, 0.6, 0.2]), now, now)
    assert out.hold and out.reasons == (S.ESTOP,) and np.allclose(out.values[0, :3], 0.0)
    out = g.ee_command(now, [[0.01, 0, 0, 1.0]], np.array([0.0, 0.6, 0.2]), now - 2 * SEC, now)
    assert out.hold and S.STALE_JOINT_STATES in out.reasons


def test_guard_from_robot_config_follows_its_dry_run_and_limits():
    # a real robot's config stays dry-run; the simulated arm's commands by default
    for path, dry in (("config/robots/ur5e.yaml", True), ("config/robots/sim_sawyer_joint.yaml", False)):
        robot = load_robot_config(path)
        g = SafetyGuard.from_robot(robot)
        assert g.dry_run == dry == robot.safety.dry_run and g.limits.names == tuple(robot.joint_names)
        assert np.allclose(g._step, np.minimum(robot.joints.max_step_delta,
                                               robot.joints.max_velocity / robot.control_rate_hz))
    assert SafetyGuard.from_robot(load_robot_config("config/robots/sim_sawyer_forward.yaml")).streaming


def test_sim_ee_guard_passes_the_full_diagonal_step_the_sim_arm_and_its_demos_make():
    """The sim arm moves up to clip x metres_per_unit per AXIS per step, and the scripted demos the
    expert learns from use it; a guard that caps the norm below that slows diagonal motion (it kept
    door-open from ever finishing). A full diagonal step passes unchanged; a longer one is cut back."""
    robot = load_robot_config("config/robots/sim_sawyer_ee.yaml")
    g = SafetyGuard.from_robot(robot, dry_run=False)
    now = 5 * SEC
    out = g.ee_command(now, [[0.0099, -0.0099, 0.0099, 1.0]], np.array([0.0, 0.6, 0.2]), now, now)
    assert not out.hold and out.send
    assert np.allclose(out.values[0], [0.99, -0.99, 0.99, 1.0]) and out.rate_limited == 0 and out.clamped == 0
    out = g.ee_command(now, [[0.03, 0.0, 0.04, 1.0]], np.array([0.0, 0.6, 0.2]), now, now)
    step_m = np.linalg.norm(out.values[0, :3]) * g.settings.metres_per_unit
    assert out.rate_limited == 1 and step_m <= 0.0174 + 1e-9


@pytest.mark.parametrize("name", ["sim_sawyer_joint", "sim_sawyer_forward"])
def test_sim_joint_step_limit_lets_the_velocity_limit_bind(name):
    """A per-tick step cap below max_velocity x control period silently lowers the arm's speed
    limit (0.06 rad per 20 Hz tick was 1.2 rad/s on joints rated 1.33-1.96 rad/s, slower than the
    demos the expert learned from). A guarded command at the velocity limit passes unchanged."""
    robot = load_robot_config(f"config/robots/{name}.yaml")
    lim = JointLimits.from_robot(robot)
    step = np.asarray(lim.max_step_delta, float) * np.ones(len(robot.joint_names))
    vel = np.asarray(robot.joints.max_velocity, float)
    assert np.all(step >= 0.99 * vel * robot.control_dt), (step, vel * robot.control_dt)


def test_a_robot_config_extends_another_and_overrides_only_what_it_names(tmp_path):
    variant = load_robot_config("config/robots/sim_sawyer_ee_mu0base.yaml")
    base = load_robot_config("config/robots/sim_sawyer_ee.yaml")
    assert variant.expert_params["checkpoint"] == "checkpoints/expert_sawyer_ee_mu0base"
    assert base.expert_params["checkpoint"] == "checkpoints/expert_sawyer_ee"
    assert variant.safety.max_ee_step_m == base.safety.max_ee_step_m and variant.joint_names == base.joint_names
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RobotConfigError, match=r"b.yaml: field 'extends'.*cycle"):
        load_robot_config(str(tmp_path / "a.yaml"))
