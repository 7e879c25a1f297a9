"""The safety invariants, proved in the ONE place they are enforced (SafetyGuard), with hypothesis.

Whatever the inputs — any joint state (out of limits, NaN, huge jumps, missing), any expert output,
any clock (frozen, rewound, jumping) — every joint command leaving the guard is finite, inside the
position limits, and within the per-tick step limit of the previously COMMANDED target (not the
measured one); the gripper value obeys the same rules. Issue 13 defects #2 and #5 have direct
regression tests below (they failed on the old guard).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mu0_policy.experts import load_robot_config
from mu0_policy.experts import safety as S
from mu0_policy.experts.base import ActionChunk, ActionExpert
from mu0_policy.experts.runner import ExpertRunner
from mu0_policy.experts.safety import GuardSettings, JointLimits, SafetyGuard

SEC = 1_000_000_000
DT = 0.05
LOWER = np.array([-1.0, -2.0, 0.5])
UPPER = np.array([1.0, 2.0, 3.0])
VMAX = np.array([1.0, 0.5, 2.0])
MAXSTEP = np.array([0.2, 0.2, 0.04])
STEP = np.minimum(MAXSTEP, VMAX * DT)
EPS = 1e-9
# MU0_HYPOTHESIS_EXAMPLES=2000 for a deeper search than the suite's default
HYP = settings(max_examples=int(os.environ.get("MU0_HYPOTHESIS_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow],
               database=None)   # no .hypothesis/ example database in the working tree


def make_guard(streaming=False, **kw):
    limits = JointLimits(("a", "b", "c"), lower=LOWER, upper=UPPER, max_velocity=VMAX, max_step_delta=MAXSTEP)
    return SafetyGuard(DT, GuardSettings(dry_run=False, trace_timeout_s=1.0, joint_state_timeout_s=0.5, **kw),
                       limits, streaming=streaming)


def assert_safe_rows(rows, prev):
    """finite, inside the limits, first row within a step of `prev` (when there is one), steps between rows."""
    rows = np.asarray(rows, float)
    assert np.all(np.isfinite(rows)), rows
    assert np.all(rows >= LOWER - EPS) and np.all(rows <= UPPER + EPS), rows
    chain = rows if prev is None else np.vstack([prev, rows])
    steps = np.abs(np.diff(chain, axis=0))
    assert np.all(steps <= STEP + 1e-9), (prev, rows)


# ------------------------------------------------------------------ strategies
anyfloat = st.floats(allow_nan=True, allow_infinity=True, width=64)
wild = st.one_of(anyfloat, st.floats(-5, 5), st.floats(-1e12, 1e12), st.just(0.0))
joint_state = st.one_of(st.none(), st.lists(wild, min_size=3, max_size=3).map(np.array),
                        st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3).map(lambda v: (LOWER + UPPER) / 2 + np.array(v)))
targets = st.one_of(st.none(), st.integers(1, 6).flatmap(
    lambda T: st.lists(st.lists(wild, min_size=3, max_size=3), min_size=T, max_size=T)).map(np.array))
clock_step = st.one_of(st.just(int(DT * SEC)), st.integers(0, 3 * SEC), st.integers(-20 * SEC, 0), st.just(0))
age = st.one_of(st.none(), st.floats(-3, 3), st.just(0.0))
event = st.sampled_from(["tick", "tick", "tick", "tick", "estop", "reset"])
step_input = st.tuples(clock_step, joint_state, targets, age, age, event, st.integers(0, 2 * SEC))


def _stamp(now, a):
    return None if a is None else now - int(a * SEC)


def run_guard_sequence(guard, steps, wall=True):
    now, wall_ns = 100 * SEC, 0
    last_emitted = None   # streaming: the row emitted last; trajectory: (start, rows) of the last chunk
    last_now = None
    for dclock, q, t, js_age, tr_age, ev, dwall in steps:
        now = max(0, now + dclock)
        wall_ns += dwall
        if ev == "estop":
            guard.latch_estop("test")
        elif ev == "reset":
            guard.reset_estop()
        out = guard.joint_command(now, t, q, _stamp(now, js_age), _stamp(now, tr_age),
                                  wall_ns=wall_ns if wall else None)
        if out.values is None:
            assert out.hold
            continue
        if guard.streaming:
            assert_safe_rows(out.values, last_emitted)
            last_emitted = out.values[0]
        else:
            prev = None
            if last_emitted is not None:
                start, rows = last_emitted
                ref_now = now if now >= last_now else last_now   # a rewound clock holds at the row of the old time
                k = int(np.floor((ref_now - start) * 1e-9 / DT + 1e-6)) - 1
                prev = rows[min(max(k, 0), len(rows) - 1)] if ref_now >= start else rows[0]
            assert_safe_rows(out.values, prev)
            last_emitted = (now - int(DT * SEC) if out.hold else now, out.values)
        last_now = now


@HYP
@given(st.lists(step_input, min_size=1, max_size=25))
def test_streaming_guard_invariants_for_any_inputs_and_clock(steps):
    run_guard_sequence(make_guard(streaming=True), steps)


@HYP
@given(st.lists(step_input, min_size=1, max_size=25), st.booleans())
def test_trajectory_guard_invariants_for_any_inputs_and_clock(steps, wall):
    run_guard_sequence(make_guard(streaming=False), steps, wall)


@HYP
@given(st.lists(st.tuples(st.one_of(st.none(), wild), st.sampled_from([None, "hold"])), min_size=1, max_size=40))
def test_gripper_emit_is_finite_bounded_and_rate_limited(values):
    g = make_guard()
    prev = None
    for v, kind in values:
        x = g.gripper_emit(None if kind == "hold" else v, -0.5, 0.8, 0.1)
        assert np.isfinite(x) and -0.5 <= x <= 0.8
        if prev is not None:
            assert abs(x - prev) <= 0.1 + 1e-12
        prev = x


# ------------------------------------------------------------------ issue 13 defect #2 (regressions)
def test_glitch_past_a_limit_is_a_fault_that_holds_at_the_last_command():
    g = make_guard()
    now = 100 * SEC
    good = g.joint_command(now, [[0.5, 0.0, 1.0]], np.array([0.4, 0.0, 1.0]), now, now)
    assert not good.hold
    # a 0.1 s joint-state glitch 2.25 rad past joint a's upper limit
    for i in range(1, 3):
        t = now + i * int(DT * SEC)
        out = g.joint_command(t, [[0.9, 0.0, 1.0]], np.array([3.25, 0.0, 1.0]), t, t)
        assert out.hold and S.JOINT_STATE_OUT_OF_LIMITS in out.reasons
        assert np.allclose(out.values[0], good.values[0])         # the last safe command, not the glitch
        assert np.all(out.values <= UPPER)
    assert g.counts["fault_joint_state_out_of_limits"] == 2
    # the glitch ends: motion resumes from the last command, one step at a time
    t = now + 3 * int(DT * SEC)
    out = g.joint_command(t, [[0.9, 0.0, 1.0]], np.array([0.45, 0.0, 1.0]), t, t)
    assert not out.hold and abs(out.values[0, 0] - good.values[0, 0]) <= STEP[0] + 1e-12


def test_measured_jump_faster_than_physically_possible_is_a_fault():
    g = make_guard()
    now = 100 * SEC
    g.joint_command(now, [[0.0, 0.0, 1.0]], np.array([0.0, 0.0, 1.0]), now, now)
    t = now + int(DT * SEC)
    out = g.joint_command(t, [[0.0, 0.0, 1.0]], np.array([0.6, 0.0, 1.0]), t, t)   # 12 rad/s on a 1 rad/s joint
    assert out.hold and S.JOINT_STATE_JUMP in out.reasons and np.allclose(out.values[0], [0.0, 0.0, 1.0])
    # a real (slow) motion is accepted once enough time has passed for it
    t2 = now + 2 * SEC
    out = g.joint_command(t2, [[0.6, 0.0, 1.0]], np.array([0.6, 0.0, 1.0]), t2, t2)
    assert not out.hold


def test_first_command_never_starts_from_an_unchecked_measured_value():
    g = make_guard()
    now = 100 * SEC
    out = g.joint_command(now, [[0.0, 0.0, 1.0]], np.array([1e9, 0.0, 1.0]), now, now)
    assert out.hold and out.values is None                      # nothing safe to send, nothing sent


def test_hold_is_clamped_and_rate_limited_like_any_command():
    g = make_guard()
    now = 100 * SEC
    # slightly beyond the limit (within tolerance) and no command yet: the hold is clamped
    out = g.joint_command(now, None, np.array([1.03, 0.0, 1.0]), now, now)
    assert out.hold and out.values[0, 0] == 1.0
    # an e-stop with a robot far from the last command walks the hold toward it at the step limit
    g.joint_command(now + int(DT * SEC), [[0.9, 0.0, 1.0]], np.array([0.95, 0.0, 1.0]), now, now)
    g.latch_estop()
    t = now + 2 * int(DT * SEC)
    prev = g._prev_row(t)
    out = g.joint_command(t, None, np.array([0.5, 0.0, 1.0]), t, t)
    assert out.hold and np.all(np.abs(out.values[0] - prev) <= STEP + 1e-12)


def test_ee_guard_never_emits_non_finite_or_over_step():
    g = SafetyGuard(0.0125, GuardSettings(dry_run=False, max_ee_step_m=0.01, metres_per_unit=0.01, clip=1.0))
    rng = np.random.default_rng(0)
    for i in range(300):
        now = 10 * SEC + i * 12_500_000
        d = rng.normal(scale=rng.choice([0.001, 1.0, 1e9]), size=(3, 4))
        if i % 7 == 0:
            d[1, rng.integers(4)] = rng.choice([np.nan, np.inf, -np.inf])
        ee = None if i % 11 == 0 else rng.normal(size=3) * rng.choice([1, 1e12])
        out = g.ee_command(now, d, ee, now, now)
        assert np.all(np.isfinite(out.values)) and np.all(np.abs(out.values[:, :3]) <= 1.0 + 1e-12)
        assert np.all(np.abs(out.values[:, 3]) <= 1.0)


# ------------------------------------------------------------------ issue 13 defect #5: the clock
def test_frozen_ros_clock_holds_on_the_wall_clock():
    g = make_guard(clock_timeout_s=0.25)
    now, wall = 100 * SEC, 5 * SEC
    q = np.array([0.0, 0.0, 1.0])
    assert not g.joint_command(now, [[0.1, 0, 1]], q, now, now, wall_ns=wall).hold
    # /clock stops: ROS time stands still, the steady clock runs on -> a hold within clock_timeout
    out = g.joint_command(now, [[0.1, 0, 1]], q, now, now, wall_ns=wall + int(0.3 * SEC))
    assert out.hold and S.CLOCK_FROZEN in out.reasons
    # it moves again: commands resume
    out = g.joint_command(now + int(DT * SEC), [[0.1, 0, 1]], q, now, now, wall_ns=wall + int(0.35 * SEC))
    assert not out.hold


def test_rewound_ros_clock_holds():
    g = make_guard()
    now = 100 * SEC
    q = np.array([0.0, 0.0, 1.0])
    g.joint_command(now, [[0.1, 0, 1]] * 10, q, now, now)
    back = now - 10 * SEC
    out = g.joint_command(back, [[0.5, 0, 1]], q, back, back)
    assert out.hold and S.CLOCK_REWOUND in out.reasons
    # inputs stamped on the old timeline are now 10 s in the future: stale, still a hold
    out = g.joint_command(back + int(DT * SEC), [[0.5, 0, 1]], q, now, now)
    assert out.hold and S.STALE_JOINT_STATES in out.reasons


def test_inputs_stale_on_the_wall_clock_hold_even_if_ros_time_says_fresh():
    g = make_guard()
    now, wall = 100 * SEC, 5 * SEC
    q = np.array([0.0, 0.0, 1.0])
    out = g.joint_command(now, [[0.1, 0, 1]], q, now, now, wall_ns=wall, joint_wall_ns=wall, trace_wall_ns=wall)
    assert not out.hold
    # ROS time advanced only a little, but no joint state arrived for 0.6 s of wall time
    t = now + int(DT * SEC)
    out = g.joint_command(t, [[0.1, 0, 1]], q, now, now, wall_ns=wall + int(0.6 * SEC),
                          joint_wall_ns=wall, trace_wall_ns=wall + int(0.6 * SEC))
    assert out.hold and S.STALE_JOINT_STATES in out.reasons


# ------------------------------------------------------------------ the runner (what the node emits)
class ScriptedExpert(ActionExpert):
    """Returns whatever the test scripted (any values, wrong shapes, exceptions)."""

    def __init__(self, robot, outputs):
        self.robot = robot
        self.outputs = list(outputs)
        self.kinematics = None

    def reset(self):
        pass

    def act(self, obs):
        if not self.outputs:
            return None
        out = self.outputs.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


def trace_set(stamp_ns, start, direction=np.array([0.1, 0.0, -0.05])):
    from mu0_core.traces import TraceSet
    samples = start + np.linspace(0, 1, 33)[:, None] * direction
    ctrl = start + np.linspace(0, 1, 4)[:, None] * direction
    return TraceSet(stamp_ns=stamp_ns, frame_id="base_link", instruction="reach", model_id="test", horizon_steps=32,
                    step_period=0.05, query_ids=np.array([7], np.uint32), entities=["gripper"],
                    pixels=np.zeros((1, 2), np.float32), positions=samples[None, 0],
                    knots=np.array([0, 0, 0, 0, 1, 1, 1, 1.0]), control_points=ctrl[None],
                    samples=samples[None], validity=np.ones((1, 33), np.float32),
                    confidence=np.ones(1, np.float32))


class _Chunk:   # not an ActionChunk: experts may return anything
    def __init__(self, joint_positions, gripper=None):
        self.joint_positions, self.ee_deltas, self.gripper, self.info = joint_positions, None, gripper, {}


def _expert_output(draw_rows, J):
    return st.one_of(
        st.none(),
        st.just(ValueError("boom")), st.just(MemoryError()), st.just(OverflowError("x")),
        st.integers(1, 6).flatmap(lambda T: st.tuples(
            st.lists(st.lists(draw_rows, min_size=J, max_size=J), min_size=T, max_size=T),
            st.one_of(st.none(), st.lists(wild, min_size=T, max_size=T)))).map(
                lambda tg: _Chunk(np.array(tg[0]), None if tg[1] is None else np.array(tg[1]))),
        st.lists(wild, min_size=1, max_size=9).map(lambda v: _Chunk(np.array(v))))   # wrong shape


@pytest.fixture(scope="module")
def fwd_robot():
    from robot_configs import follower_config
    return load_robot_config(follower_config("sim_sawyer_forward"))


@HYP
@given(data=st.data())
def test_runner_emits_only_safe_commands_for_any_expert_joint_states_and_clock(fwd_robot, data):
    robot = fwd_robot
    J = len(robot.joint_names)
    lo, hi = robot.joints.lower, robot.joints.upper
    step = np.minimum(robot.joints.max_step_delta, robot.joints.max_velocity * robot.control_dt)
    g = robot.gripper
    outputs = data.draw(st.lists(_expert_output(st.one_of(wild, st.floats(-3, 3)), J), max_size=20))
    runner = ExpertRunner(robot, expert=ScriptedExpert(robot, outputs))
    runner.guard.dry_run = False
    now, wall = 50 * SEC, 0
    prev, prev_grip = None, None
    mid = (lo + hi) / 2
    for _ in range(data.draw(st.integers(1, 30))):
        now = max(0, now + data.draw(clock_step))
        wall += data.draw(st.integers(0, SEC // 2))
        kind = data.draw(st.sampled_from(["js", "js", "traces", "tick", "tick", "tick", "estop", "reset"]))
        if kind == "js":
            q = data.draw(st.one_of(st.lists(wild, min_size=J, max_size=J),
                                    st.lists(st.floats(-0.2, 0.2), min_size=J, max_size=J).map(lambda v: list(mid + v))))
            try:
                runner.update_joint_state(now, list(robot.joint_names) + [g.state_joint or "grip"], list(q) + [0.0])
            except ValueError:
                pass
        elif kind == "traces":
            runner.update_traces(trace_set(now, np.array([0.0, 0.6, 0.2])))
        elif kind == "estop":
            runner.estop()
        elif kind == "reset":
            runner.reset_estop()
        else:
            cmd = runner.tick(now, wall_ns=wall)
            if cmd is None:
                continue
            rows = np.asarray(cmd.values, float)
            assert rows.shape == (1, J)
            assert np.all(np.isfinite(rows)) and np.all(rows >= lo - EPS) and np.all(rows <= hi + EPS)
            if prev is not None:
                assert np.all(np.abs(rows[0] - prev) <= step + 1e-9), (prev, rows[0], cmd.reasons)
            prev = rows[0]
            if g.interface == "forward_position":
                assert cmd.gripper is not None and np.isfinite(cmd.gripper) and g.lower <= cmd.gripper <= g.upper
                if prev_grip is not None:
                    assert abs(cmd.gripper - prev_grip) <= g.max_step_delta + 1e-12
                prev_grip = cmd.gripper


def test_out_of_order_traces_are_refused_unless_the_clock_was_rewound(fwd_robot):
    runner = ExpertRunner(fwd_robot)
    start = np.array([0.0, 0.6, 0.2])
    now = 100 * SEC
    runner.update_traces(trace_set(now, start), now)
    with pytest.raises(ValueError, match="out of order"):
        runner.update_traces(trace_set(now - SEC // 2, start), now)        # one late message: refused
    assert runner._traces.stamp_ns == now
    runner.update_traces(trace_set(now + SEC // 10, start), now + SEC // 10)
    # the clock jumped back 10 s (a looping bag): the traces in use are from the abandoned timeline
    back = now - 10 * SEC
    runner.update_traces(trace_set(back, start), back)
    assert runner._traces.stamp_ns == back


def _joint_robot(tmp_path, **gripper):
    """The bundled joint-trajectory sim arm (gripper on its own forward_position interface)."""
    import yaml
    from robot_configs import follower_config
    data = yaml.safe_load(open(follower_config("sim_sawyer_joint")))
    data["gripper"].update(gripper)
    p = tmp_path / "joint.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_robot_config(str(p))


def test_joint_trajectory_runner_drives_the_gripper_every_tick_of_the_plan(tmp_path):
    """gripper.follow: chunk. The arm's chunk goes to the trajectory controller once; the gripper
    (not a trajectory joint) follows the plan's gripper column at the control rate (gripper-only
    commands in between), rate-limited per tick."""
    robot = _joint_robot(tmp_path, follow="chunk")
    g = robot.gripper
    J, T = len(robot.joint_names), robot.chunk_horizon
    q = (robot.joints.lower + robot.joints.upper) / 2
    closing = _Chunk(np.tile(q, (T, 1)), np.full(T, g.upper))
    runner = ExpertRunner(robot, expert=ScriptedExpert(robot, [closing] * 3))
    runner.guard.dry_run = False
    now = 50 * SEC
    runner.update_traces(trace_set(now, np.array([0.0, 0.6, 0.2])), now)
    grips, arm_commands = [], 0
    for k in range(robot.chunk_execute * 2):
        t = now + int(k * robot.control_dt * SEC)
        runner.update_joint_state(t, list(robot.joint_names) + [g.state_joint], list(q) + [grips[-1] if grips else g.lower])
        cmd = runner.tick(t)
        if grips and grips[-1] == pytest.approx(g.upper) and k % robot.chunk_execute:
            assert cmd is None                                # closed: nothing new to send
            continue
        assert cmd is not None and not cmd.hold
        arm_commands += cmd.values is not None
        if cmd.values is not None:
            assert cmd.values.shape == (T, J)
        grips.append(cmd.gripper)
    assert arm_commands == 2                                  # one trajectory per plan
    steps = np.diff([g.lower] + grips)
    assert np.all(steps > 0) and np.all(steps <= g.max_step_delta + 1e-12)   # rate-limited per tick ...
    n_full = int(np.ceil((g.upper - g.lower) / g.max_step_delta - 1e-9))
    assert grips[n_full - 1] == pytest.approx(g.upper)        # ... and closed after that many ticks


def test_gripper_follow_plan_holds_each_plans_first_value_until_the_next_plan(tmp_path):
    """gripper.follow: plan (the default). The gripper takes each plan's first value (rate-limited
    from the last one sent) and keeps it until the expert is asked again, whatever the rest of the
    chunk's column says."""
    robot = _joint_robot(tmp_path)
    assert robot.gripper.follow == "plan"
    g = robot.gripper
    T = robot.chunk_horizon
    q = (robot.joints.lower + robot.joints.upper) / 2
    column = np.linspace(g.lower, g.upper, T)             # the chunk closes over its horizon
    runner = ExpertRunner(robot, expert=ScriptedExpert(robot, [_Chunk(np.tile(q, (T, 1)), column)] * 3))
    runner.guard.dry_run = False
    now = 50 * SEC
    runner.update_traces(trace_set(now, np.array([0.0, 0.6, 0.2])), now)
    sent = []
    for k in range(robot.chunk_execute * 3):
        t = now + int(k * robot.control_dt * SEC)
        runner.update_joint_state(t, list(robot.joint_names) + [g.state_joint], list(q) + [g.lower])
        cmd = runner.tick(t)
        if k % robot.chunk_execute:
            assert cmd is None                              # nothing between plans: the value holds
        else:
            assert cmd is not None and cmd.values is not None
            sent.append(cmd.gripper)
    assert sent == pytest.approx([column[0]] * 3)           # each plan's first value, not its future


