"""Render fps (RGB + metric depth) and recorded episodes/minute at 320x240 and 640x480.

    python bench/bench_sim.py [--episodes 2] [--frames 60]
"""
import argparse
import tempfile
import time

from mu0_sim.env import SawyerSimEnv
from mu0_sim.record import record_episode_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--task", default="pick-place")
    args = ap.parse_args(argv)
    env = SawyerSimEnv(args.task, seed=0, render=False)
    env.reset(0, render=False)
    t = time.perf_counter()
    n = 0
    while n < 300:
        env.step(env.expert_action(), render=False)
        n += 1
        if env.success:
            env.reset(n, render=False)
    print(f"physics + expert, no rendering: {n / (time.perf_counter() - t):.0f} steps/s")
    for w, h in ((320, 240), (640, 480)):
        env = SawyerSimEnv(args.task, seed=0, width=w, height=h)
        env.renderer.render(env.data)
        t = time.perf_counter()
        for _ in range(args.frames):
            env.renderer.render(env.data)
        fps = args.frames / (time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            frames = 0
            for seed in range(args.episodes):
                r = record_episode_result(args.task, seed, out, width=w, height=h, env=env)
                frames += r.num_steps + 1
            wall = time.perf_counter() - t
        print(f"{w}x{h}: render RGB+depth {fps:.1f} fps | recording {args.episodes / wall * 60:.1f} "
              f"episodes/min ({frames / wall:.1f} frames/s incl. physics, expert, bag write)")
        env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
