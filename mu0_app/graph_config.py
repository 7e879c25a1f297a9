"""The graph config: one YAML file that says which node processes to start and with what parameters.

The YAML is a standard ROS 2 parameters file (the launch files in launch/ pass the very same file
to their nodes), plus one entry the nodes ignore:

    mu0_graph:
      ros__parameters:
        nodes: [rgbd_sync, mu0_node, action_expert]   # which processes to start
        use_sim_time: false

`load_graph_config` reads it and applies `node.param=value` overrides; `resolve_config` turns a
short name (`replay`) into config/mu0_replay.yaml. Used by the launcher, the offline replay and
the demo; imports nothing of ours.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mu0_core.resources import package_root, resolve

REPO = package_root()                 # the source tree, or share/mu0 when installed
CONFIG_DIR = REPO / "config"
GRAPH_KEY = "mu0_graph"
# parameters that name a resource file: made absolute (working directory, else the package's
# source tree / share directory) so every node finds them from any working directory
RESOURCE_PARAMS = {"mu0_node": ("model", "robot_config"), "action_expert": ("robot_config",)}
NODE_MODULES = {
    "rgbd_sync": "mu0_perception.nodes.rgbd_sync",
    "realsense_camera": "mu0_perception.nodes.realsense_camera",
    "mu0_node": "mu0_policy.nodes.mu0_node",
    "action_expert": "mu0_policy.nodes.action_expert_node",
    "sim_arm": "mu0_sim.nodes.sim_node",
    "bag_player": "mu0_ros.bag_player",
}


class GraphConfigError(ValueError):
    """A graph YAML that cannot be used; the message names the file and the field."""


@dataclass
class GraphConfig:
    path: Path
    params: dict                       # the whole parameters file (node -> {ros__parameters: ...})
    nodes: list = field(default_factory=list)

    def node_params(self, node: str) -> dict:
        return self.params.get(node, {}).get("ros__parameters", {})


def _parse_value(text: str):
    return yaml.safe_load(text) if text != "" else ""


def load_graph_config(path, overrides=()) -> GraphConfig:
    """Read a graph YAML and apply `node.param=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise GraphConfigError(f"{path}: graph config not found")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GraphConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(params, dict):
        raise GraphConfigError(f"{path}: top level must be a mapping of node names")
    for node, entry in params.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("ros__parameters", {}), dict) \
                or set(entry) - {"ros__parameters"}:
            raise GraphConfigError(f"{path}: field '{node}': expected {{ros__parameters: {{...}}}}")
    params = copy.deepcopy(params)
    for item in overrides or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise GraphConfigError(f"override {item!r}: expected node.param=value")
        key, value = item.split("=", 1)
        node, name = key.split(".", 1)
        params.setdefault(node, {}).setdefault("ros__parameters", {})[name] = _parse_value(value)
    graph = params.get(GRAPH_KEY, {}).get("ros__parameters", {})
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise GraphConfigError(f"{path}: field '{GRAPH_KEY}.ros__parameters.nodes': expected a non-empty list")
    unknown = [n for n in nodes if n not in NODE_MODULES]
    if unknown:
        raise GraphConfigError(f"{path}: field '{GRAPH_KEY}.ros__parameters.nodes': unknown node(s) {unknown}; "
                               f"known: {sorted(NODE_MODULES)}")
    if graph.get("use_sim_time"):
        for node in nodes:
            params.setdefault(node, {}).setdefault("ros__parameters", {})["use_sim_time"] = True
    resolve_resource_params(params)
    return GraphConfig(path, params, list(nodes))


def resolve_resource_params(params: dict) -> dict:
    """In place: the RESOURCE_PARAMS values that exist (cwd or package root) become absolute paths;
    `baseline:<name>` models and paths that exist nowhere stay as written (the node reports them)."""
    for node, names in RESOURCE_PARAMS.items():
        node_params = params.get(node, {}).get("ros__parameters", {})
        for name in names:
            value = node_params.get(name)
            if isinstance(value, str) and value and ":" not in value:
                found = resolve(value)
                if found.exists():
                    node_params[name] = str(found.resolve())
    return params


def write_params_file(config: GraphConfig, directory=None) -> Path:
    """The merged parameters of `config` (overrides, use_sim_time, resolved paths) as a ROS 2
    parameters file without the `mu0_graph` entry: what every node of the graph is given, by
    `mu0 run` and by the launch files alike."""
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="mu0_params_", delete=False, dir=directory)
    with handle:
        yaml.safe_dump({k: v for k, v in config.params.items() if k != GRAPH_KEY}, handle)
    return Path(handle.name)


def resolve_config(name_or_path: str) -> Path:
    """A path, or a short name from config/ (`replay` -> config/mu0_replay.yaml)."""
    p = resolve(name_or_path)
    if p.is_file():
        return p
    candidate = CONFIG_DIR / f"mu0_{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise GraphConfigError(f"{name_or_path}: no such file (nor {candidate})")
