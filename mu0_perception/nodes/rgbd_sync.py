"""rgbd_sync: colour + aligned depth + camera_info -> one mu0_msgs/RGBD on /mu0/rgbd.

Subscriptions use keep-last, volatile QoS with BEST_AVAILABLE reliability by default: reliable
delivery from a reliable camera (realsense-ros' default), best effort from a best-effort one, so it
accepts realsense-ros publishers whatever their reliability setting. (A best-effort subscription
loses most 640x480 images at 30 Hz over Fast DDS: one lost fragment drops the whole image.) The
policy is fixed when the subscription is created; a best-effort camera that starts later makes a
stream re-subscribe best effort (`reliability_fallbacks`). An incompatible explicit override is
reported (counter + throttled warning), never silent. Matching is
`mu0_perception.sync.RGBDAssembler` (approximate time, `slop` seconds, `queue_size` per stream).
A matched set is checked without a decode and goes out as it came: 16UC1 millimetre depth stays
16UC1 (32FC1 metres stays 32FC1), rgb8 colour stays rgb8 (bgr8 / mono8 become rgb8). Every drop is counted by reason and published on
/diagnostics; malformed frames are dropped with a throttled warning, never a crash: any exception
from one message (MemoryError, OverflowError, TypeError, ...) is counted by reason
(`dropped.<stream>.<reason>`) and the node keeps serving. A negative stamp or one more than
`max_stamp_future_s` (5 s) ahead of the node clock is dropped per message (`bad_stamp`); when the
node clock jumps backwards (`mu0 replay BAG --loop` with use_sim_time) the sync state is reset
(`time_jump_resets`), as ROS components do. SIGINT exits 0.
"""
from __future__ import annotations

import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind
from sensor_msgs.msg import CameraInfo, Image

from mu0_msgs.msg import RGBD
from mu0_perception.sync import FAULTS, STREAMS, RGBDAssembler
from mu0_ros import convert
from mu0_ros.diagnostics import WARN, DropCounter, RuntimeMonitor, diagnostic_array_msg
from mu0_ros.node_main import spin_node
from mu0_ros.qos import QosEventMonitor, make_qos, reliable_qos


