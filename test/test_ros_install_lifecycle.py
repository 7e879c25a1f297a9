"""mu0_node as the lifecycle node ros2 launch drives: a transition that is not valid in the current
state (a repeated configure from a launch retry or a second `ros2 lifecycle set`) is refused with
success=false through the change_state service, instead of rclpy raising out of the service
callback and killing the node."""
from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")


def test_invalid_transition_over_the_service_is_refused_not_fatal():
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from mu0_policy.nodes.mu0_node import Mu0Node

    ctx = rclpy.Context()          # its own context: independent of what other tests left in the default one
    rclpy.init(context=ctx)
    try:
        node = Mu0Node(parameter_overrides=[Parameter("model", value="baseline:zero_motion"),
                                            Parameter("autostart", value=False)], context=ctx)
        client_node = rclpy.create_node("lifecycle_client", context=ctx)
        change = client_node.create_client(ChangeState, "/mu0_node/change_state")
        get = client_node.create_client(GetState, "/mu0_node/get_state")
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        executor.add_node(client_node)

        def call(client, request):
            assert client.wait_for_service(timeout_sec=10)
            future = client.call_async(request)
            deadline = time.monotonic() + 20
            while not future.done() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.1)
            assert future.done()
            return future.result()

        def transition(tid):
            req = ChangeState.Request()
            req.transition.id = tid
            return call(change, req).success

        assert transition(Transition.TRANSITION_CONFIGURE)
        assert not transition(Transition.TRANSITION_CONFIGURE)        # refused: already configured
        assert call(get, GetState.Request()).current_state.label == "inactive"
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert call(get, GetState.Request()).current_state.label == "active"
        node._free()
        executor.shutdown()
        client_node.destroy_node()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
