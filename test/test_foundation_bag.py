"""An mcap rosbag2 written with our .msg definitions is read back by readers that never saw them."""
import subprocess
import sys
import textwrap

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from mu0_ros import convert

from test_foundation_convert import _frame, make_trace_set

# A fresh interpreter that imports neither mu0_msgs nor our typestore: the types must come from
# the bag itself (rosbags AnyReader) and from the mcap schema records (mcap_ros2).
FRESH_READER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from rosbags.highlevel import AnyReader
    from mcap_ros2.reader import read_ros2_messages
    out = {}
    with AnyReader([Path(sys.argv[1])]) as reader:
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype == "mu0_msgs/msg/TraceArray":
                out["anyreader_traces"] = [len(msg.traces), msg.instruction, msg.traces[1].entity,
                                           msg.traces[2].samples[7].y, float(msg.traces[0].knots[4])]
            else:
                out["anyreader_rgbd"] = [msg.color.width, msg.color.height, msg.depth.encoding,
                                         msg.header.stamp.sec, msg.header.stamp.nanosec]
    mcap_file = next(Path(sys.argv[1]).glob("*.mcap"))
    for m in read_ros2_messages(str(mcap_file)):
        if m.schema.name == "mu0_msgs/msg/TraceArray":
            out["mcap_traces"] = [len(m.ros_msg.traces), m.ros_msg.traces[2].samples[7].y]
        elif m.schema.name == "mu0_msgs/msg/RGBD":
            out["mcap_rgbd_k"] = list(m.ros_msg.camera_info.k)
    print(json.dumps(out))
""")


def test_mcap_bag_with_custom_types_read_by_fresh_readers(tmp_path):
    store = convert.mu0_typestore()
    frame, traces = _frame(), make_trace_set()
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        c_rgbd = writer.add_connection("/mu0/rgbd", "mu0_msgs/msg/RGBD", typestore=store)
        c_tr = writer.add_connection("/mu0/traces", "mu0_msgs/msg/TraceArray", typestore=store)
        writer.write(c_rgbd, frame.stamp_ns,
                     store.serialize_cdr(convert.frame_to_rgbd_msg(frame, typestore=store), "mu0_msgs/msg/RGBD"))
        writer.write(c_tr, frame.stamp_ns + 1,
                     store.serialize_cdr(convert.trace_set_to_msg(traces, typestore=store), "mu0_msgs/msg/TraceArray"))
    res = subprocess.run([sys.executable, "-c", FRESH_READER, str(bag)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import json
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["anyreader_rgbd"] == [7, 5, "32FC1", frame.stamp_ns // 10**9, frame.stamp_ns % 10**9]
    n, instr, entity, y, knot = out["anyreader_traces"]
    assert (n, instr, entity) == (3, "pick up the cube", "object")
    assert y == traces.samples[2, 7, 1] and knot == traces.knots[4]
    assert out["mcap_traces"] == [3, traces.samples[2, 7, 1]]
    np.testing.assert_allclose(out["mcap_rgbd_k"], frame.intrinsics.K.reshape(-1))
