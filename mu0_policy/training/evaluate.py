"""Evaluate trace predictors on a TraceExtract dataset: the paper's metrics table + a plot.

    python -m mu0_policy.training.evaluate --data DATA --checkpoint checkpoints/mu0_small \
        [--raw-checkpoint RAW_CKPT] --out eval_out

Methods: μ_0 (the checkpoint), the no-B-spline raw-waypoint variant (when given), zero motion
and constant velocity from history. Splits: `--splits`, default val,heldout_tasks (see below). All
methods run through the Inference API (`TracePredictor.predict`) on the same requests, so the
evaluation exercises exactly what the node runs. Metrics (mu0_core.metrics.full_results) on
moving points: minADE / minFDE / minDTW / Fréchet, top-1 and top-K, T in {8, 16, 32}, in 2D (uv)
and the paper's 3D (uvz). Every table is also broken down by task (the task recorded for each
sample in index.json; parsed from the episode name when the record is empty). Writes metrics.json
(per split: "tables" and "per_task"), metrics.md (the tables, then one per-task table per split),
metrics.png (all splits + example overlays) and metrics_<split>.png (per task, grouped bars).

Splits, as the docs name them: train = in-distribution (training episodes), val = unseen episodes
(held-out episodes of the training tasks), heldout_tasks = unseen tasks. `--max-samples N` takes
N samples spread evenly over the split's tasks, then its episodes, then each episode's frames
(deterministic), so a capped split still covers every task.

Protocols (`--protocol`):
- `ours` (default): every sample of the split, all its queries with their history and the depth
  image; the tables average the moving queries.
- `paper`: the authors' headline setting (their EVALUATION.md): 3 frames per episode (the first
  sample at or after frame offsets 4, 8, 12 from the episode's first sample), 16 moving queries
  per frame (fewer if the frame has fewer), NO history and NO depth image; best of K = 5. The
  query keypoints' own depth (the trace's anchor, which the authors also take from the dataset)
  is the only depth the model gets: it is written at the query pixels of an otherwise empty
  depth image, so the trace is decoded in metres.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from mu0_core.camera import CameraIntrinsics
from mu0_core.metrics import DEFAULT_HORIZONS
from mu0_core.query_geometry import normalized_to_pixels
from mu0_policy.inference import TracePredictor, TraceRequest

METHOD_ORDER = ("mu0", "mu0_raw_waypoints", "constant_velocity", "zero_motion")
PROTOCOLS = ("ours", "paper")
PAPER_FRAME_OFFSETS = (4, 8, 12)
PAPER_NUM_QUERIES = 16
SPLIT_LABELS = {"train": "in-distribution (training episodes)", "val": "unseen episodes",
                "heldout_tasks": "unseen tasks", "all": "all episodes"}


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def task_from_episode(episode: str) -> str:
    """The task part of an episode name such as ``drawer-close-v3_seed100_corner`` (-> ``drawer-close``):
    everything before a ``_seed<N>`` / ``-seed<N>`` suffix, without a trailing ``-v<N>`` version."""
    name = re.split(r"[_-]seed\d+", str(episode), maxsplit=1)[0]
    name = re.sub(r"-v\d+$", "", name)
    return name or str(episode)


def sample_tasks(dataset) -> list[str]:
    """The task of every sample of the split (split-local order): the task recorded in index.json,
    or, where that is empty, the one its episode name carries."""
    idx = dataset.index
    out = []
    for g in np.asarray(dataset.indices, int):
        t = str(idx.tasks[g]).strip() if getattr(idx, "tasks", None) is not None else ""
        out.append(t or task_from_episode(idx.episodes[g]))
    return out


def _even_quota(sizes: list[int], n: int) -> list[int]:
    """Split ``n`` over groups of the given sizes as evenly as the sizes allow (water filling);
    leftover units that cannot be shared equally go to groups spread evenly over the list."""
    quota = [0] * len(sizes)
    n = min(int(n), int(sum(sizes)))
    while n > 0:
        open_ = [i for i, s in enumerate(sizes) if quota[i] < s]
        share = n // len(open_)
        if share == 0:
            for j in np.linspace(0, len(open_) - 1, n).round().astype(int):
                quota[open_[j]] += 1
            break
        for i in open_:
            add = min(share, sizes[i] - quota[i])
            quota[i] += add
            n -= add
    return quota


def spread_selection(tasks: list[str], episodes: list[str], n: int) -> list[int]:
    """Positions of ``n`` of the given samples spread evenly over tasks, then over each task's
    episodes, then over each episode's samples (the centres of equal stretches); deterministic, in
    input order."""
    if n >= len(tasks):
        return list(range(len(tasks)))
    groups: dict[str, dict[str, list[int]]] = {}
    for pos, (t, e) in enumerate(zip(tasks, episodes)):
        groups.setdefault(t, {}).setdefault(e, []).append(pos)
    chosen = []
    task_eps = list(groups.values())
    for eps, qt in zip(task_eps, _even_quota([sum(map(len, e.values())) for e in task_eps], n)):
        rows = list(eps.values())
        for pos, qe in zip(rows, _even_quota([len(r) for r in rows], qt)):
            if qe:
                # centred in qe equal stretches: one pick lands mid-episode, not on the first frame,
                # which has no history (there constant velocity equals zero motion)
                chosen.extend(pos[j] for j in ((np.arange(qe) + 0.5) * len(pos) / qe).astype(int))
    return sorted(chosen)


def _sample_frames(dataset) -> list[tuple[str, int]]:
    """(episode, frame) of every sample of the split, from index.json when it records frames."""
    idx = dataset.index
    recs = idx.raw.get("samples")
    out = []
    for i in range(len(dataset)):
        g = int(dataset.indices[i])
        if isinstance(recs, list) and isinstance(recs[g], dict) and "frame" in recs[g]:
            out.append((idx.episodes[g], int(recs[g]["frame"])))
        else:
            out.append((idx.episodes[g], int(dataset[i]["frame_index"])))
    return out


def paper_protocol_indices(dataset, offsets=PAPER_FRAME_OFFSETS) -> list[int]:
    """Per episode, the first sample at or after (its first sample's frame + offset) for each
    offset; each sample at most once. Returns split-local indices in episode order."""
    by_ep: dict[str, list[tuple[int, int]]] = {}
    for i, (ep, frame) in enumerate(_sample_frames(dataset)):
        by_ep.setdefault(ep, []).append((frame, i))
    chosen = []
    for ep in by_ep:
        rows = sorted(by_ep[ep])
        first = rows[0][0]
        picked = []
        for off in offsets:
            hit = next((i for f, i in rows if f >= first + off), None)
            if hit is not None and hit not in picked:
                picked.append(hit)
        chosen.extend(picked)
    return chosen


def paper_item(item: dict, rng: np.random.Generator, num_queries: int = PAPER_NUM_QUERIES) -> dict | None:
    """A sample as the paper evaluates it: <= ``num_queries`` random moving queries, no history,
    no depth image except each query's own depth at its pixel. None if no query moves."""
    qm = np.asarray(item["query_mask"], bool)
    cand = np.nonzero(qm & np.asarray(item["moving"], bool))[0]
    if len(cand) == 0:
        return None
    pick = np.sort(rng.permutation(cand)[:num_queries])
    out = dict(item)
    mask = np.zeros_like(qm)
    mask[pick] = True
    out["query_mask"] = mask
    out["history_valid"] = np.zeros_like(np.asarray(item["history_valid"], bool))
    h, w = np.asarray(item["color"]).shape[:2]
    depth = np.full((h, w), np.nan, np.float32)
    uvz = np.asarray(item["query_uvz"], np.float64)[pick]
    u = np.clip(np.rint((uvz[:, 0] + 1) * w / 2 - 0.5).astype(int), 0, w - 1)
    v = np.clip(np.rint((uvz[:, 1] + 1) * h / 2 - 0.5).astype(int), 0, h - 1)
    depth[v, u] = uvz[:, 2]
    out["depth"] = depth
    return out


def sample_to_request(item: dict) -> tuple[TraceRequest, np.ndarray]:
    """A dataset sample -> (TraceRequest with its real queries, indices of those queries)."""
    color = np.asarray(item["color"])
    h, w = color.shape[:2]
    fx, fy, cx, cy = (float(x) for x in item["intrinsics"])
    intr = CameraIntrinsics(w, h, fx, fy, cx, cy)
    keep = np.nonzero(item["query_mask"])[0]
    px = normalized_to_pixels(item["query_uvz"][keep, :2], w, h)
    hist = item["history_uvz"][keep].astype(np.float32).copy()
    hist[~item["history_valid"][keep]] = np.nan
    if not np.asarray(item["history_valid"])[keep].any():
        hist = None                       # no history at all: the request says so
    depth = np.asarray(item["depth"], np.float32)
    return TraceRequest(color, depth, intr, item["caption"], px, hist), keep


def protocol_indices(dataset, protocol: str = "ours", max_samples: int | None = None) -> list[int]:
    """Split-local indices of the samples the protocol evaluates; with ``max_samples``, that many
    of them spread over tasks and episodes (:func:`spread_selection`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    idx = list(range(len(dataset))) if protocol == "ours" else paper_protocol_indices(dataset)
    if max_samples is None or max_samples >= len(idx):
        return idx
    tasks = sample_tasks(dataset)
    episodes = [dataset.index.episodes[int(dataset.indices[i])] for i in idx]
    return [idx[p] for p in spread_selection([tasks[i] for i in idx], episodes, max(0, int(max_samples)))]


def protocol_items(dataset, protocol: str = "ours", max_samples: int | None = None, seed: int = 0):
    """The split's samples as the protocol evaluates them: a list of callables returning items."""
    return _getters(dataset, protocol, protocol_indices(dataset, protocol, max_samples), seed)


def _getters(dataset, protocol: str, idx: list[int], seed: int):
    if protocol == "ours":
        return [lambda i=i: dataset[i] for i in idx]
    return [lambda i=i: paper_item(dataset[i], np.random.default_rng([seed, i])) for i in idx]


def collect(predictors: dict[str, TracePredictor], dataset, num_samples: int, seed: int, batch: int = 8,
            max_samples: int | None = None, progress: bool = True, protocol: str = "ours"):
    """Run every predictor on the split; stack predictions and ground truth per query, with the
    task of each query's sample and the number of evaluated frames per task."""
    idx = protocol_indices(dataset, protocol, max_samples)
    getters = _getters(dataset, protocol, idx, seed)
    all_tasks = sample_tasks(dataset)
    n = len(getters)
    preds = {name: [] for name in predictors}
    gts, valids, moving, examples, tasks = [], [], [], [], []
    frames_per_task: dict[str, int] = {}
    n_frames = 0
    it = range(0, n, batch)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"eval {dataset.split} ({protocol})", total=(n + batch - 1) // batch)
    for start in it:
        chunk = zip(getters[start:start + batch], idx[start:start + batch])
        pairs = [(x, all_tasks[i]) for x, i in ((g(), i) for g, i in chunk) if x is not None]
        if not pairs:
            continue
        items = [x for x, _ in pairs]
        n_frames += len(items)
        for _, t in pairs:
            frames_per_task[t] = frames_per_task.get(t, 0) + 1
        reqs, keeps = zip(*(sample_to_request(x) for x in items))
        for name, pred in predictors.items():
            res = pred.predict(list(reqs), num_samples=num_samples, seed=seed + start)
            preds[name].extend(r.samples_uvz for r in res)
            if not examples or examples[0][0] != "gt":
                examples.append((name, res[0]))
        for (x, t), keep in zip(pairs, keeps):
            gts.append(x["future_uvz"][keep])
            valids.append(x["future_valid"][keep])
            moving.append(x["moving"][keep])
            tasks.extend([t] * len(keep))
        if not examples or examples[0][0] != "gt":
            examples.insert(0, ("gt", items[0]))
    if not gts:
        raise ValueError(f"split {dataset.split}: no sample to evaluate under protocol {protocol!r}")
    pred = {k: np.concatenate(v, axis=1) for k, v in preds.items()}
    return (pred, np.concatenate(gts), np.concatenate(valids), np.concatenate(moving), examples, n_frames,
            np.asarray(tasks, dtype=object), frames_per_task)


def _results(pred, gt, valid, topk, moving, horizons=DEFAULT_HORIZONS) -> dict:
    """mu0_core.metrics.full_results, with NaN (and 0 traces) at a horizon where no moving trace
    has a valid step: a task whose sampled points barely move has none, and full_results needs one."""
    from mu0_core.metrics import METRIC_NAMES, full_results

    ok = [T for T in horizons if (moving & valid[:, 1:T + 1].any(-1)).any()]
    if len(ok) == len(horizons):
        return full_results(pred, gt, valid, horizons=horizons, topk=topk, moving=moving)
    got = full_results(pred, gt, valid, horizons=ok, topk=topk, moving=moving) if ok else {}
    out = {}
    for space in ("uv", "uvz"):
        t = got.get(space, {})
        out[space] = {f"top{k}/{m}@{T}": t.get(f"top{k}/{m}@{T}", float("nan"))
                      for T in horizons for m in METRIC_NAMES for k in topk}
    out["num_moving"] = int(moving.sum())
    out["num_traces"] = {int(T): got.get("num_traces", {}).get(int(T), 0) for T in horizons}
    return out


def evaluate_split(predictors, dataset, num_samples, seed, batch=8, max_samples=None, progress=True,
                   protocol: str = "ours") -> dict:
    pred, gt, valid, moving, examples, n_frames, tasks, frames_per_task = collect(
        predictors, dataset, num_samples, seed, batch, max_samples, progress, protocol)
    gt = np.where(valid[..., None], gt, 0.0)
    topk = (1,) if num_samples == 1 else (1, num_samples)
    out = {name: _results(p, gt, valid, topk, moving) for name, p in pred.items()}
    per_task = {}
    for task in sorted(frames_per_task):
        sel = tasks == task
        per_task[task] = {
            "tables": {name: _results(p[:, sel], gt[sel], valid[sel], topk, moving[sel])
                       for name, p in pred.items()},
            "num_frames": int(frames_per_task[task]), "num_queries": int(sel.sum()),
            "num_moving": int(moving[sel].sum())}
    return {"tables": out, "per_task": per_task, "num_queries": int(len(gt)), "num_moving": int(moving.sum()),
            "examples": examples, "protocol": protocol, "num_frames": int(n_frames)}


def markdown_table(tables: dict, space="uvz", k=5, horizons=DEFAULT_HORIZONS) -> str:
    cols = [f"top{k}/{m}@{T}" for m in ("ADE", "FDE", "DTW") for T in horizons]
    lines = ["| method | " + " | ".join(c.replace(f"top{k}/", "") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name in METHOD_ORDER:
        if name in tables:
            t = tables[name][space]
            lines.append(f"| {name} | " + " | ".join(f"{t[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.4f}"


def per_task_table(per_task: dict, k: int = 5, metric: str = "ADE", T: int = 32, space: str = "uvz") -> str:
    """One row per task: frames, moving queries, each method's top-k min{metric}@T in ``space`` and
    μ0 / constant velocity; then the mean over tasks (the ratio there is of the two means)."""
    key = f"top{k}/{metric}@{T}"
    names = [n for n in METHOD_ORDER if any(n in r["tables"] for r in per_task.values())]
    ratio = "mu0" in names and "constant_velocity" in names
    head = ["task", "frames", "moving"] + names + (["μ0 / CV"] if ratio else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    cols = {n: [] for n in names}
    for task, r in per_task.items():
        vals = {n: r["tables"][n][space][key] if n in r["tables"] else float("nan") for n in names}
        for n in names:
            cols[n].append(vals[n])
        row = [task.replace("|", "/"), str(r["num_frames"]), str(r["num_moving"])] + [_fmt(vals[n]) for n in names]
        if ratio:
            row.append(_fmt(vals["mu0"] / vals["constant_velocity"]) if vals["constant_velocity"] > 0 else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    with np.errstate(invalid="ignore"):
        means = {n: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                 for n, v in ((n, np.asarray(c, float)) for n, c in cols.items())}
    row = [f"mean over {len(per_task)} tasks", str(sum(r["num_frames"] for r in per_task.values())),
           str(sum(r["num_moving"] for r in per_task.values()))] + [_fmt(means[n]) for n in names]
    if ratio:
        cv = means["constant_velocity"]
        row.append(_fmt(means["mu0"] / cv) if cv > 0 else "n/a")
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_split(result: dict, split: str, out_png: Path, k: int = 5, metric: str = "ADE", T: int = 32) -> None:
    """Per task, grouped bars of each method's 3D (uvz) top-k min{metric}@T (linear axis)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_task = result["per_task"]
    tasks = list(per_task)
    key = f"top{k}/{metric}@{T}"
    names = [n for n in METHOD_ORDER if any(n in r["tables"] for r in per_task.values())]
    # about 0.2 in per bar, within 6..40 in (some 50 tasks x 4 methods still fit, at ~20 px a bar)
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 2 + 0.2 * len(tasks) * (len(names) + 1))), 5.0))
    width = 0.8 / max(1, len(names))
    x = np.arange(len(tasks))
    for i, name in enumerate(names):
        vals = [per_task[t]["tables"][name]["uvz"][key] if name in per_task[t]["tables"] else np.nan for t in tasks]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, np.nan_to_num(vals, nan=0.0), width, label=name)
    ax.set_xticks(x, [f"{t}\n({per_task[t]['num_frames']} fr.)" for t in tasks], rotation=35, ha="right",
                  fontsize=8)
    ax.set_ylabel(f"3D (uvz) top-{k} min{metric}@{T}")
    ax.set_title(f"{split}: {split_label(split)}, protocol {result.get('protocol', 'ours')}, "
                 f"{result['num_frames']} frames, {result['num_moving']} moving points", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def plot(results: dict, out_png: Path, k: int = 5) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results)
    fig, axes = plt.subplots(1, 2 * len(splits), figsize=(6 * 2 * len(splits), 4.2), squeeze=False)
    for s_i, split in enumerate(splits):
        tables = results[split]["tables"]
        names = [n for n in METHOD_ORDER if n in tables]
        ax = axes[0, 2 * s_i]
        metrics = ("ADE", "FDE", "DTW")
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            vals = [tables[name]["uvz"][f"top{k}/{m}@32"] for m in metrics]
            ax.bar(np.arange(3) + i * width, vals, width, label=name)
        ax.set_xticks(np.arange(3) + width * (len(names) - 1) / 2, [f"min{m}@32" for m in metrics])
        ax.set_title(f"{split_label(split)}: 3D (uvz) top-{k}, {results[split]['num_moving']} moving points")
        ax.legend(fontsize=8)
        ax = axes[0, 2 * s_i + 1]
        ex = results[split]["examples"]
        item = ex[0][1]
        img = np.asarray(item["color"])
        h, w = img.shape[:2]
        ax.imshow(img)
        keep = np.nonzero(item["query_mask"] & item["moving"])[0]
        if keep.size == 0:
            keep = np.nonzero(item["query_mask"])[0]
        all_q = np.nonzero(item["query_mask"])[0]
        sel = np.searchsorted(all_q, keep[:12])
        to_px = lambda uv: normalized_to_pixels(uv[..., :2], w, h).T  # noqa: E731
        fv = item["future_valid"]
        for j, q in zip(sel, keep[:12]):
            gx, gy = to_px(item["future_uvz"][q][fv[q]])
            ax.plot(gx, gy, "w-", lw=2)
        colours = {"mu0": "lime", "mu0_raw_waypoints": "orange", "constant_velocity": "cyan", "zero_motion": "red"}
        for name, res in ex[1:]:
            if name not in ("mu0", "constant_velocity"):
                continue
            for j in sel:
                px, py = to_px(res.samples_uvz[0, j])
                ax.plot(px, py, "-", color=colours[name], lw=1)
        ax.set_title(f"{split_label(split)}: '{item['caption']}' "
                     "(white = ground truth, green = μ0, cyan = const. vel.)", fontsize=8)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mu0 eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="TraceExtract dataset directory")
    p.add_argument("--checkpoint", required=True, help="μ_0 checkpoint directory")
    p.add_argument("--raw-checkpoint", default=None, help="checkpoint of the raw-waypoint (no B-spline) variant")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1) / onnxruntime provider choice")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--splits", default="val,heldout_tasks", help="comma-separated: val, heldout_tasks, train, all")
    p.add_argument("--protocol", default="ours", choices=PROTOCOLS,
                   help="ours (default): all samples, history + depth; paper: the authors' headline setting "
                        "(3 frames per episode, 16 moving queries, no history, no depth image)")
    p.add_argument("--num-samples", type=int, default=5, help="K samples per query (top-K metrics)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate at most this many samples per split, spread evenly over its tasks and episodes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_out", help="output directory for metrics.json/.md/.png")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from mu0_policy.baselines import ConstantVelocityPredictor, ZeroMotionPredictor
    from mu0_policy.predictors import make_predictor
    from mu0_policy.training.data import TraceDataset

    from mu0_policy.model.checkpoint import CheckpointError
    from mu0_policy.training.data import DatasetError

    kw = dict(backend=args.backend, device=args.device, dtype=args.dtype)
    try:
        TraceDataset(args.data, "all")
        predictors: dict[str, TracePredictor] = {"mu0": make_predictor(args.checkpoint, **kw)}
        if args.raw_checkpoint:
            predictors["mu0_raw_waypoints"] = make_predictor(args.raw_checkpoint, **kw)
    except (DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ref = predictors["mu0"]
    predictors["constant_velocity"] = ConstantVelocityPredictor(ref.horizon, ref.num_ctrl, ref.step_period)
    predictors["zero_motion"] = ZeroMotionPredictor(ref.horizon, ref.num_ctrl, ref.step_period)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, report = {}, {}
    md = []
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        ds = TraceDataset(args.data, split)
        if len(ds) == 0:
            print(f"split {split}: no samples, skipped", file=sys.stderr)
            continue
        try:
            r = evaluate_split(predictors, ds, args.num_samples, args.seed, args.batch, args.max_samples,
                               progress=not args.no_progress, protocol=args.protocol)
        except ValueError as exc:
            print(f"split {split}: {exc}, skipped", file=sys.stderr)
            continue
        results[split] = r
        report[split] = {"label": split_label(split), "tables": r["tables"], "per_task": r["per_task"],
                         "num_queries": r["num_queries"], "num_moving": r["num_moving"],
                         "protocol": args.protocol, "num_frames": r["num_frames"],
                         "num_dataset_samples": len(ds) if args.max_samples is None else min(len(ds), args.max_samples)}
        ks = sorted({1, args.num_samples})
        for space, label in (("uvz", "3D uvz"), ("uv", "2D uv")):
            for k in ks:
                md.append(f"### {split} ({split_label(split)}), protocol {args.protocol} ({r['num_frames']} frames, "
                          f"{r['num_moving']} moving of {r['num_queries']} queries), {label}, top-{k}\n")
                md.append(markdown_table(r["tables"], space, k))
                md.append("")
        cv = r["tables"]["constant_velocity"]["uvz"][f"top{args.num_samples}/ADE@32"]
        mu = r["tables"]["mu0"]["uvz"][f"top{args.num_samples}/ADE@32"]
        md.append(f"μ0 / constant velocity, top-{args.num_samples} minADE@32: {mu / cv:.3f}\n")
    if not results:
        print("error: no split had samples", file=sys.stderr)
        return 2
    for split, r in results.items():
        md.append(f"### per task: {split} ({split_label(split)}), protocol {args.protocol}, "
                  f"3D uvz top-{args.num_samples} minADE@32\n")
        md.append(per_task_table(r["per_task"], args.num_samples))
        md.append("")
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    (out / "metrics.md").write_text("\n".join(md))
    plot(results, out / "metrics.png", args.num_samples)
    pngs = []
    for split, r in results.items():
        pngs.append(out / f"metrics_{split}.png")
        plot_split(r, split, pngs[-1], args.num_samples)
    print("\n".join(md))
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'}, {out / 'metrics.png'}, "
          + ", ".join(str(x) for x in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
