"""`mu0 demo`, the main job: a sim episode (recorded now, or a given bag) -> sync -> μ_0 -> expert,
replayed offline (and optionally live through the process graph); writes an output bag + MP4/PNG."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mu0_app.graph_config import resolve_config
from mu0_app.launcher import _overrides_arg, replay_live
from mu0_app.replay import render_overlay_from_bag, replay_offline

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "mu0_small"


def demo(out_dir, bag=None, config="replay", overrides=(), live: bool = False, task: str = "pick-place",
         seed: int = 0, max_steps: int = 120) -> str:
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
    _overrides_arg(parser)
    args = parser.parse_args(argv)
    try:
        result = demo(args.out, bag=args.bag, config=args.config, overrides=args.overrides, live=args.live)
    except ValueError as exc:
        print(f"mu0 demo: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0


main = main_demo

if __name__ == "__main__":
    sys.exit(main())