def test_closing_waits_for_a_settled_hand_opening_never_waits(tmp_path):
    robot = _joint_robot(tmp_path, close_below_speed=0.05, follow="chunk")
    g = robot.gripper
    T = robot.chunk_horizon
    q = (robot.joints.lower + robot.joints.upper) / 2
    closing = _Chunk(np.tile(q, (T, 1)), np.full(T, g.upper))
    opening = _Chunk(np.tile(q, (T, 1)), np.full(T, g.lower))
    runner = ExpertRunner(robot, expert=ScriptedExpert(robot, [closing, closing, opening]))
    runner.guard.dry_run = False
    now = 50 * SEC
    runner.update_traces(trace_set(now, np.array([0.0, 0.6, 0.2])), now)
    names = list(robot.joint_names) + [g.state_joint]
    moving = np.full(len(q), 0.5)                              # rad/s on every joint: the hand moves
    runner.update_joint_state(now, names, list(q) + [g.lower], list(moving) + [0.0])
    assert runner._hand_speed() > 0.05
    grips = []
    for k in range(robot.chunk_execute):
        t = now + int(k * robot.control_dt * SEC)
        runner.update_joint_state(t, names, list(q) + [g.lower], list(moving) + [0.0])
        cmd = runner.tick(t)
        grips.append(None if cmd is None else cmd.gripper)
    assert all(x is None or x == pytest.approx(g.lower) for x in grips)   # held open while moving
    assert runner.counts["gripper_close_deferred"] >= 1
    t0 = now + int(robot.chunk_execute * robot.control_dt * SEC)
    for k in range(robot.chunk_execute):                               # settled: closes at the rate limit
        t = t0 + int(k * robot.control_dt * SEC)
        runner.update_joint_state(t, names, list(q) + [g.lower], [0.0] * (len(q) + 1))
        cmd = runner.tick(t)
    assert cmd.gripper == pytest.approx(min(g.upper, g.lower + robot.chunk_execute * g.max_step_delta))
    closed = cmd.gripper
    t = t0 + int(robot.chunk_execute * robot.control_dt * SEC)
    runner.update_joint_state(t, names, list(q) + [closed], list(moving) + [0.0])
    cmd = runner.tick(t)                                                # opening while moving: at once
    assert cmd.gripper == pytest.approx(closed - g.max_step_delta)


