"""Live bag replay: publish a rosbag2's topics on their original names, with /clock.

Replaces `ros2 bag play` where ros2cli/rosbag2_py are missing. Messages go out as the bag's own
serialized CDR bytes (no decode/encode), streamed from the bag (never loaded whole), paced by
their log time divided by `rate`, optionally in a loop; /clock carries the bag time so nodes with use_sim_time follow it. Topics that carry state
(the instruction) are published transient-local so nodes started late still get them.

    bag_player BAG [--rate 1.0] [--loop] [--topics T ...] [--no-clock] [--wait-for TOPIC ...]
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from rosbags.rosbag2 import Reader
from tqdm import tqdm

from mu0_ros import convert
from mu0_ros.qos import latched_qos, make_qos, reliable_qos

LATCHED_TOPICS = ("/mu0/instruction",)


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy class; ValueError naming the type if not installed."""
    try:
        pkg, kind, name = type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        raise ValueError(f"message type {type_name!r} of the bag is not available to rclpy") from None


def read_schedule(bag: str | Path, topics: list[str] | None = None, exclude=()):
    """[(log_time_ns, topic, type_name, raw_cdr_bytes)] in log-time order (what the player sends)."""
    bag = Path(bag)
    if not (bag / "metadata.yaml").is_file():
        raise ValueError(f"bag: {bag} is not a rosbag2 directory (no metadata.yaml)")
    out = []
    with Reader(bag) as reader:
        connections = _select(reader, topics, exclude, bag)
        for connection, log_time, raw in reader.messages(connections=connections):
            out.append((int(log_time), connection.topic, connection.msgtype, bytes(raw)))
    out.sort(key=lambda item: item[0])
    return out


def _select(reader, topics, exclude, bag):
    """The bag's connections on `topics` (None = all) minus `exclude`; ValueError naming the
    requested topics the bag lacks. One rule for the schedule and the player's publishers."""
    connections = [c for c in reader.connections
                   if (topics is None or c.topic in topics) and c.topic not in set(exclude)]
    if topics:
        missing = sorted(set(topics) - {c.topic for c in reader.connections})
        if missing:
            raise ValueError(f"topics: {missing} not in bag {bag}")
    return connections


