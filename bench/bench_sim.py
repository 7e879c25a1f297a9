"""Sim speed: render fps (RGB + metric depth) and recorded episodes/minute at 320x240 and 640x480.

    python bench/bench_sim.py [--runs 3] [--frames 60] [--episodes 2] [--task pick-place]

Each of `--runs` runs renders `--frames` frames and records `--episodes` scripted episodes (bag
written, physics and expert included) per resolution; prints each run's figure and the median over
the runs. Physics + expert without rendering: 300 steps per run, median steps/s. Wall times
depend on the machine's load; note it (uptime) next to the numbers. The "per CPU s" figures
divide by this process's CPU time instead (time.process_time: every thread, never the time spent
waiting for a core), which stays put on a loaded machine.
"""
import argparse
import statistics
import tempfile
import time

from mu0_sim.env import SawyerSimEnv
from mu0_sim.record import record_episode_result


def physics_steps_per_s(task: str, steps: int = 300) -> float:
    env = SawyerSimEnv(task, seed=0, render=False)
    env.reset(0, render=False)
    t = time.perf_counter()
    for n in range(steps):
        env.step(env.expert_action(), render=False)
        if env.success:
            env.reset(n + 1, render=False)
    return steps / (time.perf_counter() - t)


def render_fps(env, frames: int) -> tuple[float, float]:
    """(frames per wall second, frames per CPU second)."""
    env.renderer.render(env.data)          # the first frame pays for the GL context: not counted
    t, c = time.perf_counter(), time.process_time()
    for _ in range(frames):
        env.renderer.render(env.data)
    return frames / (time.perf_counter() - t), frames / (time.process_time() - c)


def episodes_per_min(env, task: str, episodes: int, w: int, h: int) -> tuple[float, float]:
    """(episodes/min, frames/s) of recording `episodes` seeds to bags."""
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        frames = 0
        for seed in range(episodes):
            r = record_episode_result(task, seed, out, width=w, height=h, env=env)
            frames += r.num_steps + 1
        wall = time.perf_counter() - t
    return episodes / wall * 60, frames / wall


def fmt(values, digits=1) -> str:
    return f"{' / '.join(f'{v:.{digits}f}' for v in values)} -> median {statistics.median(values):.{digits}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="repeats; the median is printed")
    ap.add_argument("--frames", type=int, default=60, help="frames rendered per run")
    ap.add_argument("--episodes", type=int, default=2, help="episodes recorded per run")
    ap.add_argument("--task", default="pick-place")
    args = ap.parse_args(argv)
    steps = [physics_steps_per_s(args.task) for _ in range(args.runs)]
    print(f"physics + expert, no rendering, steps/s of {args.runs} runs: {fmt(steps, 0)}")
    for w, h in ((320, 240), (640, 480)):
        env = SawyerSimEnv(args.task, seed=0, width=w, height=h)
        fps, fps_cpu, epm, rec_fps = [], [], [], []
        for _ in range(args.runs):
            f_wall, f_cpu = render_fps(env, args.frames)
            fps.append(f_wall)
            fps_cpu.append(f_cpu)
            e, f = episodes_per_min(env, args.task, args.episodes, w, h)
            epm.append(e)
            rec_fps.append(f)
        env.close()
        print(f"{w}x{h}, {args.runs} runs: render RGB+depth fps {fmt(fps)} (per CPU s: {fmt(fps_cpu)}) | "
              f"recording episodes/min {fmt(epm)} (frames/s incl. physics, expert, bag write: {fmt(rec_fps)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
