"""Bounded FIFO channels of micro-batches between task threads.

A full channel blocks its producers (backpressure, flat memory); `abort()` wakes every
waiter at once so a failing or stopped job never leaves a thread blocked on a queue.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class EndOfStream:
    """The in-band end marker: one per upstream instance. Never reaches user code."""

    _instance: "EndOfStream | None" = None

    def __new__(cls) -> "EndOfStream":  # a singleton that survives pickling (Ray)
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type[EndOfStream], tuple[()]]:
        return (EndOfStream, ())

    def __repr__(self) -> str:
        return "<end of stream>"


END = EndOfStream()


class Aborted(Exception):
    """Raised in a task blocked on a channel when its job is aborted."""


class Channel:
    __slots__ = ("_items", "_capacity", "_lock", "_not_empty", "_not_full", "_aborted")

    def __init__(self, capacity: int = 16) -> None:
        self._items: deque[Any] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._aborted = False

    def put(self, item: Any) -> None:
        with self._lock:
            while len(self._items) >= self._capacity and not self._aborted:
                self._not_full.wait()
            if self._aborted:
                raise Aborted()
            self._items.append(item)
            self._not_empty.notify()

    def get(self) -> Any:
        with self._lock:
            while not self._items and not self._aborted:
                self._not_empty.wait()
            if self._aborted:
                raise Aborted()
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
