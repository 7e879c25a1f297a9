"""ROS 2 nodes of mu0_policy (thin shells around the pure modules of the package)."""
