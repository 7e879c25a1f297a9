"""Approximate-time matching of several timestamped streams (pure Python, no ROS).

message_filters is not available without a ROS install, and the policy we need is small: every
stream keeps a bounded queue; once every queue holds a message, the newest queue head is the
pivot, each stream contributes its latest message not after the pivot, and the set is emitted
when its spread (pivot - oldest candidate) is within `slop`. Otherwise the oldest candidate (and
anything before it in its queue) can never be part of a match any more and is dropped as
unmatched. Messages older than an emitted set
are dropped too (they lost their partner). Every drop is counted per stream and reason, so a node
can report them.

Stamps: the assembler rejects a negative stamp or one more than `max_future_s` ahead of the node
clock per message (`bad_stamp`), before it reaches the matcher, so one bad frame never blocks the
good ones after it. A stamp older than the last match is dropped per message (`out_of_order`);
when `restart_after` messages in a row are (the input timeline restarted, e.g. a looping bag
without /clock) the matcher resets, as ROS components do on a backwards time jump. A node also
calls `reset()` when its own clock jumps backwards.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class SyncStats:
    matched: int = 0
    received: dict = field(default_factory=dict)          # stream -> count
    dropped_unmatched: dict = field(default_factory=dict)  # stream -> count (no partner within slop)
    dropped_overflow: dict = field(default_factory=dict)   # stream -> count (queue full)
    dropped_out_of_order: dict = field(default_factory=dict)  # stream -> count (older than last match)
    timeline_resets: int = 0                                # resets after a run of backwards stamps

    def total_dropped(self) -> int:
        return (sum(self.dropped_unmatched.values()) + sum(self.dropped_overflow.values())
                + sum(self.dropped_out_of_order.values()))


class ApproximateTimeMatcher:
    """Group messages of `streams` whose stamps (int ns) lie within `slop_ns` of each other.

    `add(stream, stamp_ns, item)` returns the list of matched sets it completed (each a dict
    stream -> (stamp_ns, item)), usually zero or one.
    """

    def __init__(self, streams, slop_ns: int, queue_size: int = 10,
                 on_drop: Callable[[str, str, int], None] | None = None, restart_after: int | None = None):
        streams = list(streams)
        if len(streams) < 2 or len(set(streams)) != len(streams):
            raise ValueError(f"streams must be >= 2 distinct names, got {streams}")
        if slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {slop_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.streams = streams
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self._queues: dict[str, deque] = {s: deque() for s in streams}
        self._last_emitted_ns: int | None = None
        self._on_drop = on_drop
        self.restart_after = 3 * len(streams) if restart_after is None else int(restart_after)
        self._backwards_run = 0
        self.stats = SyncStats(received={s: 0 for s in streams},
                               dropped_unmatched={s: 0 for s in streams},
                               dropped_overflow={s: 0 for s in streams},
                               dropped_out_of_order={s: 0 for s in streams})

    def _drop(self, stream: str, reason: str, stamp_ns: int) -> None:
        getattr(self.stats, f"dropped_{reason}")[stream] += 1
        if self._on_drop is not None:
            self._on_drop(stream, reason, stamp_ns)

    def queued(self, stream: str) -> int:
        return len(self._queues[stream])

    def add(self, stream: str, stamp_ns: int, item: Any) -> list[dict]:
        if stream not in self._queues:
            raise ValueError(f"unknown stream {stream!r}; expected one of {self.streams}")
        stamp_ns = int(stamp_ns)
        self.stats.received[stream] += 1
        if self._last_emitted_ns is not None and stamp_ns < self._last_emitted_ns - self.slop_ns:
            self._drop(stream, "out_of_order", stamp_ns)
            self._backwards_run += 1
            if self.restart_after <= 0 or self._backwards_run < self.restart_after:
                return []
            # the input timeline restarted (or one far-ahead match poisoned it): start over from here
            self.reset()
            self.stats.timeline_resets += 1
        self._backwards_run = 0
        queue = self._queues[stream]
        # keep the queue sorted by stamp (transports may reorder slightly)
        position = len(queue)
        while position > 0 and queue[position - 1][0] > stamp_ns:
            position -= 1
        queue.insert(position, (stamp_ns, item))
        if len(queue) > self.queue_size:
            old_stamp, _ = queue.popleft()
            self._drop(stream, "overflow", old_stamp)
        return self._match()

    def _match(self) -> list[dict]:
        matches = []
        while all(self._queues[s] for s in self.streams):
            # The newest head is the pivot: that stream has nothing older, so every match from now
            # on contains a message >= pivot. Each other stream offers its latest message <= pivot
            # (it has one: its head).
            pivot = max(self._queues[s][0][0] for s in self.streams)
            chosen = {}
            for s in self.streams:
                queue = self._queues[s]
                index = 0
                while index + 1 < len(queue) and queue[index + 1][0] <= pivot:
                    index += 1
                chosen[s] = index
            stamps = {s: self._queues[s][chosen[s]][0] for s in self.streams}
            if pivot - min(stamps.values()) <= self.slop_ns:
                match = {}
                for s in self.streams:
                    queue = self._queues[s]
                    for _ in range(chosen[s]):  # older than the match: their partner is gone
                        old_stamp, _ = queue.popleft()
                        self._drop(s, "unmatched", old_stamp)
                    match[s] = queue.popleft()
                self._last_emitted_ns = pivot
                self.stats.matched += 1
                matches.append(match)
                continue
            # The stream with the oldest candidate: it and everything before it are more than slop
            # older than the pivot stream's oldest message, so they can never be matched.
            stale = min(self.streams, key=lambda s: stamps[s])
            for _ in range(chosen[stale] + 1):
                old_stamp, _ = self._queues[stale].popleft()
                self._drop(stale, "unmatched", old_stamp)
        return matches

    def reset(self) -> None:
        for queue in self._queues.values():
            queue.clear()
        self._last_emitted_ns = None
        self._backwards_run = 0


# ----------------------------------------------------------------------------------------------
# colour + depth + camera_info -> one RGBDFrame (shared by the rgbd_sync node and offline replay)
# ----------------------------------------------------------------------------------------------
STREAMS = ("color", "depth", "info")
FAULTS = ("bad_encoding", "size_mismatch", "bad_camera_info", "invalid_depth", "malformed", "bad_stamp")


class FrameRejected(ValueError):
    """A matched colour/depth/camera_info set that cannot become a frame; `fault` says why."""

    def __init__(self, fault: str, detail: str):
        super().__init__(f"{fault}: {detail}")
        self.fault = fault
        self.detail = detail


def classify_fault(message: str) -> str:
    """Map a conversion ValueError's text (it names the field) to a counter name."""
    text = message.lower()
    if "encoding" in text:
        return "bad_encoding"
    if "camera_info size" in text or "shape" in text or "height*step" in text or "step:" in text:
        return "size_mismatch"
    if "camera_info" in text:
        return "bad_camera_info"
    return "malformed"


