"""Issue #15: `mu0 eval` broken down by task, a plot per split, and --max-samples spread over tasks.

The predictors are the two baselines (no checkpoint to train or load), with zero motion also
standing in as "mu0" so the μ0 / CV column of the per-task table has something to divide.
"""
import numpy as np
import pytest

from mu0_policy.baselines import ConstantVelocityPredictor, ZeroMotionPredictor
from mu0_policy.training import evaluate
from mu0_policy.training.data import TraceDataset, write_synthetic_dataset

HELD = "pull the block closer"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 8 episodes over 4 tasks (episode e has task e % 4): train = ep0 ep1 ep2 ep4 (3 tasks),
    # val = ep5 ep6 (2 tasks), heldout_tasks = ep3 ep7 (one task)
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), num_episodes=8, frames_per_episode=4,
                                   image_hw=(24, 32), num_queries=8)


@pytest.fixture(scope="module")
def predictors():
    cv = ConstantVelocityPredictor(32, 10, 0.1)
    zm = ZeroMotionPredictor(32, 10, 0.1)
    return {"mu0": zm, "constant_velocity": cv, "zero_motion": zm}


@pytest.fixture(scope="module")
def results(dataset, predictors):
    return {s: evaluate.evaluate_split(predictors, TraceDataset(dataset, s), 2, 0, batch=8, progress=False)
            for s in ("train", "val", "heldout_tasks")}


def test_per_task_entries_cover_each_task_and_their_counts_sum_to_the_split(dataset, results):
    for split, r in results.items():
        ds = TraceDataset(dataset, split)
        tasks = {ds[i]["task"] for i in range(len(ds))}
        assert set(r["per_task"]) == tasks, split
        assert sum(t["num_frames"] for t in r["per_task"].values()) == r["num_frames"] == len(ds)
        assert sum(t["num_queries"] for t in r["per_task"].values()) == r["num_queries"]
        assert sum(t["num_moving"] for t in r["per_task"].values()) == r["num_moving"]
        for t in r["per_task"].values():
            assert set(t["tables"]) == set(r["tables"])
            assert set(t["tables"]["mu0"]["uvz"]) == set(r["tables"]["mu0"]["uvz"])
    assert len(results["train"]["per_task"]) == 3 and len(results["val"]["per_task"]) == 2


def test_one_task_split_per_task_equals_overall_and_tasks_differ_where_there_are_several(results):
    held = results["heldout_tasks"]
    assert list(held["per_task"]) == [HELD]
    one = held["per_task"][HELD]["tables"]
    for name, table in held["tables"].items():
        for space in ("uv", "uvz"):
            for key, v in table[space].items():
                np.testing.assert_allclose(one[name][space][key], v, rtol=1e-12, err_msg=f"{name} {space} {key}")
    # with several tasks each moves its own way: the per-task zero-motion errors are not all one value,
    # and the overall value is the moving-point-weighted mean of them
    train = results["train"]
    key = "top2/ADE@32"
    per = {t: r["tables"]["zero_motion"]["uvz"][key] for t, r in train["per_task"].items()}
    assert len({round(v, 9) for v in per.values()}) > 1
    w = {t: r["tables"]["zero_motion"]["num_traces"][32] for t, r in train["per_task"].items()}
    np.testing.assert_allclose(sum(per[t] * w[t] for t in per) / sum(w.values()),
                               train["tables"]["zero_motion"]["uvz"][key], rtol=1e-9)


def test_per_task_table_has_a_row_per_task_the_ratio_and_a_mean_row(results):
    md = evaluate.per_task_table(results["train"]["per_task"], k=2)
    lines = md.splitlines()
    assert lines[0].split("|")[1:-1] == [" task ", " frames ", " moving ", " mu0 ", " constant_velocity ",
                                          " zero_motion ", " μ0 / CV "]
    rows = [ln.split("|")[1:-1] for ln in lines[2:]]
    assert [r[0].strip() for r in rows[:-1]] == list(results["train"]["per_task"])
    assert rows[-1][0].strip() == "mean over 3 tasks"
    for r, (task, t) in zip(rows, results["train"]["per_task"].items()):
        tab = t["tables"]
        assert float(r[3]) == pytest.approx(tab["mu0"]["uvz"]["top2/ADE@32"], abs=1e-4)
        assert float(r[6]) == pytest.approx(tab["mu0"]["uvz"]["top2/ADE@32"]
                                            / tab["constant_velocity"]["uvz"]["top2/ADE@32"], abs=1e-4)
    mean_cv = np.mean([t["tables"]["constant_velocity"]["uvz"]["top2/ADE@32"]
                       for t in results["train"]["per_task"].values()])
    assert float(rows[-1][4]) == pytest.approx(mean_cv, abs=1e-4)


