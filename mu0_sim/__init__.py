"""mu0_sim"""