class RGBDSyncNode(Node):
    def __init__(self, **kwargs):
        super().__init__("rgbd_sync", **kwargs)
        p = self.declare_parameter
        topics = {
            "color": p("color_topic", "/camera/camera/color/image_raw").value,
            "depth": p("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw").value,
            "info": p("camera_info_topic", "/camera/camera/color/camera_info").value,
        }
        output_topic = p("output_topic", "/mu0/rgbd").value
        slop = float(p("slop", 0.02).value)
        queue_size = int(p("queue_size", 10).value)
        reliability = p("input_reliability", "best_available").value
        # 1 s of a 30 Hz camera: the node may be descheduled for a while on a loaded machine, and a
        # reliable reader drops whatever its history cannot hold (measured: ~60 % of 640x480 @ 30 Hz
        # lost with 5 at load average 20-25)
        depth = int(p("input_depth", 30).value)
        min_valid = float(p("min_valid_depth_fraction", 0.05).value)
        self.missing_input_timeout = float(p("missing_input_timeout", 2.0).value)
        self.max_future_s = float(p("max_stamp_future_s", 5.0).value)
        period = float(p("diagnostics_period", 1.0).value)
        input_qos = make_qos(reliability, "volatile", depth, name="input")  # ValueError names the parameter

        self.monitor = RuntimeMonitor("mu0: rgbd_sync")
        self.qos_events = QosEventMonitor(self)
        # matched sets become RGBD messages without a decode: the depth travels as the camera sent it
        self.assembler = RGBDAssembler(slop, queue_size, min_valid, output="message")
        self.drops = DropCounter()
        self._last_clock_ns = None
        self._lock = threading.Lock()
        self._last_seen = {s: None for s in STREAMS}
        self._started = time.monotonic()
        self.topics = topics
        # the model input is latest-only downstream; here a small reliable queue keeps frames whole
        self.publisher = self.create_publisher(RGBD, output_topic, reliable_qos(5),
                                               event_callbacks=self.qos_events.publisher(output_topic))
        self._input_qos = input_qos
        self._best_available = reliability == "best_available"
        self._fallback_pending: set = set()
        self._subs = {s: self._subscribe(s, input_qos) for s in STREAMS}
        self.diag_pub = self.create_publisher(DiagnosticArray,
                                              "/diagnostics", reliable_qos(10))
        # diagnostics on the steady clock: under use_sim_time they must keep coming when /clock
        # stops or jumps back (a paused or looping bag), which is when someone reads them
        self.create_timer(period, self._report, clock=Clock(clock_type=ClockType.STEADY_TIME))
        # a backwards jump of the node clock (a looping bag's /clock) resets the matcher when it
        # happens, from the clock itself: comparing clock readings between messages misses it when
        # a loaded executor applies the /clock messages of a whole pass before the frames
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=False),
            post_callback=self._on_time_jump)
        self.get_logger().info(f"syncing {topics['color']} + {topics['depth']} + {topics['info']} "
                               f"-> {output_topic} (slop {slop * 1e3:.0f} ms, queue {queue_size}, {reliability})")

    def _subscribe(self, stream: str, qos):
        msg_type = CameraInfo if stream == "info" else Image
        return self.create_subscription(
            msg_type, self.topics[stream], lambda m, s=stream: self._on_message(s, m), qos,
            event_callbacks=self.qos_events.subscription(
                self.topics[stream], on_incompatible=lambda info, s=stream: self._on_incompatible(s, info)))

    def _on_incompatible(self, stream: str, info) -> bool:
        """BEST_AVAILABLE resolved to reliable before a best-effort camera appeared: re-subscribe best
        effort (at the next diagnostics tick, outside the subscription's own event callback)."""
        try:
            reliability = QoSPolicyKind(info.last_policy_kind) == QoSPolicyKind.RELIABILITY
        except ValueError:
            reliability = False
        if not (self._best_available and reliability):
            return False
        with self._lock:
            self._fallback_pending.add(stream)
        return True

    def _apply_fallbacks(self) -> None:
        with self._lock:
            pending, self._fallback_pending = self._fallback_pending, set()
        for stream in sorted(pending):
            qos = make_qos("best_effort", "volatile", self._input_qos.depth, name="input")
            self.destroy_subscription(self._subs[stream])
            self._subs[stream] = self._subscribe(stream, qos)
            self.monitor.count("reliability_fallbacks")
            self.get_logger().warning(f"{self.topics[stream]} is published best effort: re-subscribed best effort "
                                      "(large images may lose fragments; a reliable camera delivers them whole)")

    def _on_message(self, stream: str, msg) -> None:
        self.monitor.count(f"in_{stream}")      # every message delivered, whatever becomes of it
        try:
            self._handle(stream, msg)
        except Exception as exc:  # noqa: BLE001 - one message never stops the node
            reason, n = self.drops.drop(stream, exc)
            self.monitor.count("malformed")
            self.get_logger().warning(f"dropped a {stream} message ({reason}, {n} so far): "
                                      f"{type(exc).__name__}: {str(exc)[:200]}", throttle_duration_sec=5.0)

    def _on_time_jump(self, jump) -> None:
        with self._lock:
            self.assembler.reset()          # backwards time jump (looping bag): start over
            self.monitor.count("time_jump_resets")
            self._last_clock_ns = None
        self.get_logger().warning(f"time jumped back {-jump.delta.nanoseconds * 1e-9:.3f} s: sync state reset",
                                  throttle_duration_sec=5.0)

    def _handle(self, stream: str, msg) -> None:
        now = self.get_clock().now().nanoseconds
        with self._lock:
            if self._last_clock_ns is not None and now < self._last_clock_ns:
                self.assembler.reset()      # a jump the clock's handler did not report (system time)
                self.monitor.count("time_jump_resets")
                self.get_logger().warning(f"time jumped back {(self._last_clock_ns - now) * 1e-9:.3f} s: "
                                          "sync state reset", throttle_duration_sec=5.0)
            self._last_clock_ns = now
            self._last_seen[stream] = time.monotonic()
            faults_before = dict(self.assembler.faults)
            frames = self.assembler.add(stream, msg, now, self.max_future_s)
            new_faults = {k: v - faults_before[k] for k, v in self.assembler.faults.items() if v != faults_before[k]}
        for fault, n in new_faults.items():
            self.monitor.count(fault, n)
            self.get_logger().warning(f"dropped a frame ({fault}): {self.assembler.last_fault}",
                                      throttle_duration_sec=5.0)
        for out in frames:
            try:
                self.publisher.publish(out)
            except Exception as exc:  # noqa: BLE001 - a frame we cannot publish is dropped, counted
                reason, n = self.drops.drop("output", exc)
                self.get_logger().warning(f"dropped an assembled frame ({reason}): {exc}", throttle_duration_sec=5.0)
                continue
            self.monitor.count("published")
            self.monitor.record("sync_delay_ms", (time.time_ns() - convert.stamp_to_ns(out.header.stamp)) / 1e6)

    def counters(self) -> dict:
        """All drop / fault counters in one flat dict (what /diagnostics reports)."""
        stats = self.assembler.matcher.stats
        with self._lock:
            out = {"matched": stats.matched, "published": self.monitor.get("published"),
                   "incompatible_qos": self.qos_events.total(), "malformed": self.monitor.get("malformed"),
                   "timeline_resets": stats.timeline_resets,
                   "time_jump_resets": self.monitor.get("time_jump_resets")}
            for fault in FAULTS:
                out[fault] = self.assembler.faults[fault]
            for s in STREAMS:
                out[f"received_{s}"] = stats.received[s]
                out[f"unmatched_{s}"] = stats.dropped_unmatched[s]
                out[f"overflow_{s}"] = stats.dropped_overflow[s]
                out[f"out_of_order_{s}"] = stats.dropped_out_of_order[s]
        return out

    def missing_streams(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            seen = dict(self._last_seen)
        if now - self._started < self.missing_input_timeout:
            return []
        return [s for s, t in seen.items() if t is None or now - t > self.missing_input_timeout]

    def _report(self) -> None:
        self._apply_fallbacks()
        counters = self.counters()
        missing = self.missing_streams()
        if missing and any(self._last_seen[s] is not None for s in STREAMS):
            self.get_logger().warning(f"no {', '.join(self.topics[s] for s in missing)} for "
                                      f"{self.missing_input_timeout:.1f} s: frames cannot be assembled",
                                      throttle_duration_sec=5.0)
        status = self.monitor.status()
        status.values.update({k: str(v) for k, v in counters.items()})
        status.values.update(self.drops.values())
        problems = [k for k, v in counters.items() if v and k not in ("matched", "published") and not k.startswith("received_")]
        if problems or missing:
            status.level = WARN
            status.message = "; ".join(filter(None, [
                ("dropped: " + ", ".join(problems)) if problems else "",
                ("missing: " + ", ".join(missing)) if missing else ""]))
        self.diag_pub.publish(diagnostic_array_msg([status], self.get_clock().now().to_msg()))


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on SIGINT / SIGTERM (also while starting), 2 on a bad parameter
    (mu0_ros.node_main has the rest)."""
    return spin_node(RGBDSyncNode, argv, name="rgbd_sync")


if __name__ == "__main__":
    sys.exit(main())