def test_plot_per_split_is_written(results, tmp_path):
    for split, r in results.items():
        png = tmp_path / f"metrics_{split}.png"
        evaluate.plot_split(r, split, png, k=2)
        assert png.stat().st_size > 5_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_samples_spreads_over_tasks_and_episodes_deterministically(dataset):
    ds = TraceDataset(dataset, "train")             # ep0 ep1 ep2 ep4, 4 frames each, in that order
    tasks = evaluate.sample_tasks(ds)
    first3 = {tasks[i] for i in range(3)}
    assert len(first3) == 1                          # the first 3 samples are one episode, one task
    picked = evaluate.protocol_indices(ds, "ours", max_samples=3)
    assert len(picked) == 3 and {tasks[i] for i in picked} == set(tasks)
    assert picked == evaluate.protocol_indices(ds, "ours", max_samples=3)
    eps = [ds.index.episodes[int(ds.indices[i])] for i in range(len(ds))]
    six = evaluate.protocol_indices(ds, "ours", max_samples=6)
    assert len(set(six)) == 6 and sorted(six) == six
    # the task with two episodes (ep0, ep4) gets its 2 samples from both, and the evaluator follows the cap
    assert len({eps[i] for i in six}) == 4
    assert evaluate.protocol_indices(ds, "ours", max_samples=100) == list(range(len(ds)))


def test_spread_selection_and_task_parsing():
    tasks = ["a"] * 10 + ["b"] * 2 + ["c"] * 1
    eps = [f"a{i // 5}" for i in range(10)] + ["b0", "b0", "c0"]
    sel = evaluate.spread_selection(tasks, eps, 7)
    got = [tasks[i] for i in sel]
    assert got.count("b") == 2 and got.count("c") == 1 and got.count("a") == 4
    assert {eps[i] for i in sel if tasks[i] == "a"} == {"a0", "a1"}
    # one sample of a 5-frame episode is its middle frame, not the first (which has no history)
    one = evaluate.spread_selection(["a"] * 5, ["a0"] * 5, 1)
    assert one == [2]
    assert evaluate.spread_selection(["a"] * 6, ["a0"] * 6, 2) == [1, 4]
    assert evaluate._even_quota([5, 1, 5], 4) == [2, 1, 1]
    assert evaluate._even_quota([5, 1, 5], 9) == [4, 1, 4] and evaluate._even_quota([2, 2], 99) == [2, 2]
    assert evaluate.task_from_episode("drawer-close-v3_seed100_corner") == "drawer-close"
    assert evaluate.task_from_episode("ep0001") == "ep0001"
    assert evaluate.split_label("train") == "in-distribution (training episodes)"
    assert evaluate.split_label("heldout_tasks") == "unseen tasks" and evaluate.split_label("val") == "unseen episodes"


def test_a_task_without_moving_points_gets_nan_values_not_a_crash(tmp_path, predictors):
    from mu0_policy.training.data import synthetic_samples, write_trace_dataset

    arrays, captions, tasks, episodes, normalizer = synthetic_samples(4, 2, (24, 32), 8)
    still = "push the block right"
    arrays["moving"][np.asarray(tasks) == still] = False
    split = {"train_episodes": sorted(set(episodes)), "val_episodes": [], "heldout_tasks": []}
    d = write_trace_dataset(tmp_path / "ds", arrays, captions, tasks, episodes, normalizer, split)
    r = evaluate.evaluate_split(predictors, TraceDataset(d, "train"), 2, 0, progress=False)
    assert set(r["per_task"]) == set(tasks)
    t = r["per_task"][still]
    assert t["num_moving"] == 0 and t["num_frames"] == 2
    assert np.isnan(t["tables"]["constant_velocity"]["uvz"]["top2/ADE@32"])
    assert t["tables"]["constant_velocity"]["num_traces"] == {8: 0, 16: 0, 32: 0}
    assert np.isfinite(r["tables"]["constant_velocity"]["uvz"]["top2/ADE@32"])
    md = evaluate.per_task_table(r["per_task"], k=2)
    assert f"| {still} | 2 | 0 | n/a |" in md and "mean over 4 tasks" in md
    evaluate.plot_split(r, "train", tmp_path / "metrics_train.png", k=2)
    assert (tmp_path / "metrics_train.png").is_file()
