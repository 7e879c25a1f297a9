"""Start the mu0 node graph as processes from one YAML file — `ros2 launch` for machines without it.

The YAML is a standard ROS 2 parameters file (the launch files in launch/ pass the very same file
to their nodes), plus one entry the nodes ignore:

    mu0_graph:
      ros__parameters:
        nodes: [rgbd_sync, mu0_node, action_expert]   # which processes to start
        use_sim_time: false
    rgbd_sync:
      ros__parameters: {slop: 0.02, ...}
    mu0_node:
      ros__parameters: {model: checkpoints/mu0_small, ...}

Every child gets the merged parameters file (overrides `node.param=value` applied). Ctrl-C
(SIGINT) or SIGTERM stops all children (SIGINT, then SIGTERM, then SIGKILL after grace periods).
Exit code: 0 when stopped by the user or when the `driver` (e.g. the bag player) finished
cleanly; otherwise the exit code of the first child that died.

CLI (wired by mu0_app.cli): `mu0 run CONFIG`, `mu0 sim`, `mu0 replay BAG [--offline OUT]` (`mu0 demo`
is in mu0_app.demo). The graph YAML itself is read by mu0_app.graph_config.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mu0_app.graph_config import (GRAPH_KEY, NODE_MODULES, REPO, GraphConfig, GraphConfigError,  # noqa: F401
                                  load_graph_config, resolve_config, write_params_file)


class ProcessGraph:
    """The children of one graph; `wait()` supervises them until done, a failure, or a signal."""

    def __init__(self, config: GraphConfig, extra: dict | None = None, driver: str | None = None,
                 log_dir: Path | None = None, env: dict | None = None):
        self.config = config
        self.extra = extra or {}          # node -> extra CLI args before --ros-args (bag_player)
        self.driver = driver
        self.children: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir
        self.env = env
        self._stop_requested = False
        self._params_file = None

    def start(self) -> None:
        self._params_file = str(write_params_file(self.config))
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for node in self.config.nodes + ([self.driver] if self.driver and self.driver not in self.config.nodes else []):
            cmd = [sys.executable, "-m", NODE_MODULES[node], *self.extra.get(node, []),
                   "--ros-args", "--params-file", self._params_file]
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{node}.log", "w")
            self.children[node] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                                   cwd=str(REPO))

    def request_stop(self, *_):
        self._stop_requested = True

    def stop(self, grace_s: float = 5.0) -> dict:
        """SIGINT every live child, then SIGTERM, then SIGKILL; returns node -> exit code."""
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            live = [p for p in self.children.values() if p.poll() is None]
            if not live:
                break
            for p in live:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p.poll() is None for p in live):
                time.sleep(0.05)
        if self._params_file:
            Path(self._params_file).unlink(missing_ok=True)
        return {n: p.poll() for n, p in self.children.items()}

    def wait(self, duration_s: float | None = None) -> int:
        start = time.monotonic()
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            while not self._stop_requested:
                if duration_s is not None and time.monotonic() - start > duration_s:
                    break
                finished = {n: p.poll() for n, p in self.children.items() if p.poll() is not None}
                failed = {n: c for n, c in finished.items() if c != 0}
                if failed:
                    node, code = next(iter(failed.items()))
                    print(f"mu0: {node} exited with code {code}; stopping the graph", file=sys.stderr)
                    break
                if self.driver and self.driver in finished:
                    break
                if finished and not self.driver:
                    node = next(iter(finished))
                    print(f"mu0: {node} exited; stopping the graph", file=sys.stderr)
                    break
                time.sleep(0.1)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()
        return code


def run_graph(config_path, overrides=(), duration_s: float | None = None, driver: str | None = None,
              extra: dict | None = None, log_dir=None) -> int:
    """Start the graph of `config_path` and supervise it (see module docstring). Returns the exit code."""
    try:
        config = load_graph_config(resolve_config(str(config_path)), overrides)
    except GraphConfigError as exc:
        print(f"mu0: {exc}", file=sys.stderr)
        return 2
    graph = ProcessGraph(config, extra=extra, driver=driver, log_dir=Path(log_dir) if log_dir else None)
    graph.start()
    return graph.wait(duration_s)


def bag_play_command(bag, rate, exclude=(), distro: str | None = None) -> list[str]:
    """`ros2 bag play BAG --clock --rate R` without the `exclude` topics, for this ROS distro
    (ROS_DISTRO when not given): Jazzy and later have `--exclude-topics`; Humble (and Iron) do not,
    there every other topic of the bag (from its metadata.yaml) goes to `--topics`."""
    import yaml

    distro = (distro if distro is not None else os.environ.get("ROS_DISTRO", "")).lower()
    cmd = ["ros2", "bag", "play", str(bag), "--clock", "--rate", str(rate)]
    exclude = list(exclude or ())
    if not exclude:
        return cmd
    if distro in ("humble", "iron"):
        info = (yaml.safe_load((Path(bag) / "metadata.yaml").read_text()) or {}).get("rosbag2_bagfile_information", {})
        topics = [t["topic_metadata"]["name"] for t in info.get("topics_with_message_count", [])]
        return cmd + ["--topics", *[t for t in topics if t not in set(exclude)]]
    return cmd + ["--exclude-topics", *exclude]


def episode_overrides(bag, graph: GraphConfig) -> list[str]:
    """The sim's camera extrinsic (episode.json T_base_cam) for mu0_node, unless the config sets one."""
    import json

    path = Path(bag) / "episode.json"
    if graph.node_params("mu0_node").get("camera_to_base") or not path.is_file():
        return []
    tf = json.loads(path.read_text()).get("T_base_cam")
    if not tf:
        return []
    values = [float(v) for v in list(tf["translation"]) + list(tf["quat_xyzw"])]
    return [f"mu0_node.camera_to_base={values}"]


