"""Worker processes that die with the step that started them.

A step killed with SIGKILL cannot stop its workers itself. On Linux a worker asks the kernel to
send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); a worker whose parent is
already gone when it starts exits at once. This module imports nothing heavy, so a worker arms
itself as soon as it has started (before it imports scikit-learn or torch for its tasks).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Process-pool initializer (``initializer=die_with_parent, initargs=(os.getpid(),)``)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the worker ends when its task queue closes
            pass
    if os.getppid() != parent:  # the parent died before the kernel was asked
        os._exit(1)
