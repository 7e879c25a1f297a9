"""mu0_ros"""