def replay_live(bag, config="replay", overrides=(), rate: float = 1.0, loop: bool = False,
                duration_s: float | None = None, log_dir=None, wait_for=("/camera/camera/color/image_raw", "/mu0/rgbd", "/mu0/traces"),
                start_delay_s: float = 1.0) -> int:
    """Play `bag` (with /clock) into the graph of `config`; returns when the bag has been played.

    The player starts once every `wait_for` topic has a subscriber (the nodes are up and
    configured: mu0_node subscribes only after its model is loaded), then `start_delay_s` more for
    DDS to match every other endpoint (e.g. an observer's subscription to /mu0/traces).
    """
    if not (Path(bag) / "metadata.yaml").is_file():
        print(f"mu0: {bag}: not a rosbag2 directory (no metadata.yaml)", file=sys.stderr)
        return 2
    try:
        graph = load_graph_config(resolve_config(str(config)), overrides)
    except GraphConfigError as exc:
        print(f"mu0: {exc}", file=sys.stderr)
        return 2
    exclude = graph.node_params(GRAPH_KEY).get("exclude_topics", [])
    overrides = list(overrides) + episode_overrides(bag, graph)
    args = [str(bag), "--rate", str(rate), "--wait-for", *wait_for, "--wait-timeout", "30", "--start-delay", str(start_delay_s),
            "--linger", "2.0", *(["--exclude", *exclude] if exclude else [])]
    if loop:
        args.append("--loop")
    return run_graph(config, overrides, duration_s=duration_s, driver="bag_player", extra={"bag_player": args},
                     log_dir=log_dir)


# ---------------------------------------------------------------------------------------------- CLI
def _overrides_arg(parser):
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a parameter of the config (repeatable)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--log-dir", default=None, help="write each node's output to LOG_DIR/<node>.log")


def main_run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mu0 run", description="start the node graph of a YAML config")
    parser.add_argument("config", help="graph YAML (or a short name: sim, replay, arm)")
    _overrides_arg(parser)
    args = parser.parse_args(argv)
    return run_graph(args.config, args.overrides, args.duration, log_dir=args.log_dir)


def main_sim(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mu0 sim", description="simulated arm + sync + μ_0 + action expert")
    parser.add_argument("--config", default="sim")
    _overrides_arg(parser)
    args = parser.parse_args(argv)
    return run_graph(args.config, args.overrides, args.duration, log_dir=args.log_dir)


def main_replay(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mu0 replay", description="replay a bag live (with /clock) or offline")
    parser.add_argument("bag")
    parser.add_argument("--offline", metavar="OUT", default=None,
                        help="no DDS: write OUT, a copy of BAG with traces, markers and commands added")
    parser.add_argument("--config", default="replay")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--overlay", default=None, help="(offline) also write an MP4 of the traces over the images")
    _overrides_arg(parser)
    args = parser.parse_args(argv)
    if args.offline:
        from mu0_app.replay import replay_offline

        try:
            summary = replay_offline(args.bag, args.offline, resolve_config(args.config), args.overrides,
                                     overlay_path=args.overlay)
        except ValueError as exc:
            print(f"mu0 replay: {exc}", file=sys.stderr)
            return 2
        print(summary.describe())
        return 0
    return replay_live(args.bag, args.config, args.overrides, args.rate, args.loop, args.duration, args.log_dir)


def main(argv: list[str] | None = None) -> int:
    return main_run(argv)


if __name__ == "__main__":
    sys.exit(main())