def check_frame_parts(color_msg, depth_msg, info_msg, min_valid_depth_fraction: float = 0.05):
    """Validate one matched set without converting its images; returns its CameraIntrinsics.

    Raises FrameRejected (a ValueError) with a fault name from FAULTS. A frame whose depth is
    almost all invalid (NaN / 0 / negative) is rejected as `invalid_depth`: a model fed no depth
    would anchor every trace on a guess, and downstream a robot would follow it. The images are
    only looked at through views of the messages' buffers, so the rgbd_sync node can pass them on
    without a decode (convert.rgbd_msg_from_images) and offline replay decodes the same sets.
    """
    from mu0_ros import convert  # pure (no rclpy); imported here to keep the matcher dependency-free

    try:
        if color_msg.encoding not in convert.COLOR_ENCODINGS:
            raise ValueError(f"encoding: {color_msg.encoding!r} is not a colour encoding (rgb8, bgr8, mono8)")
        if depth_msg.encoding not in convert.DEPTH_ENCODINGS:
            raise ValueError(f"encoding: {depth_msg.encoding!r} is not a depth encoding (16UC1, mono16, 32FC1)")
        color = convert.image_view(color_msg)
        depth = convert.image_view(depth_msg)
        intrinsics = convert.intrinsics_from_camera_info(info_msg)
    except ValueError as exc:
        raise FrameRejected(classify_fault(str(exc)), str(exc)) from None
    if depth.shape != color.shape[:2]:
        raise FrameRejected("size_mismatch", f"depth {depth.shape[1]}x{depth.shape[0]} != color "
                                             f"{color.shape[1]}x{color.shape[0]} (depth must be aligned to color)")
    if (intrinsics.height, intrinsics.width) != color.shape[:2]:
        raise FrameRejected("size_mismatch", f"camera_info {intrinsics.width}x{intrinsics.height} != color "
                                             f"{color.shape[1]}x{color.shape[0]}")
    valid_fraction = convert.depth_valid_fraction(depth_msg)
    if valid_fraction < min_valid_depth_fraction:
        raise FrameRejected("invalid_depth", f"only {valid_fraction:.1%} of depth pixels are valid "
                                             f"(min_valid_depth_fraction {min_valid_depth_fraction:.1%})")
    return intrinsics


