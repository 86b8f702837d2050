"""Run a node's process from ``main()`` to a clean exit: help text, start-up errors, signals, shutdown.

Both nodes share this so every way out behaves the same: a start-up error is one FATAL line
through the ROS logger and exit 1; SIGINT or SIGTERM (Ctrl-C in a terminal, or ``ros2 launch``
stopping its processes) ends the spin loop, runs the node's ``close()`` (the planner publishes its
safe action there), and exits 0 with no traceback. rclpy's own signal handler is not installed:
it raises ``KeyboardInterrupt`` wherever the main thread happens to be (inside
``executor.shutdown()`` or a C call), which is where the tracebacks and aborts came from.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from lewm_ros.nodes.parameter_specs import ParamSpec, usage, wants_help

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOP = threading.Event()  # set by SIGINT/SIGTERM once catch_signals() ran


def _request_stop(signum: int, frame: Any) -> None:
    _STOP.set()


def catch_signals() -> threading.Event:
    """From now on SIGINT and SIGTERM only ask the process to stop; returns the flag they set.

    Called first thing by the nodes' entry points, before torch and rclpy are imported (seconds
    on a small robot computer), so a Ctrl-C during start-up ends in a clean exit too.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            if signal.getsignal(sig) is not _request_stop:
                signal.signal(sig, _request_stop)
    return _STOP


def _quiet_colours() -> None:
    """No ANSI colour codes in logs that go to a file or a pipe (rcutils colours a TTY only then)."""
    if not sys.stderr.isatty():
        os.environ.setdefault('RCUTILS_COLORIZED_OUTPUT', '0')


def run_node(
    argv: Sequence[str] | None,
    executable: str,
    name: str,
    summary: str,
    specs: Sequence[ParamSpec],
    make_node: Callable[[], Any],
    startup_errors: tuple[type[BaseException], ...],
    extra_help: str = '',
) -> int:
    """Start the node ``make_node()`` builds, spin it until a signal, shut down; return the exit code.

    ``executable`` is what ``ros2 run`` calls (for ``--help``), ``name`` the node's name (its
    logger). ``startup_errors`` are the exceptions that mean "cannot start" (bad checkpoint, bad
    parameter): they are logged as one FATAL line and give exit code 1, like a failure of
    ``rclpy.init`` itself (a ``--params-file`` that cannot be read, bad ``--ros-args``). The node
    may define ``close()``, which runs before it is destroyed.
    """
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print(usage(executable, summary, specs, extra_help))
        return 0
    _quiet_colours()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # The handler only sets a flag: Python runs it in the main thread once the executor's wait
    # returns, so the loop below polls with a short timeout instead of blocking forever. A signal
    # while the node is being built (checkpoint, measurement) ends the run as soon as it exists.
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    stop = catch_signals()
    logger = rclpy.logging.get_logger(name)
    try:
        try:
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        except RuntimeError as err:  # rclpy's RCLError and UnknownROSArgsError are RuntimeErrors
            logger.fatal(f'cannot start: {type(err).__name__}: {err}')
            return 1
        try:
            node = make_node()
        except startup_errors as err:
            logger.fatal(f'cannot start: {err}')
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.2)
        finally:
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            executor.remove_node(node)
            node.destroy_node()
            executor.shutdown(timeout_sec=1.0)
        return 0
    finally:
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
