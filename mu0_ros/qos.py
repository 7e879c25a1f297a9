"""QoS profiles of the mu0 graph and incompatible-QoS reporting (node-side helper; imports rclpy).

realsense-ros publishes images and camera_info with a keep-last history and (depending on its
`*_qos` parameters) RELIABLE or BEST_EFFORT delivery. Our camera inputs and the model input use
BEST_AVAILABLE (ROS 2 Iron and later): the subscription is reliable when every publisher is and
best effort otherwise, so it is compatible with both like BEST_EFFORT, but a reliable camera's
large images arrive whole — a best-effort reader loses an image whenever one of its DDS fragments
is lost, measured: ~1 in 3 colour and 3 in 4 depth images at 640x480 @ 30 Hz on this machine,
none with BEST_AVAILABLE. On Humble (no BEST_AVAILABLE) it falls back to BEST_EFFORT. The
policy is resolved when the subscription is created (reliable when no publisher is up yet), so a
best-effort camera that starts later is incompatible: rgbd_sync then re-subscribes best effort
(`reliability_fallbacks` on /diagnostics) instead of staying deaf. If a user
overrides the reliability to RELIABLE while the camera publishes BEST_EFFORT, DDS silently never
connects the two; the event callbacks below turn that into a counted, throttled warning instead.
"""
from __future__ import annotations

import threading

from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile,
                       ReliabilityPolicy)

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE,
                "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
                # Humble has no BEST_AVAILABLE: best effort is the compatible choice there
                "best_available": getattr(ReliabilityPolicy, "BEST_AVAILABLE", ReliabilityPolicy.BEST_EFFORT)}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL,
               "system_default": DurabilityPolicy.SYSTEM_DEFAULT}


def make_qos(reliability: str = "best_effort", durability: str = "volatile", depth: int = 5,
             name: str = "qos") -> QoSProfile:
    """A keep-last profile from parameter strings; ValueError names the bad parameter."""
    if reliability not in _RELIABILITY:
        raise ValueError(f"{name}.reliability must be one of {sorted(_RELIABILITY)}, got {reliability!r}")
    if durability not in _DURABILITY:
        raise ValueError(f"{name}.durability must be one of {sorted(_DURABILITY)}, got {durability!r}")
    if int(depth) < 1:
        raise ValueError(f"{name}.depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=_RELIABILITY[reliability], durability=_DURABILITY[durability])


def sensor_qos(depth: int = 5, reliability: str = "best_effort") -> QoSProfile:
    """Camera streams: keep-last, best effort, volatile (compatible with realsense-ros defaults)."""
    return make_qos(reliability, "volatile", depth, name="sensor_qos")


def latest_only_qos() -> QoSProfile:
    """Model input: keep only the newest frame, never a backlog (reliable from a reliable publisher,
    so a 1.5 MB RGBD frame is not lost to one dropped fragment; keep-last 1 still replaces it)."""
    return make_qos("best_available", "volatile", 1, name="latest_only_qos")


def latched_qos() -> QoSProfile:
    """Instruction-like state: the last value is delivered to late joiners."""
    return make_qos("reliable", "transient_local", 1, name="latched_qos")


def reliable_qos(depth: int = 10) -> QoSProfile:
    return make_qos("reliable", "volatile", depth, name="reliable_qos")


def _policy_name(kind) -> str:
    try:
        return QoSPolicyKind(kind).name
    except ValueError:
        return str(kind)


class QosEventMonitor:
    """Counts incompatible-QoS events per topic and logs a throttled warning for each new one."""

    def __init__(self, node):
        self._node = node
        self._lock = threading.Lock()
        self.incompatible: dict[str, int] = {}

    def _record(self, topic: str, role: str, info) -> None:
        with self._lock:
            self.incompatible[topic] = self.incompatible.get(topic, 0) + max(1, int(info.total_count_change))
            count = self.incompatible[topic]
        self._node.get_logger().warning(
            f"incompatible QoS on {role} {topic}: policy {_policy_name(info.last_policy_kind)} "
            f"(seen {count}x); the endpoints will not exchange messages",
            throttle_duration_sec=5.0)

    def subscription(self, topic: str, on_incompatible=None) -> SubscriptionEventCallbacks:
        """`on_incompatible(info)`: a node's own remedy (e.g. re-subscribe best effort); when it
        returns True the event is handled and not counted as incompatible."""
        def event(info):
            if on_incompatible is not None and on_incompatible(info):
                return
            self._record(topic, "subscription", info)

        return SubscriptionEventCallbacks(incompatible_qos=event)

    def publisher(self, topic: str) -> PublisherEventCallbacks:
        return PublisherEventCallbacks(
            incompatible_qos=lambda info: self._record(topic, "publisher", info))

    def total(self) -> int:
        with self._lock:
            return sum(self.incompatible.values())


def spin_until_shutdown(node, executor=None) -> int:
    """Spin `node` until Ctrl-C / SIGTERM / external shutdown; returns the exit code.

    0 on a requested shutdown, even when the middleware raises from a take that was interrupted by
    it (e.g. "RuntimeError: Unable to convert call argument" from take_message during SIGINT);
    1, with the error printed on one line, for an exception while the context was still running."""
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        if executor is None:
            rclpy.spin(node)
        else:
            executor.add_node(node)
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except Exception as exc:  # noqa: BLE001
        if not rclpy.ok():   # shutting down: whatever the interrupted take raised is not an error
            return 0
        print(f"{node.get_name()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0

