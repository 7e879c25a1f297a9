"""mu0_core: the pure core (camera geometry, frames, traces, B-splines, metrics).

Imports nothing of ours outside mu0_core, and never rclpy.
"""
