"""The μ_0 world model: backbones, trace expert, flow matching, checkpoints."""
