"""mu0_app: the application layer: process launcher, graph config, offline replay, demo, the `mu0` CLI."""
