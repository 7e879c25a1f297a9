"""mu0_policy"""
