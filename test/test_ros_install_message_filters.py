"""Differential test: rgbd_sync's matcher (mu0_perception.sync.ApproximateTimeMatcher) against the
real jazzy message_filters.ApproximateTimeSynchronizer (Python, from ../shared/ros2; skipped
without it) on seeded colour / depth / camera_info streams.

* camera jitter, dropped messages, and streams arriving out of order with respect to each other
  (each stream with its own transport latency, up to several frames apart — what DDS does: one
  writer's samples arrive in order, different topics do not): both emit exactly the same sets,
  in the same order, and every set holds the colour, depth and info of one frame.
* a stream that reorders its OWN messages (not something one DDS writer does; a bag merged
  badly, a relay): both still pair only true frames, ours never emits a frame older than one it
  already emitted, message_filters does (it matches the late message to partners still queued,
  after newer sets went out) — rgbd_sync keeps its matcher for this "never a stale frame" rule and
  because message_filters is not in the pip environment. docs/runtime.md says so.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from mu0_perception.sync import ApproximateTimeMatcher
from ros_install_env import SHARED_ROS2, requires_shared_ros2

pytestmark = requires_shared_ros2
STREAMS = ("color", "depth", "info")
PERIOD_NS = 33_333_333            # 30 Hz camera
SLOP_S = 0.02                     # rgbd_sync's default slop
QUEUE = 10                        # rgbd_sync's default queue_size


@pytest.fixture(scope="module")
def message_filters():
    sys.path.insert(0, str(SHARED_ROS2 / "message_filters"))
    import message_filters as mf

    return mf


class Msg:
    def __init__(self, stamp_ns: int, frame: int):
        from std_msgs.msg import Header

        self.header = Header()
        self.header.stamp.sec, self.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        self.frame = frame


def seeded_streams(seed, n=300, jitter_ns=3e6, drop=0.1, latency_ns=None, self_reorder=0.0):
    """[(arrival, stream, stamp, frame)] sorted by arrival."""
    rng = np.random.default_rng(seed)
    latency_ns = latency_ns or {"color": 5e6, "depth": 8e6, "info": 1e6}
    events = []
    for k in range(n):
        t = 10**9 + k * PERIOD_NS
        for s in STREAMS:
            if rng.random() < drop:
                continue
            stamp = int(t + rng.uniform(-jitter_ns, jitter_ns))
            late = rng.uniform(30e6, 80e6) if rng.random() < self_reorder else 0.0
            events.append((stamp + latency_ns[s] + rng.exponential(2e6) + late, s, stamp, k))
    events.sort()
    return events


def run_both(message_filters, events):
    ours, theirs = [], []
    matcher = ApproximateTimeMatcher(list(STREAMS), int(SLOP_S * 1e9), QUEUE)
    inputs = [message_filters.SimpleFilter() for _ in STREAMS]
    sync = message_filters.ApproximateTimeSynchronizer(inputs, QUEUE, SLOP_S)
    sync.registerCallback(lambda *msgs: theirs.append(tuple(m.frame for m in msgs)))
    for _, stream, stamp, frame in events:
        for match in matcher.add(stream, stamp, frame):
            ours.append(tuple(match[s][1] for s in STREAMS))
        inputs[STREAMS.index(stream)].signalMessage(Msg(stamp, frame))
    return ours, theirs


@pytest.mark.parametrize("latency_ns", [
    None,                                                      # a few ms apart
    {"color": 5e6, "depth": 70e6, "info": 1e6},                # depth two frames behind colour
    {"color": 100e6, "depth": 8e6, "info": 40e6},              # colour three frames behind depth
])
@pytest.mark.parametrize("seed", range(4))
def test_same_sets_with_jitter_drops_and_cross_stream_reordering(message_filters, seed, latency_ns):
    events = seeded_streams(seed, latency_ns=latency_ns)
    ours, theirs = run_both(message_filters, events)
    assert len(ours) > 150                                     # ~0.9^3 of 300 frames are complete
    assert all(len(set(s)) == 1 for s in ours)                 # colour, depth and info of one frame
    assert ours == theirs


@pytest.mark.parametrize("seed", range(3))
def test_self_reordering_stream_ours_stays_in_order_message_filters_does_not(message_filters, seed):
    ours, theirs = run_both(message_filters, seeded_streams(seed, self_reorder=0.1))
    assert all(len(set(s)) == 1 for s in ours) and all(len(set(s)) == 1 for s in theirs)
    ours_frames, their_frames = [s[0] for s in ours], [s[0] for s in theirs]
    assert ours_frames == sorted(set(ours_frames))             # strictly increasing: never a stale frame
    assert set(ours_frames) <= set(their_frames)
    assert their_frames != sorted(their_frames)                # message_filters emits late frames after newer ones
