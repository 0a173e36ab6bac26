"""Live jobs of this process, so interpreter exit (kernel shutdown) can stop them all.

The `atexit` hook is installed on the first submit, not at import, and stops every live
job within about 2 s: task threads are daemons and cannot block exit before it runs.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import TYPE_CHECKING

from .policy import EXIT_POLICY, CleanupPolicy

if TYPE_CHECKING:  # pragma: no cover
    from .dispatcher import Dispatcher

_live: "weakref.WeakSet[Dispatcher]" = weakref.WeakSet()
_lock = threading.Lock()
_hooked = False


def track(dispatcher: "Dispatcher") -> None:
    global _hooked
    with _lock:
        _live.add(dispatcher)
        if not _hooked:
            atexit.register(stop_all_at_exit)
            _hooked = True


def untrack(dispatcher: "Dispatcher") -> None:
    with _lock:
        _live.discard(dispatcher)


def live_jobs() -> list["Dispatcher"]:
    with _lock:
        return list(_live)


def stop_all(policy: CleanupPolicy = EXIT_POLICY, timeout: float = 2.0) -> None:
    """Stop every live job of this process under a short policy; wait at most `timeout`."""
    import time

    jobs = live_jobs()
    for job in jobs:
        job.policy = policy
        job.request_stop()
    deadline = time.monotonic() + timeout
    for job in jobs:
        try:
            job.wait(max(0.0, deadline - time.monotonic()), raise_on_failure=False, until_terminal=True)
        except TimeoutError:
            pass


def stop_all_at_exit() -> None:
    stop_all()
