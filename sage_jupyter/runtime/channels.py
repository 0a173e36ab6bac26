"""Bounded FIFO channels of micro-batches between task threads.

A full channel blocks its producers (backpressure, flat memory); `abort()` wakes every
waiter at once so a failing or stopped job never leaves a thread blocked on a queue.
Channels are bounded in batches and in (estimated) bytes, so memory does not grow with
record size.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Any

CHANNEL_BYTES = 8 * 2**20  # per consumer channel: with 1 MB records, about 8 of them queue
_getsizeof = sys.getsizeof


def record_bytes(record: Any) -> int:
    """A cheap size estimate of one record: its own size, plus that of a few items one level
    down for tuples, lists and dicts (whose `getsizeof` counts only their pointers)."""
    size = _getsizeof(record)
    if isinstance(record, (tuple, list)) and record:
        items = record[:4]
        size += sum(map(_getsizeof, items)) * len(record) // len(items)
    elif isinstance(record, dict) and record:
        head = list(record.items())[:4]
        size += sum(_getsizeof(k) + _getsizeof(v) for k, v in head) * len(record) // len(head)
    return size


def batch_bytes(batch: Any) -> int:
    """Estimated bytes of a batch, from three sampled records (first, middle, last)."""
    if type(batch) is not list or not batch:
        return 0
    n = len(batch)
    if n < 3:
        return sum(map(record_bytes, batch))
    return (record_bytes(batch[0]) + record_bytes(batch[n // 2]) + record_bytes(batch[-1])) * n // 3


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
    """At most `capacity` batches and about `max_bytes` bytes; an empty channel takes one
    batch of any size, so a batch bigger than the bound still gets through."""

    __slots__ = ("_aborted", "_bytes", "_capacity", "_items", "_lock", "_max_bytes", "_not_empty", "_not_full",
                 "_records", "_waiting")

    def __init__(self, capacity: int = 16, max_bytes: int = CHANNEL_BYTES) -> None:
        self._items: deque[tuple[Any, int]] = deque()
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._records = 0  # records in the queued batches (an end marker counts none)
        self._waiting = 0  # producers blocked in put() because the channel is full
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._aborted = False

    def _full_for(self, size: int) -> bool:
        return len(self._items) >= self._capacity or (self._bytes > 0 and self._bytes + size > self._max_bytes)

    def put(self, item: Any) -> None:
        size = batch_bytes(item)
        with self._lock:
            if self._full_for(size) and not self._aborted:
                self._waiting += 1
                try:
                    while self._full_for(size) and not self._aborted:
                        self._not_full.wait()
                finally:
                    self._waiting -= 1
            if self._aborted:
                raise Aborted()
            self._items.append((item, size))
            self._bytes += size
            if type(item) is not EndOfStream:
                self._records += len(item)
            self._not_empty.notify()

    def offer(self, item: Any) -> bool:
        """Put without waiting: False (and nothing queued) if the channel is full for it."""
        size = batch_bytes(item)
        with self._lock:
            if self._aborted:
                raise Aborted()
            if self._full_for(size):
                return False
            self._items.append((item, size))
            self._bytes += size
            if type(item) is not EndOfStream:
                self._records += len(item)
            self._not_empty.notify()
            return True

    def get(self) -> Any:
        with self._lock:
            while not self._items and not self._aborted:
                self._not_empty.wait()
            if self._aborted:
                raise Aborted()
            item, size = self._items.popleft()
            self._bytes -= size
            if type(item) is not EndOfStream:
                self._records -= len(item)
            self._not_full.notify()
            return item

    @property
    def queued_records(self) -> int:
        """Records waiting in the channel."""
        return self._records

    @property
    def full(self) -> bool:
        """At capacity, or a producer waits for room: the consumer is the bottleneck."""
        return self._waiting > 0 or len(self._items) >= self._capacity

    @property
    def queued_bytes(self) -> int:
        """Estimated bytes waiting in the channel."""
        return self._bytes

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