def assemble_frame(color_msg, depth_msg, info_msg, min_valid_depth_fraction: float = 0.05):
    """Convert one matched set to an RGBDFrame (colour RGB, depth float32 metres, NaN invalid).

    Raises FrameRejected as `check_frame_parts` does (the same sets pass)."""
    from mu0_core.frames import RGBDFrame
    from mu0_ros import convert

    intrinsics = check_frame_parts(color_msg, depth_msg, info_msg, min_valid_depth_fraction)
    return RGBDFrame(stamp_ns=convert.stamp_to_ns(color_msg.header.stamp), frame_id=color_msg.header.frame_id,
                     color=convert.color_from_image(color_msg), depth=convert.depth_from_image(depth_msg),
                     intrinsics=intrinsics)


def assemble_rgbd_msg(color_msg, depth_msg, info_msg, min_valid_depth_fraction: float = 0.05, typestore=None):
    """One matched set -> mu0_msgs/RGBD, checked as `assemble_frame` checks it but not decoded: the
    depth travels in its own encoding (16UC1 millimetres from a RealSense), rgb8 colour as is."""
    from mu0_ros import convert

    check_frame_parts(color_msg, depth_msg, info_msg, min_valid_depth_fraction)
    return convert.rgbd_msg_from_images(color_msg, depth_msg, info_msg, typestore)


class RGBDAssembler:
    """Approximate-time matching + conversion + fault counting, fed one message at a time."""

    def __init__(self, slop_s: float = 0.02, queue_size: int = 10, min_valid_depth_fraction: float = 0.05,
                 output: str = "frame"):
        """`output`: "frame" -> RGBDFrame (decoded; offline replay), "message" -> mu0_msgs/RGBD built
        from the matched messages without decoding them (the rgbd_sync node)."""
        if not slop_s >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
        if output not in ("frame", "message"):
            raise ValueError(f"output must be 'frame' or 'message', got {output!r}")
        self._assemble = assemble_frame if output == "frame" else assemble_rgbd_msg
        self.matcher = ApproximateTimeMatcher(STREAMS, int(round(slop_s * 1e9)), queue_size)
        self.min_valid_depth_fraction = float(min_valid_depth_fraction)
        self.faults = {f: 0 for f in FAULTS}
        self.last_fault = ""

    def reset(self) -> None:
        """Forget everything queued (a backwards time jump of the node clock)."""
        self.matcher.reset()

    def add(self, stream: str, msg, now_ns: int | None = None, max_future_s: float | None = None) -> list:
        """Feed a colour / depth / info message; returns completed frames ([] usually; RGBDFrame or
        mu0_msgs/RGBD, see `output`). A negative
        stamp, or one more than `max_future_s` ahead of `now_ns` (the node clock), is counted as
        `bad_stamp` and dropped on its own."""
        from mu0_ros.convert import check_stamp, stamp_to_ns

        try:
            stamp = check_stamp(stamp_to_ns(msg.header.stamp), now_ns, max_future_s, f"{stream}.header.stamp")
        except ValueError as exc:
            self.faults["bad_stamp"] += 1
            self.last_fault = str(exc)
            return []
        frames = []
        for match in self.matcher.add(stream, stamp, msg):
            try:
                frames.append(self._assemble(match["color"][1], match["depth"][1], match["info"][1],
                                             self.min_valid_depth_fraction))
            except FrameRejected as exc:
                self.faults[exc.fault] += 1
                self.last_fault = str(exc)
        return frames
