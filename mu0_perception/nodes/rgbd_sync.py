"""rgbd_sync: colour + aligned depth + camera_info -> one mu0_msgs/RGBD on /mu0/rgbd.

Subscriptions use keep-last, best-effort, volatile QoS by default, which accepts realsense-ros
publishers whatever their reliability setting; an incompatible override is reported (counter +
throttled warning), never silent. Matching is `mu0_perception.sync.RGBDAssembler` (approximate
time, `slop` seconds, `queue_size` per stream). Depth 16UC1 millimetres or 32FC1 metres comes out
as 32FC1 metres with NaN for invalid pixels. Every drop is counted by reason and published on
/diagnostics; malformed frames are dropped with a throttled warning, never a crash.
"""
from __future__ import annotations

import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from mu0_msgs.msg import RGBD
from mu0_perception.sync import FAULTS, STREAMS, RGBDAssembler
from mu0_ros import convert
from mu0_ros.diagnostics import WARN, RuntimeMonitor, diagnostic_array_msg
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
        reliability = p("input_reliability", "best_effort").value
        depth = int(p("input_depth", 5).value)
        min_valid = float(p("min_valid_depth_fraction", 0.05).value)
        self.missing_input_timeout = float(p("missing_input_timeout", 2.0).value)
        period = float(p("diagnostics_period", 1.0).value)
        input_qos = make_qos(reliability, "volatile", depth, name="input")  # ValueError names the parameter

        self.monitor = RuntimeMonitor("mu0: rgbd_sync")
        self.qos_events = QosEventMonitor(self)
        self.assembler = RGBDAssembler(slop, queue_size, min_valid)
        self._lock = threading.Lock()
        self._last_seen = {s: None for s in STREAMS}
        self._started = time.monotonic()
        self.topics = topics
        # the model input is latest-only downstream; here a small reliable queue keeps frames whole
        self.publisher = self.create_publisher(RGBD, output_topic, reliable_qos(5),
                                               event_callbacks=self.qos_events.publisher(output_topic))
        msg_types = {"color": Image, "depth": Image, "info": CameraInfo}
        self._subs = [
            self.create_subscription(msg_types[s], topics[s], lambda m, s=s: self._on_message(s, m), input_qos,
                                     event_callbacks=self.qos_events.subscription(topics[s]))
            for s in STREAMS]
        self.diag_pub = self.create_publisher(DiagnosticArray,
                                              "/diagnostics", reliable_qos(10))
        self.create_timer(period, self._report)
        self.get_logger().info(f"syncing {topics['color']} + {topics['depth']} + {topics['info']} "
                               f"-> {output_topic} (slop {slop * 1e3:.0f} ms, queue {queue_size}, {reliability})")

    def _on_message(self, stream: str, msg) -> None:
        try:
            with self._lock:
                self._last_seen[stream] = time.monotonic()
                faults_before = dict(self.assembler.faults)
                frames = self.assembler.add(stream, msg)
                new_faults = {k: v - faults_before[k] for k, v in self.assembler.faults.items() if v != faults_before[k]}
        except Exception as exc:  # a message we cannot even read the stamp of: count, never crash
            self.monitor.count("malformed")
            self.get_logger().warning(f"dropped a malformed {stream} message: {exc}", throttle_duration_sec=5.0)
            return
        for fault, n in new_faults.items():
            self.monitor.count(fault, n)
            self.get_logger().warning(f"dropped a frame ({fault}): {self.assembler.last_fault}",
                                      throttle_duration_sec=5.0)
        for frame in frames:
            self.publisher.publish(convert.frame_to_rgbd_msg(frame))
            self.monitor.count("published")
            self.monitor.record("sync_delay_ms", (time.time_ns() - frame.stamp_ns) / 1e6)

    def counters(self) -> dict:
        """All drop / fault counters in one flat dict (what /diagnostics reports)."""
        stats = self.assembler.matcher.stats
        with self._lock:
            out = {"matched": stats.matched, "published": self.monitor.get("published"),
                   "incompatible_qos": self.qos_events.total(), "malformed": self.monitor.get("malformed")}
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
        counters = self.counters()
        missing = self.missing_streams()
        if missing and any(self._last_seen[s] is not None for s in STREAMS):
            self.get_logger().warning(f"no {', '.join(self.topics[s] for s in missing)} for "
                                      f"{self.missing_input_timeout:.1f} s: frames cannot be assembled",
                                      throttle_duration_sec=5.0)
        status = self.monitor.status()
        status.values.update({k: str(v) for k, v in counters.items()})
        problems = [k for k, v in counters.items() if v and k not in ("matched", "published") and not k.startswith("received_")]
        if problems or missing:
            status.level = WARN
            status.message = "; ".join(filter(None, [
                ("dropped: " + ", ".join(problems)) if problems else "",
                ("missing: " + ", ".join(missing)) if missing else ""]))
        self.diag_pub.publish(diagnostic_array_msg([status], self.get_clock().now().to_msg()))


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    node = None
    try:
        node = RGBDSyncNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"rgbd_sync: bad parameter: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
