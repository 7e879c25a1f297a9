"""`mu0 demo`, the main job: a sim episode (recorded now, or a given bag) -> sync -> μ_0 -> expert,
replayed offline (and optionally live through the process graph); writes an output bag + MP4/PNG;
then the closed loop: the sim arm driven by the bundled learned expert on μ_0's traces finishes a
task (out/demo/closed_loop/*.mp4, success.json)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mu0_app.graph_config import resolve_config
from mu0_app.launcher import _overrides_arg, replay_live
from mu0_app.replay import render_overlay_from_bag, replay_offline

from mu0_core.resources import share_path

DEFAULT_MODEL_DIR = share_path("checkpoints/mu0_base")        # the default μ_0 (source tree, or share/mu0 when installed)
CLOSED_LOOP_ROBOT = share_path("config/robots/sim_sawyer_ee_mu0base.yaml")   # the expert trained on its traces


def closed_loop(out_dir, robot=CLOSED_LOOP_ROBOT, task: str = "pick-place", seed: int = 100,
                max_steps: int = 250) -> str:
    """One closed-loop episode of the sim arm driven by the robot YAML's expert (the bundled learned
    expert) on the bundled μ_0's traces, lockstep (mu0 eval-policy); writes an MP4 with the traces."""
    from mu0_app.eval_policy import evaluate

    report = evaluate(str(robot), [task], [seed], str(DEFAULT_MODEL_DIR), out_dir, max_steps=max_steps, progress=False)
    o = report.outcomes[0]
    video = next(Path(out_dir).glob("*.mp4"), None)
    return (f"closed loop ({Path(robot).name}, {o.task}, seed {seed}): "
            f"{'SUCCESS' if o.success else 'not finished'} in {o.steps} sim steps; video: {video}")


def demo(out_dir, bag=None, config="replay", overrides=(), live: bool = False, task: str = "pick-place",
         seed: int = 0, max_steps: int = 120, closed_loop_task: str | None = "pick-place") -> str:
    """The main job: a sim episode (recorded now, or `bag`) -> sync -> μ_0 -> expert, offline and
    optionally live; writes out_dir/replayed (bag), traces.mp4 and traces.png. Returns a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bag is None:
        from mu0_sim.record import record_episode

        bag = record_episode(task, seed, out_dir / "recorded", embodiment="sawyer_joint", max_steps=max_steps,
                             overwrite=True)
    overrides = list(overrides)
    if not any(o.startswith("mu0_node.model=") for o in overrides) and not (DEFAULT_MODEL_DIR / "config.json").is_file():
        overrides.append("mu0_node.model=baseline:constant_velocity")  # no bundled weights in this checkout
    config_path = resolve_config(config)
    summary = replay_offline(bag, out_dir / "replayed", config_path, overrides, overlay_path=out_dir / "traces.mp4")
    render_overlay_from_bag(out_dir / "replayed", out_dir / "traces.png")
    lines = [summary.describe(), f"overlay: {out_dir / 'traces.mp4'}, {out_dir / 'traces.png'}"]
    if closed_loop_task:
        lines.append(closed_loop(out_dir / "closed_loop", task=closed_loop_task))
    if live:
        code = replay_live(bag, config_path, overrides, rate=0.25, log_dir=out_dir / "logs")
        lines.append(f"live replay exit code {code} (logs in {out_dir / 'logs'})")
    return "\n".join(lines)


def main_demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mu0 demo", description="sim bag -> sync -> μ_0 -> expert: output bag + MP4/PNG")
    parser.add_argument("--out", default="out/demo", help="output directory")
    parser.add_argument("--bag", default=None, help="use this recorded bag instead of recording a sim episode")
    parser.add_argument("--config", default="replay")
    parser.add_argument("--live", action="store_true", help="also replay live over DDS (processes)")
    parser.add_argument("--closed-loop-task", default="pick-place",
                        help="task of the closed-loop episode (bundled learned expert + μ_0); '' to skip")
    _overrides_arg(parser)
    args = parser.parse_args(argv)
    try:
        result = demo(args.out, bag=args.bag, config=args.config, overrides=args.overrides, live=args.live,
                      closed_loop_task=args.closed_loop_task or None)
    except ValueError as exc:
        print(f"mu0 demo: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0


main = main_demo

if __name__ == "__main__":
    sys.exit(main())
