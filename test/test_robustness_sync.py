"""RGB-D sync against bad stamps and time jumps (issue 13 defects #3, #4, #5), pure code.

Negative and far-future stamps are rejected per message without poisoning later frames; stamps
older than the last match are dropped per message; a restarted timeline (a looping bag) and a
backwards jump of the node clock reset the sync state; converters check sizes before allocating.
"""
import pytest

from graph_fixtures import SEC, frame_msgs
from mu0_perception.sync import ApproximateTimeMatcher, RGBDAssembler
from mu0_ros import convert


def stream_msgs(stamp_ns, sec=None):
    """The three streams of one small (8 x 6) frame, keyed as the assembler names them."""
    return dict(zip(("color", "depth", "info"), frame_msgs(stamp_ns, sec=sec, w=8, h=6)))


def feed(asm, stamp_ns, now_ns, **kw):
    out = []
    for s, m in stream_msgs(stamp_ns, **kw).items():
        out += asm.add(s, m, now_ns, 5.0)
    return out


def test_negative_stamp_rejected_per_message_and_next_frames_pass():
    asm = RGBDAssembler(slop_s=0.02)
    now = 1000 * SEC
    assert feed(asm, 0, now, sec=-5) == []
    assert asm.faults["bad_stamp"] == 3
    good = [feed(asm, now - SEC + i * SEC // 30, now) for i in range(5)]
    assert all(len(g) == 1 for g in good)


def test_one_far_future_frame_does_not_block_the_good_ones():
    asm = RGBDAssembler(slop_s=0.02)
    now = 1000 * SEC
    assert feed(asm, now + 3600 * SEC, now) == []        # an hour ahead: rejected
    assert asm.faults["bad_stamp"] == 3
    published = sum(len(feed(asm, now + i * SEC // 30, now + i * SEC // 30)) for i in range(40))
    assert published == 40


def test_a_near_future_frame_poisons_at_most_a_few_frames():
    asm = RGBDAssembler(slop_s=0.02)
    now = 1000 * SEC
    assert len(feed(asm, now + 4 * SEC, now)) == 1       # within max_stamp_future_s: accepted, matched
    published = sum(len(feed(asm, now + i * SEC // 30, now + i * SEC // 30)) for i in range(1, 41))
    assert published >= 36 and asm.matcher.stats.timeline_resets == 1


def test_backwards_stamps_dropped_per_message_then_a_restarted_timeline_resets():
    m = ApproximateTimeMatcher(["a", "b"], slop_ns=10, queue_size=5)
    assert m.add("a", 1000, 1) == [] and len(m.add("b", 1000, 1)) == 1
    assert m.add("a", 500, 2) == []                       # one old message: dropped, nothing reset
    assert m.stats.dropped_out_of_order["a"] == 1 and m.stats.timeline_resets == 0
    assert m.add("a", 1100, 3) == [] and len(m.add("b", 1100, 3)) == 1
    # a looping bag: every stamp restarts from the beginning
    got = []
    for i in range(10):
        got += m.add("a", 100 + i * 10, i) + m.add("b", 100 + i * 10, i)
    assert m.stats.timeline_resets == 1 and len(got) >= 6


def test_assembler_reset_forgets_the_old_timeline():
    asm = RGBDAssembler(slop_s=0.02)
    assert len(feed(asm, 100 * SEC, 100 * SEC)) == 1
    asm.reset()
    assert len(feed(asm, 1 * SEC, 1 * SEC)) == 1          # accepted at once after the reset


@pytest.mark.parametrize("horizon", [2**31 - 1, 10**9, 10_001])
def test_huge_horizon_is_rejected_before_allocating(horizon):
    from mu0_msgs.msg import Trace, TraceArray
    msg = TraceArray()
    msg.horizon_steps = horizon
    msg.step_period = 0.05
    msg.traces = [Trace()]
    with pytest.raises(ValueError, match="horizon_steps"):
        convert.trace_msg_to_set(msg)
    msg.horizon_steps = 5000                              # allowed, but the lengths do not match:
    with pytest.raises(ValueError, match=r"traces\[0\].samples"):   # checked before the arrays exist
        convert.trace_msg_to_set(msg)


def test_huge_image_claims_are_rejected_before_allocating():
    m = stream_msgs(SEC)["color"]
    m.height, m.step = 2**31 - 1, 2**31 - 1
    with pytest.raises(ValueError):
        convert.image_to_numpy(m)
    m.height, m.width, m.step = 6, 2**30, 3 * 2**30
    with pytest.raises(ValueError):
        convert.image_to_numpy(m)


def test_check_stamp():
    assert convert.check_stamp(5, 10, 1.0) == 5
    with pytest.raises(ValueError, match="negative"):
        convert.check_stamp(-1, 10, 1.0)
    with pytest.raises(ValueError, match="ahead"):
        convert.check_stamp(10 + 2 * SEC, 10, 1.0)
    assert convert.check_stamp(10 * SEC, 0, 1.0) == 10 * SEC   # clock not started: no future check