def _grasp_run(robot, ticks):
    """A joint-trajectory arm whose expert moves j0 steadily and closes the gripper from its first
    plan on; returns per tick (command, expert calls so far)."""
    g = robot.gripper
    T = robot.chunk_horizon
    q = (robot.joints.lower + robot.joints.upper) / 2
    expert = ScriptedExpert(robot, [])
    calls = []

    def act(obs):       # each plan: j0 on from the measured position, gripper closed
        calls.append(obs.stamp_ns)
        rows = np.tile(obs.joint_positions, (T, 1))
        rows[:, 0] += 0.02 * np.arange(1, T + 1)
        return _Chunk(rows, np.full(T, g.upper))
    expert.act = act
    runner = ExpertRunner(robot, expert=expert)
    runner.guard.dry_run = False
    now = 50 * SEC
    runner.update_traces(trace_set(now, np.array([0.0, 0.6, 0.2])), now)
    names = list(robot.joint_names) + [g.state_joint]
    out, pos, grip = [], q.copy(), g.lower
    for k in range(ticks):
        t = now + int(k * robot.control_dt * SEC)
        runner.update_joint_state(t, names, list(pos) + [grip])
        cmd = runner.tick(t)
        if cmd is not None and cmd.values is not None:
            pos = cmd.values[0].copy()          # an arm that tracks its command's first point
        if cmd is not None and cmd.gripper is not None:
            grip = cmd.gripper
        out.append((cmd, len(calls), pos[0]))
    return runner, out


