"""The `main()` of every mu0 node process: start, spin until Ctrl-C / SIGTERM / external shutdown,
clean up, end the process. One copy instead of one per node (rgbd_sync, mu0_node, action_expert,
sim_arm).

    def main(argv=None):
        return spin_node(MyNode, argv, name="my_node", free=MyNode._free)

Exit codes: 0 on SIGINT / SIGTERM / external shutdown (also while starting or while cleaning up),
2 on a bad parameter (`bad_parameter` exceptions from the constructor, the message on one line),
what `start(node)` returns when it returns an int (e.g. 1 when autostart's configure fails), 1 for
an exception while the context was still running (the message on one line, no traceback), and 1
with a traceback for anything else.

How a stop goes, and why:
- `ros2 launch` gives every process 5 s after its SIGINT, then SIGTERM, then SIGKILL; Ctrl-C in a
  terminal reaches the whole process group, so a node gets SIGINT twice (the terminal's, then
  launch's). The first one stops the spin; from then on SIGINT is ignored so the second cannot cut
  the cleanup short (a traceback, death by signal). A SIGTERM that comes after another stop
  request (launch's escalation once its grace is over) cuts the cleanup short: the process ends
  with 0 right away.
- The node is freed (`free`: threads joined, subscriptions gone) and destroyed and rclpy is shut
  down explicitly, then the process ends with `os._exit` after flushing Python's and C's stdio.
  Measured on the 2-core machine under load (load average 25-45): the interpreter's own teardown
  of a torch/transformers process (a full garbage collection of the heap, then module teardown)
  took 6-15 s AFTER the ROS cleanup had finished. That is past launch's 5 s grace, and by then
  CPython has already put the default signal handlers back, so launch's SIGTERM killed the node
  (exit -15) although it had stopped cleanly. Nothing of ours needs that teardown: every resource
  is closed explicitly above it.

`run_node` is the same without the final `os._exit` (for callers that must return).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Callable, NoReturn


def run_node(make_node: Callable, argv: list[str] | None = None, *, name: str,
             start: Callable | None = None, free: Callable | None = None,
             bad_parameter: tuple = (ValueError,)) -> int:
    """Init rclpy with `argv`, build the node with `make_node()`, call `start(node)` (an int it
    returns ends the process with that code before spinning), spin, clean up; the exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    stopping = {"signal": False, "cleanup": False, "spinning": False}

    def interrupt(signum, frame):
        first = not stopping["signal"]
        stopping["signal"] = True
        # the first stop request ends the start-up (KeyboardInterrupt). Once spinning, rclpy's own
        # handler (it runs first) shuts the context down and the spin ends by itself: raising here
        # too would land in whatever Python code runs at that moment, e.g. a Future's __del__,
        # where CPython prints it as an ignored exception with a traceback. The first one's Python
        # handler can also run late, after the spin ended, and must not skip the cleanup.
        if first and not stopping["cleanup"] and not stopping["spinning"]:
            raise KeyboardInterrupt
        # afterwards only launch's escalation (SIGTERM after its grace) cuts the cleanup short; a
        # repeated SIGINT (Ctrl-C reaches the group, then launch sends its own) is the same request,
        # even when both arrive before the cleanup has begun
        if signum == signal.SIGTERM and not first:
            raise KeyboardInterrupt

    # before rclpy.init: rclpy's own handlers (they shut the context down) chain to these
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    node = None
    try:
        rclpy.init(args=argv)
        try:
            node = make_node()
            code = start(node) if start is not None else None
            if code is None:
                code = _spin(rclpy, node, name, stopping)
        except (KeyboardInterrupt, ExternalShutdownException):
            code = 0
        except bad_parameter as exc:
            if stopping["signal"] or not rclpy.ok():   # a stop request while starting, not a config error
                code = 0
            else:
                print(f"{name}: bad parameter: {exc}", file=sys.stderr)
                code = 2
        finally:
            # the second Ctrl-C (terminal, then launch) must not interrupt the cleanup
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stopping["cleanup"] = True
            if node is not None:
                _cleanup(node, name, free)
            rclpy.try_shutdown()
    except KeyboardInterrupt:          # SIGTERM during the cleanup, or a signal during rclpy.init
        code = 0
    return code


def spin_node(make_node: Callable, argv: list[str] | None = None, *, name: str,
              start: Callable | None = None, free: Callable | None = None,
              bad_parameter: tuple = (ValueError,)) -> NoReturn:
    """`run_node`, then end the process at once with its code (see the module docstring)."""
    try:
        code = run_node(make_node, argv, name=name, start=start, free=free, bad_parameter=bad_parameter)
    except KeyboardInterrupt:
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash: say where, then exit like Python would (1)
        traceback.print_exc()
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """Flush what was written (Python logging and stdio, C stdio) and end the process without the
    interpreter's teardown."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):   # a closed pipe: nothing left to say to it
                pass
        import ctypes
        ctypes.CDLL(None).fflush(None)      # rcutils and native libraries write through C stdio
    finally:
        os._exit(code)


def _spin(rclpy, node, name: str, stopping: dict) -> int:
    from rclpy.executors import ExternalShutdownException

    stopping["spinning"] = True      # from here rclpy's signal handler ends the spin (never reset)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except Exception as exc:  # noqa: BLE001
        # an interrupt that lands inside rclpy's C++ (taking a message) surfaces as e.g.
        # "RuntimeError: Unable to convert call argument": after a stop request that is a clean stop
        if stopping["signal"] or not rclpy.ok():
            return 0
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _cleanup(node, name: str, free: Callable | None) -> None:
    try:
        if free is not None:
            free(node)
        node.destroy_node()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - cleanup after a stop must not turn into a failure
        print(f"{name}: cleanup: {exc!r}", file=sys.stderr)
