"""Action experts: robot configs, the registry and the experts registered in it.

Importing this package registers the built-in experts (`trace_follower`, `trace_policy`). Learned experts add a
module with `@register_expert("name")` and an import below.
"""
from mu0_policy.experts.base import (ActionChunk, ActionExpert, ExpertObservation, available_experts,
                                     make_expert, register_expert)
from mu0_policy.experts.robot_config import RobotConfig, RobotConfigError, load_robot_config
from mu0_policy.experts import trace_follower  # noqa: F401  (registers "trace_follower")
from mu0_policy.experts import trace_policy  # noqa: F401  (registers "trace_policy", the learned expert)

__all__ = ["ActionChunk", "ActionExpert", "ExpertObservation", "RobotConfig", "RobotConfigError",
           "available_experts", "load_robot_config", "make_expert", "register_expert"]
