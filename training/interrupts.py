"""Ctrl-C (SIGINT) and SIGTERM as a request that a long loop honours at its next safe point.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives:
inside an HDF5 write, in a ``__del__`` or a C callback (where it is printed and *swallowed*), or
in the middle of an optimizer step. :class:`GracefulStop` records the signal instead, and the loop
calls :meth:`GracefulStop.check` where stopping leaves its output consistent. A second signal
raises ``KeyboardInterrupt`` at once, for a loop that does not reach a safe point.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by :meth:`GracefulStop.check` after a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def exit_code(err: BaseException) -> int:
    """The conventional exit code of a run stopped by ``err`` (130 for a plain ``KeyboardInterrupt``)."""
    return getattr(err, 'exit_code', 128 + signal.SIGINT)


class GracefulStop:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`signum` instead of interrupting.

    Outside the main thread (where Python cannot install handlers) it does nothing and signals
    keep their usual effect. The previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the loop to stop."""
        return self.signum is not None

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived; call this where stopping is safe."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: stop now, wherever the loop is
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set from C
        self._previous = {}
