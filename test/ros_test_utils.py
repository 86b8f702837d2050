"""Helpers for tests that run real rclpy nodes in-process: waits with timeouts, a background executor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def reap(process) -> None:
    """Kill ``process`` (a ``subprocess.Popen``) if a failed test left it running, and wait for it."""
    if process.poll() is None:
        process.kill()
        process.wait()


class SpinningExecutor:
    """A single-threaded executor spun in a background thread, with nodes added by the test.

    Single-threaded, as ``planner_node`` and ``sim_node`` spin themselves: every callback of these
    nodes is short (planning runs in the planner's own thread). rclpy's multi-threaded executor
    spins a core whenever a ready entity's mutually exclusive group is busy, which starved the
    nodes under test on two cores.
    """

    def __init__(self, context: object) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=context)
        self._nodes: list[object] = []
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def add(self, node: object) -> object:
        """Add ``node`` to the executor and remember to destroy it at the end."""
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        """Stop spinning and destroy the nodes, in the order that lets rclpy exit cleanly."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        for node in self._nodes:
            node.destroy_node()
