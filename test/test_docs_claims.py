"""What README / docs state about the code is true of the code: paths in the layout table exist,
the dataset format table lists exactly the shard keys, the RViz config shows the topics the nodes
publish, the trackers the docs name are the ones registered, the measured-numbers table names
its bench commands."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_layout_table_paths_exist():
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([^`]+)`", section, re.M)
    assert len(paths) >= 8
    for row in re.findall(r"^\| (`[^|]+)\|", section, re.M):
        for p in re.findall(r"`([^`]+)`", row):
            assert (ROOT / p).exists(), p


def test_dataset_doc_table_lists_exactly_the_shard_keys():
    from mu0_perception.trace_extract.dataset import KEYS

    doc = (ROOT / "docs" / "dataset.md").read_text()
    table = doc.split("Shard keys", 1)[1].split("\n\n", 1)[0]
    named = set()
    for cell in re.findall(r"^\| ([^|]+)\|", table, re.M):
        named |= set(re.findall(r"`([a-z_]+)`", cell))
    assert named == set(KEYS)


def test_rviz_config_shows_the_topics_the_graph_publishes():
    from mu0_app.replay import RGBD_PARAMS

    rviz = yaml.safe_load((ROOT / "config" / "rviz" / "mu0.rviz").read_text())
    manager = rviz["Visualization Manager"]
    displays = {d["Class"]: d for d in manager["Displays"]}
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == RGBD_PARAMS["color_topic"]
    markers = displays["rviz_default_plugins/MarkerArray"]["Topic"]
    node_src = (ROOT / "mu0_policy" / "nodes" / "mu0_node.py").read_text()
    assert f'"{markers["Value"]}"' in node_src                        # the topic mu0_node publishes
    assert markers["Reliability Policy"] == "Reliable"                 # matches its reliable publisher
    graph = yaml.safe_load((ROOT / "config" / "mu0_replay.yaml").read_text())
    base = graph["mu0_node"]["ros__parameters"]["base_frame_id"]
    assert manager["Global Options"]["Fixed Frame"] == base
    assert manager["Views"]["Current"]["Target Frame"] == base


def test_docs_name_only_the_trackers_that_exist():
    from mu0_perception.tracking import registered_trackers

    # if CoTracker3 / TAPIP3D get real code, the docs that call them an interface must change too
    assert registered_trackers() == ["lk"]
    for doc in (README, (ROOT / "docs" / "dataset.md").read_text()):
        assert "interface to fill" in doc
    assert "TAPIP3D are an\ninterface to fill" in (ROOT / "mu0_perception" / "tracking.py").read_text().replace(
        "TAPIP3D are an INTERFACE TO FILL", "TAPIP3D are an\ninterface to fill")


def test_measured_numbers_table_names_existing_bench_commands():
    section = README.split("## Measured on the development machine", 1)[1].split("\n## ", 1)[0]
    benches = set(re.findall(r"bench/[a-z_]+\.py", section))
    assert benches, "the measured-numbers section names its bench commands"
    for b in benches:
        assert (ROOT / b).is_file(), b
