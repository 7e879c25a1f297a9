"""ROS 2 nodes of mu0_perception (thin shells around the pure modules of the package)."""
