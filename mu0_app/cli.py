"""`mu0`: one command for everything the project runs.

    mu0 demo                      the main job: sim bag -> sync -> μ_0 -> expert, output bag + MP4
    mu0 sim | run CONFIG          start the node graph (no `ros2 launch` needed)
    mu0 replay BAG [--offline OUT]
    mu0 record | extract | train | eval | export   offline tools
    mu0 train-expert | eval-policy                 learned action experts: train, closed-loop success

Each subcommand lives in its own module with `main(argv) -> int`; they are imported only when
used, so `mu0 --help` stays fast and a tool's heavy dependencies load only for that tool.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    # name: (module, summary)
    "demo": ("mu0_app.demo", "replay a recorded sim episode through the full graph with the bundled model"),
    "sim": ("mu0_app.launcher", "start the simulated arm + sync + μ_0 + action expert as processes"),
    "run": ("mu0_app.launcher", "start the node graph described by a YAML config"),
    "replay": ("mu0_app.launcher", "replay a bag live (with /clock) or offline into an output bag"),
    "record": ("mu0_sim.record", "record scripted sim demonstrations to rosbag2 (mcap)"),
    "extract": ("mu0_perception.trace_extract.cli", "TraceExtract: bags -> trace-supervision dataset"),
    "view-dataset": ("mu0_perception.trace_extract.viewer", "PNG/MP4 of dataset traces over frames"),
    "train": ("mu0_policy.training.train", "train μ_0 on a TraceExtract dataset"),
    "eval": ("mu0_policy.training.evaluate", "metrics table of μ_0 vs baselines, with a plot (--protocol ours|paper)"),
    "export": ("mu0_policy.training.export", "export a checkpoint to ONNX"),
    "train-expert": ("mu0_policy.training.train_expert", "train the learned action expert from demo bags (cached μ_0 traces)"),
    "eval-policy": ("mu0_app.eval_policy", "closed-loop success of an expert + μ_0 in the sim, over tasks x seeds"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [__doc__.strip().splitlines()[0], "", "usage: mu0 <command> [args]   (mu0 <command> --help)", ""]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mu0: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    # launcher hosts several commands (main_run, main_sim, main_replay); tools have a single main
    entry = getattr(module, f"main_{name.replace('-', '_')}", None) or module.main
    try:
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
