"""One success table (markdown + bar chart) from `scripts/eval_experts.sh` results.

    python -m mu0_app.eval_policy_table out/eval_experts     -> out/eval_experts/success_table.{md,png}
    python -m mu0_app.eval_policy_table --merge PART_DIR... OUT_DIR   (one row evaluated in parallel parts)

Reads <dir>/<embodiment>/<row>/success.json; rows are μ_0 + learned expert, the no-trace ablation,
the ground-truth-trace expert, the geometric trace_follower on μ_0 traces, the scripted expert.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("mu0base_expert", "μ_0 traces (mu0_base, default) + learned expert"),
        ("mu0_expert", "μ_0 traces (mu0_small) + learned expert"), ("no_traces", "learned expert, no traces"),
        ("gt_expert", "ground-truth traces + learned expert"), ("trace_follower", "μ_0 traces + trace_follower"),
        ("scripted", "scripted expert (ceiling)")]


# the order of mu0_small's 8 tasks (scripts/expert_demos.sh): a merged part lists its tasks sorted
TASK_ORDER = ["reach", "push", "pick-place", "drawer-open", "drawer-close", "button-press", "door-open", "window-open"]


def task_order(rows: dict) -> list:
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r["per_task"]))
    rank = {t: i for i, t in enumerate(TASK_ORDER)}
    return sorted(tasks, key=lambda t: (rank.get(short(t), len(rank)), tasks.index(t)))


def short(task: str) -> str:
    return task.removesuffix("-v3")


def load(root: Path) -> dict:
    out = {}
    for emb_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for key, _ in ROWS:
            f = emb_dir / key / "success.json"
            if f.is_file():
                out.setdefault(emb_dir.name, {})[key] = json.loads(f.read_text())
    return out


def markdown(results: dict) -> str:
    lines = []
    for emb, rows in results.items():
        tasks = task_order(rows)
        lines += [f"### {emb}", "", "| row | " + " | ".join(short(t) for t in tasks) + " | mean |",
                  "|---|" + "---|" * (len(tasks) + 1)]
        for key, label in ROWS:
            if key not in rows:
                continue
            pt = rows[key]["per_task"]
            cells = []
            for t in tasks:
                v = pt.get(t)
                cells.append("—" if v is None else
                             f"{v['successes']}/{v['episodes']} [{v['ci95'][0]:.0%}, {v['ci95'][1]:.0%}]")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | **{rows[key]['mean_success']:.1%}** |")
        lines.append("")
    lines.append("Cells: successes/episodes [Wilson 95 % interval]; mean = mean of the per-task rates.")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3.6 * len(results)), squeeze=False)
    for ax, (emb, rows) in zip(axes[:, 0], results.items()):
        tasks = task_order(rows)
        keys = [k for k, _ in ROWS if k in rows]
        w = 0.8 / max(1, len(keys))
        for i, k in enumerate(keys):
            pt = rows[k]["per_task"]
            rate = np.array([pt[t]["rate"] if t in pt else np.nan for t in tasks])
            lo = np.array([pt[t]["ci95"][0] if t in pt else np.nan for t in tasks])
            hi = np.array([pt[t]["ci95"][1] if t in pt else np.nan for t in tasks])
            x = np.arange(len(tasks)) + (i - (len(keys) - 1) / 2) * w
            ax.bar(x, rate, w, yerr=[rate - lo, hi - rate], capsize=2, label=dict(ROWS)[k])
        ax.set_xticks(np.arange(len(tasks)), [short(t) for t in tasks])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success")
        ax.set_title(f"closed-loop success, {emb} (Wilson 95 % intervals)")
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge(parts: list, out: Path) -> dict:
    """One success.json/.md from evaluations of the same row over disjoint seed sets (run in parallel)."""
    from mu0_app.eval_policy import EpisodeOutcome, EvalReport

    docs = [json.loads((Path(p) / "success.json").read_text()) for p in parts]
    report = EvalReport(docs[0]["robot"], docs[0]["model"], docs[0]["expert"])
    for d in docs:
        report.outcomes += [EpisodeOutcome(**e) for e in d["episodes"]]
    report.outcomes.sort(key=lambda o: (o.task, o.seed))
    out.mkdir(parents=True, exist_ok=True)
    (out / "success.json").write_text(json.dumps(report.to_json(), indent=1))
    (out / "success.md").write_text(report.markdown())
    return report.to_json()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--merge":      # --merge PART PART ... OUT
        merge(argv[1:-1], Path(argv[-1]))
        print((Path(argv[-1]) / "success.md").read_text())
        return 0
    root = Path(argv[0] if argv else "out/eval_experts")
    results = load(root)
    if not results:
        print(f"error: no success.json under {root}", file=sys.stderr)
        return 2
    md = markdown(results)
    (root / "success_table.md").write_text(md)
    plot(results, root / "success_table.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