class BagPlayer(Node):
    """Publishes a bag's messages as their stored CDR bytes (`Publisher.publish(bytes)`: no
    deserialize / re-serialize, so a 640x480 @ 30 Hz RealSense bag plays in real time), streamed
    from the bag in log-time order rather than loaded whole (a minute of such a stream is GBs)."""

    def __init__(self, bag, rate: float = 1.0, loop: bool = False, topics=None, publish_clock: bool = True,
                 latched_topics=LATCHED_TOPICS, qos_depth: int = 30, exclude=(), **kwargs):
        super().__init__("bag_player", **kwargs)
        if not rate > 0:
            raise ValueError(f"rate: must be > 0, got {rate}")
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise ValueError(f"bag: {self.bag} is not a rosbag2 directory (no metadata.yaml)")
        self.topics, self.exclude = topics, tuple(exclude)
        with Reader(self.bag) as reader:
            connections = _select(reader, topics, self.exclude, self.bag)
            self.message_count = sum(c.msgcount for c in connections)
            # the clock of a loop continues after the whole bag's span, so it never goes back
            self.span_ns = int(reader.end_time) - int(reader.start_time)
        if not self.message_count:
            raise ValueError(f"bag: {bag} has no messages on the selected topics")
        self.rate, self.loop, self.publish_clock = float(rate), bool(loop), bool(publish_clock)
        # keep-last `qos_depth` (1 s of a 30 Hz camera): a reliable writer drops its oldest samples
        # when the history is full, acknowledged or not, so a player catching up after a stall
        # would otherwise overrun a slower reader
        self.publishers_by_topic = {}
        for c in connections:
            if c.topic not in self.publishers_by_topic:
                qos = latched_qos() if c.topic in latched_topics else reliable_qos(qos_depth)
                self.publishers_by_topic[c.topic] = self.create_publisher(message_class(c.msgtype), c.topic, qos)
        self.clock_pub = self.create_publisher(Clock, "/clock", make_qos("reliable", "volatile", 10)) if publish_clock else None
        self.published = 0
        self.loops_done = 0
        self.max_lag_s = 0.0        # how far behind its schedule the player ever published
        self._stop = threading.Event()

    def wait_for_subscribers(self, topics, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.count_subscribers(t) > 0 for t in topics):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()

    def play(self, progress: bool = False) -> int:
        """Publish the whole bag (loop: until stopped). Returns the number of messages sent."""
        while not self._stop.is_set():
            bar = tqdm(total=self.message_count, desc="replay", unit="msg", disable=not progress)
            first = start = None
            with Reader(self.bag) as reader:
                for connection, log_time, raw in reader.messages(connections=_select(reader, self.topics,
                                                                                     self.exclude, self.bag)):
                    if first is None:
                        first, start = log_time, time.monotonic()
                    due = start + (log_time - first) / 1e9 / self.rate
                    while not self._stop.is_set():
                        delay = due - time.monotonic()
                        if delay <= 0:
                            self.max_lag_s = max(self.max_lag_s, -delay)
                            break
                        self._stop.wait(min(delay, 0.05))
                    if self._stop.is_set():
                        break
                    if self.clock_pub is not None:
                        # loops continue the clock forward so use_sim_time nodes never see time go back
                        self.clock_pub.publish(Clock(clock=convert.ns_to_stamp(
                            log_time + self.loops_done * (self.span_ns + 1))))
                    # the stored CDR as is: rclpy publishes serialized bytes without a decode
                    self.publishers_by_topic[connection.topic].publish(
                        raw if isinstance(raw, bytes) else bytes(raw))
                    self.published += 1
                    bar.update(1)
            bar.close()
            self.loops_done += 1
            self.get_logger().info(f"pass {self.loops_done}: at most {self.max_lag_s * 1e3:.0f} ms behind the "
                                   "bag's schedule")
            if not self.loop:
                break
        return self.published


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bag_player", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", help="rosbag2 directory (mcap or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", action="store_true", help="start over at the end until Ctrl-C")
    parser.add_argument("--topics", nargs="*", default=None, help="only these topics")
    parser.add_argument("--exclude", nargs="*", default=[], help="never these topics")
    parser.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    parser.add_argument("--wait-for", nargs="*", default=[], metavar="TOPIC",
                        help="wait (up to --wait-timeout s) until these topics have subscribers")
    parser.add_argument("--wait-timeout", type=float, default=10.0)
    parser.add_argument("--start-delay", type=float, default=0.5, help="seconds for discovery before the first message")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last message")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = build_parser().parse_args(argv[:len(argv) - len(ros_args)])
    rclpy.init(args=["bag_player", *ros_args])
    player = None
    executor = None
    spinner = None
    try:
        try:
            player = BagPlayer(args.bag, rate=args.rate, loop=args.loop, topics=args.topics,
                               publish_clock=not args.no_clock, exclude=args.exclude)
        except ValueError as exc:
            print(f"bag_player: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(player)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        if args.wait_for and not player.wait_for_subscribers(args.wait_for, args.wait_timeout):
            player.get_logger().warning(f"no subscribers on {args.wait_for} after {args.wait_timeout} s; playing anyway")
        time.sleep(max(0.0, args.start_delay))
        sent = player.play(progress=sys.stderr.isatty())
        player.get_logger().info(f"published {sent} messages from {args.bag}")
        time.sleep(max(0.0, args.linger))
    except (KeyboardInterrupt, ExternalShutdownException):
        if player is not None:
            player.stop()
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)   # stop spinning before the node goes away
            spinner.join(timeout=2.0)
        if player is not None:
            player.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
