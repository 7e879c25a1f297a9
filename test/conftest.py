"""Test-session set-up shared by all tests.

Each pytest process gets its own ROS domain and stays on loopback, so concurrent test runs on one
machine (and parallel developers) never see each other's DDS traffic.
"""
import os

os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
