"""SIGINT and SIGTERM redirected to a handler for a while: how a run (and a study) turns a Ctrl-C or
a scheduler's SIGTERM into "finish this step, checkpoint, stop" instead of dying mid-write."""

from __future__ import annotations

import signal
import threading
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install(handler: Callable[[int, object], None]) -> Callable[[], None]:
    """Route SIGINT and SIGTERM to ``handler(signum, frame)``; returns the function that puts the
    previous handlers back. Outside the main thread (where Python allows no handlers) nothing changes."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
