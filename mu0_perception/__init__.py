"""mu0_perception"""
