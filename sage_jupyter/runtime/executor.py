"""A small pool of daemon threads returning `concurrent.futures.Future`s.

`ThreadPoolExecutor` threads are joined at interpreter exit, so one hung service call
would keep a kernel from shutting down; these threads are daemons and the pool is shut
down when its job ends.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from .threads import spawn

_STOP = object()


class DaemonExecutor:
    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self._name}: the job has ended; no more service calls")
            self._work.put((future, fn, args, kwargs))
            if self._idle == 0 and len(self._threads) < self._max_workers:
                self._threads.append(spawn(self._worker, f"{self._name}-{len(self._threads)}"))
        return future

    def _worker(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
            if item is _STOP:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

    def shutdown(self, timeout: float) -> list[str]:
        """Stop the workers; return the names of threads still busy after `timeout`."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        for _ in threads:
            self._work.put(_STOP)
        return join_all(threads, timeout)


def join_all(threads: list[threading.Thread], timeout: float) -> list[str]:
    """Join threads within one overall deadline; return the names of those still alive."""
    import time

    deadline = time.monotonic() + timeout
    me = threading.current_thread()
    for t in threads:
        if t is not me:
            t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive() and t is not me]
