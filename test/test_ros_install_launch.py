"""The ROS install path as the README gives it, with the real tools: colcon (colcon-core +
colcon-ros), the jazzy `launch` / `launch_ros` / `ros2launch` from ../shared/ros2.

A workspace holding the repository (src/mu0-ros plus the README's `src/mu0_msgs` link), a plain
`colcon build` (no --symlink-install), then `ros2launch.api.launch_a_launch_file` - what
`ros2 launch mu0 sim.launch.py` calls - run from a directory outside the source tree; an rclpy probe
sees /mu0/traces and the expert's joint commands; SIGINT to the process group (Ctrl-C) stops every
node with exit code 0 inside launch's 5 s SIGINT grace, without a traceback, and `ros2 launch`
itself then ends. `arm.launch.py` without a camera reports the missing camera and stops the same
way; its Ctrl-C usually lands while mu0_node is still configuring (a change_state request pending), the
sim one right after the graph runs.

Skipped when ../shared/ros2 is absent (a user's machine with ROS installed the normal way runs
the README steps directly).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from ros_install_env import REPO, extras_prefix, in_ros_env, requires_shared_ros2

pytestmark = requires_shared_ros2
NODES = ("sim_arm", "rgbd_sync", "mu0_node", "action_expert")
# launch's own escalation ends by 10 s after Ctrl-C (SIGINT, SIGTERM after 5 s, SIGKILL after 5 more):
# a launch still running well past that is waiting on something of its own (a request, a timer)
LAUNCH_EXIT_S = 30.0


def source_files() -> list[str]:
    """The files a clone of the working tree holds (tracked + untracked, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return [f for f in out if (REPO / f).is_file() and not f.startswith(("data/", "out/"))]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The README's workspace, built with a plain `colcon build`."""
    prefix = extras_prefix()
    ws = tmp_path_factory.mktemp("mu0_ws")
    src = ws / "src" / "mu0-ros"
    for rel in source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    (ws / "src" / "mu0_msgs").symlink_to("mu0-ros/mu0_msgs")          # README: ln -s mu0-ros/mu0_msgs src/
    listed = in_ros_env(prefix, f"cd {ws} && python -m colcon list", timeout=120)
    assert listed.returncode == 0, listed.stderr
    names = sorted(line.split()[0] for line in listed.stdout.splitlines() if line.strip())
    assert names == ["mu0", "mu0_msgs"], listed.stdout
    built = in_ros_env(prefix, f"cd {ws} && nice -n 5 python -m colcon build --event-handlers console_cohesion-",
                       timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    share = ws / "install" / "mu0" / "share" / "mu0"
    for rel in ("launch/sim.launch.py", "config/mu0_sim.yaml", "config/robots/sim_sawyer_joint.yaml",
                "config/robots/sim_sawyer_joint_mu0base.yaml", "checkpoints/mu0_base/model.onnx",
                "checkpoints/expert_sawyer_joint_mu0base/model.onnx",
                "config/sim/sawyer_joint.yaml", "config/robots/ur5e.urdf", "config/rviz/mu0.rviz",
                "checkpoints/mu0_small/config.json", "package.xml"):
        assert (share / rel).is_file(), rel
    assert not (share / "launch" / "__pycache__").exists()
    return prefix, ws


LAUNCH = textwrap.dedent("""
    import sys
    from ros2launch.api import get_share_file_path_from_package, launch_a_launch_file
    path = get_share_file_path_from_package(package_name="mu0", file_name=sys.argv[1])
    sys.exit(launch_a_launch_file(launch_file_path=path, launch_file_arguments=sys.argv[2:], noninteractive=True))
""")

PROBE = textwrap.dedent("""
    import json, sys, time
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from mu0_msgs.msg import TraceArray
    from trajectory_msgs.msg import JointTrajectory
    rclpy.init()
    node = rclpy.create_node("mu0_install_probe")
    seen = {"traces": 0, "commands": 0, "frame_id": ""}
    def on_traces(msg):
        seen["traces"] += 1; seen["frame_id"] = msg.header.frame_id
    def on_command(msg):
        seen["commands"] += 1
    node.create_subscription(TraceArray, "/mu0/traces", on_traces, 10)
    node.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", on_command, 10)
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline and not (seen["traces"] >= 3 and seen["commands"] >= 3):
        rclpy.spin_once(node, timeout_sec=0.2)
    print(json.dumps(seen), flush=True)
    node.destroy_node(); rclpy.try_shutdown()
""")


class Launch:
    """`launch_it.py LAUNCH_FILE ARGS` in its own session (SIGINT to the group = Ctrl-C in a
    terminal), its output collected by a thread."""

    def __init__(self, prefix: Path, ws: Path, cwd: Path, launch_file: str, *args: str):
        (cwd / "launch_it.py").write_text(LAUNCH)
        cmd = f"source {prefix}/env.sh && source {ws}/install/setup.bash && exec python launch_it.py " \
              f"{launch_file} " + " ".join(args)
        self.proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.output):
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        return bool(re.search(pattern, self.output))

    def interrupt(self, timeout: float = LAUNCH_EXIT_S) -> tuple[int, str]:
        """Ctrl-C: SIGINT to the whole process group (launch and every node get it at once)."""
        start = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reader.join(5)
            pytest.fail("the launch did not end within %.0f s of SIGINT:\n%s" % (timeout, self.output[-4000:]))
        self.reader.join(5)
        print(f"SIGINT -> launch exit: {time.monotonic() - start:.1f} s")     # shown with -s; no assertion on it
        return self.proc.returncode, self.output


def assert_clean_sigint(code: int, out: str, nodes) -> None:
    """Every node exited 0 inside launch's 5 s SIGINT grace, nothing printed a traceback, launch
    reported no error of its own and exited 0."""
    tail = out[-6000:]
    assert "failed to terminate" not in out and "SIGTERM" not in out, tail   # no node needed escalation
    for node in nodes:
        assert re.search(rf"\[{node}-\d+\]: process has finished cleanly", out), (node, tail)
        assert not re.search(rf"\[{node}-\d+\]: process has died", out), (node, tail)
    assert "Traceback" not in out, tail
    assert "Caught exception in launch" not in out, tail
    assert code == 0, tail


def test_colcon_finds_and_builds_both_packages(workspace):
    prefix, ws = workspace
    assert (ws / "install" / "mu0_msgs" / "share" / "mu0_msgs" / "msg" / "TraceArray.msg").is_file()
    assert (ws / "install" / "mu0" / "lib" / "mu0" / "mu0_node").is_file()


def test_sim_launch_from_install_traces_commands_and_clean_sigint(workspace, tmp_path):
    prefix, ws = workspace
    outside = tmp_path / "elsewhere"                      # not the source tree, no config/ or checkpoints/ here
    outside.mkdir()
    launch = Launch(prefix, ws, outside, "sim.launch.py")
    try:
        (outside / "probe.py").write_text(PROBE)
        probe = in_ros_env(prefix, f"source {ws}/install/setup.bash && cd {outside} && python probe.py 240",
                           timeout=300)
        assert probe.returncode == 0, probe.stderr[-3000:]
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
    finally:
        code, out = launch.interrupt()
    assert seen["traces"] >= 3 and seen["commands"] >= 3, (seen, out[-6000:])
    assert seen["frame_id"] == "base_link"
    # every resource came from the installed share dir
    # (the default μ_0 and its joint expert, whose YAML extends sim_sawyer_joint.yaml in the same share dir)
    assert "share/mu0/checkpoints/mu0_base" in out and "share/mu0/config/robots/sim_sawyer_joint_mu0base.yaml" in out, out
    assert "mu0_node configured; activating" in out                            # lifecycle driven by the launch
    assert_clean_sigint(code, out, NODES)


def test_arm_launch_reports_missing_camera(workspace, tmp_path):
    """No RealSense here: the camera node says so, and the launch says what to do about it; Ctrl-C
    while mu0_node is still configuring stops everything cleanly."""
    prefix, ws = workspace
    launch = Launch(prefix, ws, tmp_path, "arm.launch.py", "robot:=ur5e", "set:=mu0_node.device=cpu")
    try:
        reported = launch.wait_for(r"mu0: no camera", timeout=120)
    finally:
        code, out = launch.interrupt()
    assert reported, out[-4000:]
    assert re.search(r"realsense_camera.*(No device connected|cannot open the camera|pyrealsense2)", out), out[-4000:]
    assert "/scaled_joint_trajectory_controller/joint_trajectory" in out and "dry_run=True" in out
    # the camera node exited on its own (no device) before the Ctrl-C; the rest stop cleanly
    assert_clean_sigint(code, out, ("rgbd_sync", "mu0_node", "action_expert"))


DESCRIBE = textwrap.dedent("""
    # what replay.launch.py would start, without starting it (no `ros2 bag` CLI here)
    import json, sys, yaml
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction
    from ros2launch.api import get_share_file_path_from_package
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    path = get_share_file_path_from_package(package_name="mu0", file_name=sys.argv[1])
    description = get_launch_description_from_python_launch_file(path)
    context = LaunchContext()
    for item in sys.argv[2:]:
        key, value = item.split(":=", 1)
        context.launch_configurations[key] = value
    actions = []
    for entity in description.entities:
        if isinstance(entity, DeclareLaunchArgument):
            entity.execute(context)
        elif isinstance(entity, OpaqueFunction):
            actions += entity.execute(context) or []
    params_file = next(a.msg[0].text.rsplit(" ", 1)[-1] for a in actions if isinstance(a, LogInfo)
                       and "parameters" in a.msg[0].text)
    play = next((a for a in actions if type(a) is ExecuteProcess), None)
    print(json.dumps({"params": yaml.safe_load(open(params_file)),
                      "play": [c[0].text if hasattr(c[0], "text") else str(c[0]) for c in play.cmd] if play else [],
                      "nodes": sorted(type(a).__name__ for a in actions),
                      "executables": sorted(getattr(a, "node_executable", "") for a in actions
                                            if hasattr(a, "node_executable"))}))
""")


def test_replay_launch_honours_the_graph_yaml_and_the_bag(workspace, tmp_path):
    prefix, ws = workspace
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": {"version": 8,
        "topics_with_message_count": [{"topic_metadata": {"name": t}} for t in
                                      ("/camera/camera/color/image_raw", "/mu0/sim/ee_delta")]}}))
    (bag / "episode.json").write_text(json.dumps({"T_base_cam": {"translation": [1.0, 2.0, 3.0],
                                                                 "quat_xyzw": [0.0, 0.0, 0.0, 1.0]}}))
    (tmp_path / "describe.py").write_text(DESCRIBE)
    out = {}
    for distro in ("jazzy", "humble"):
        run = in_ros_env(prefix, f"source {ws}/install/setup.bash && cd {tmp_path} && ROS_DISTRO={distro} "
                                 f"python describe.py replay.launch.py bag:={bag} rate:=0.5", timeout=120)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        out[distro] = json.loads(run.stdout.strip().splitlines()[-1])
    params = out["jazzy"]["params"]
    for node in ("rgbd_sync", "mu0_node", "action_expert"):
        assert params[node]["ros__parameters"]["use_sim_time"] is True, node       # mu0_replay.yaml says so
    mu0 = params["mu0_node"]["ros__parameters"]
    assert mu0["camera_to_base"] == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]            # the sim bag's extrinsic
    assert mu0["autostart"] is False and mu0["model"].endswith("share/mu0/checkpoints/mu0_base")
    assert params["action_expert"]["ros__parameters"]["robot_config"].endswith(
        "share/mu0/config/robots/sim_sawyer_joint_mu0base.yaml")
    assert "LifecycleNode" in out["jazzy"]["nodes"]
    jazzy, humble = out["jazzy"]["play"], out["humble"]["play"]
    assert jazzy[:5] == ["ros2", "bag", "play", str(bag), "--clock"] and "--exclude-topics" in jazzy
    assert "--exclude-topics" not in humble and humble[humble.index("--topics") + 1:] == ["/camera/camera/color/image_raw"]


def test_arm_launch_robot_description_and_realsense_ros(workspace, tmp_path):
    prefix, ws = workspace
    (tmp_path / "describe.py").write_text(DESCRIBE)
    run = in_ros_env(prefix, f"source {ws}/install/setup.bash && cd {tmp_path} && python describe.py arm.launch.py "
                             "robot:=ur5e robot_description:=true use_realsense_ros:=true use_sim_time:=false",
                     timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["executables"] == ["action_expert", "mu0_node", "realsense2_camera_node", "rgbd_sync",
                                  "robot_state_publisher"]
    assert out["params"]["action_expert"]["ros__parameters"]["robot_config"].endswith("share/mu0/config/robots/ur5e.yaml")
    assert out["params"]["rgbd_sync"]["ros__parameters"]["use_sim_time"] is False