def test_grasp_hold_stops_the_arm_while_the_fingers_shut_then_replans(tmp_path):
    """gripper.grasp_hold_s: once a command closes the gripper past half-way, the arm is commanded to
    stay where it was for that long (the expert is not asked) while the gripper closes at its rate
    limit; then the expert plans again. Without it the arm runs on while the fingers close."""
    robot = _joint_robot(tmp_path, grasp_hold_s=0.3)
    g, dt = robot.gripper, robot.control_dt
    n_hold = int(np.ceil(0.3 / dt - 1e-9)) - 1     # the ticks after the closing one, inside 0.3 s
    runner, out = _grasp_run(robot, 16)
    first_close = next(k for k, (cmd, _, _) in enumerate(out) if cmd is not None and cmd.gripper >= 0.5 * (g.lower + g.upper))
    held = out[first_close + 1:first_close + 1 + n_hold]
    assert len(held) == n_hold and runner.counts["grasps"] == 1
    for cmd, calls, j0 in held:
        assert cmd is not None and cmd.reasons == ("grasp",) and not cmd.hold and cmd.values.shape == (1, len(robot.joint_names))
        assert j0 == pytest.approx(held[0][2])                # the arm stays put
        assert calls == out[first_close][1]                   # the expert is not asked meanwhile
    grips = [cmd.gripper for cmd, _, _ in held]
    assert np.all(np.diff(grips) >= 0) and grips[-1] == pytest.approx(g.upper)   # the fingers shut, rate-limited
    after = out[first_close + 1 + n_hold]
    assert after[1] == out[first_close][1] + 1 and after[0].reasons == ()        # then a fresh plan
    assert after[2] > held[-1][2]                                               # and the arm moves on
    # the same expert without the grasp hold: the arm keeps moving through the closing ticks
    plain, out_plain = _grasp_run(_joint_robot(tmp_path), 16)
    assert plain.counts["grasps"] == 0
    j0 = [p for _, _, p in out_plain[first_close:first_close + 1 + n_hold]]
    assert np.all(np.diff(j0[::robot.chunk_execute]) > 0)


def test_grasp_hold_needs_the_grippers_own_interface(tmp_path):
    import yaml
    from mu0_policy.experts.robot_config import RobotConfigError
    from robot_configs import follower_config
    data = yaml.safe_load(open(follower_config("sim_sawyer_ee")))
    data.setdefault("gripper", {})["grasp_hold_s"] = 0.2
    p = tmp_path / "ee.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(RobotConfigError, match=r"ee\.yaml.*gripper\.grasp_hold_s"):
        load_robot_config(str(p))
