"""bag_player's topic selection: one rule (`_select`) for the schedule and the player's publishers."""
from __future__ import annotations

import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from mu0_ros.bag_player import _select, read_schedule

TOPICS = ("/a", "/b", "/mu0/instruction")


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    store = get_typestore(Stores.ROS2_JAZZY)
    String = store.types["std_msgs/msg/String"]
    path = tmp_path_factory.mktemp("bag") / "b"
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conns = {t: writer.add_connection(t, "std_msgs/msg/String", typestore=store) for t in TOPICS}
        for k in range(6):       # written out of log-time order on purpose: the schedule sorts
            t = TOPICS[k % 3]
            writer.write(conns[t], 1_000 * (6 - k), store.serialize_cdr(String(data=f"{t}{k}"), "std_msgs/msg/String"))
    return path


def test_schedule_selects_sorts_and_excludes(bag):
    every = read_schedule(bag)
    assert [t for t, *_ in every] == sorted(t for t, *_ in every) and len(every) == 6
    assert {topic for _, topic, *_ in every} == set(TOPICS)
    assert {topic for _, topic, *_ in read_schedule(bag, ["/a", "/b"])} == {"/a", "/b"}
    assert {topic for _, topic, *_ in read_schedule(bag, exclude=["/b"])} == {"/a", "/mu0/instruction"}
    assert {topic for _, topic, *_ in read_schedule(bag, ["/a", "/b"], exclude=["/a"])} == {"/b"}
    with pytest.raises(ValueError, match=r"\['/c'\] not in bag"):
        read_schedule(bag, ["/a", "/c"])


@pytest.mark.parametrize("topics,exclude", [(None, ()), (["/b"], ()), (None, ("/a",)), (["/a", "/b"], ["/b"])])
def test_the_player_and_the_schedule_select_the_same_connections(bag, topics, exclude):
    with Reader(bag) as reader:
        chosen = {c.topic for c in _select(reader, topics, tuple(exclude), bag)}
    assert chosen == {topic for _, topic, *_ in read_schedule(bag, topics, exclude)}
