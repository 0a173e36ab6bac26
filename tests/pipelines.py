"""Small user functions and services shared by the thread-backend tests."""

from __future__ import annotations

import threading
import time

from sage_jupyter import (BaseService, BatchFunction, FilterFunction, FlatMapFunction, MapFunction,
                          SinkFunction, SourceFunction)


class Numbers(BatchFunction):
    def __init__(self, n: int, delay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.n, self.delay, self.i = n, delay, 0

    def execute(self):
        if self.i >= self.n:
            return None
        if self.delay:
            time.sleep(self.delay)
        self.i += 1
        return self.i


class Double(MapFunction):
    def execute(self, data):
        return data * 2


class MultipleOf(FilterFunction):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def execute(self, data):
        return data % self.k == 0


class Explode(FlatMapFunction):
    def execute(self, data):
        return [data] * (data % 3)


class Collector(SinkFunction):
    """Appends to a shared list (thread backend only)."""

    def __init__(self, out: list, delay: float = 0.0):
        super().__init__()
        self.out, self.delay = out, delay
        self._lock = threading.Lock()

    def execute(self, data):
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.out.append(data)


class Ticks(SourceFunction):
    """Unbounded: a record every `period` seconds."""

    def __init__(self, period: float = 0.001):
        super().__init__()
        self.period, self.i = period, 0

    def execute(self):
        time.sleep(self.period)
        self.i += 1
        return self.i


class Recorder(BaseService):
    """Logs every hook and call into a shared list of events."""

    def __init__(self, events: list, tag: str = "svc"):
        super().__init__()
        self.events, self.tag, self.store = events, tag, {}

    def setup(self):
        self.events.append((self.tag, "setup"))

    def start(self):
        self.events.append((self.tag, "start"))

    def put(self, key, value):
        self.store[key] = value
        return value

    def get(self, key):
        return self.store.get(key)

    def process(self, data):
        return data + 1

    def fail(self):
        raise KeyError("no such thing")

    def stop(self):
        self.events.append((self.tag, "stop"))

    def cleanup(self):
        self.events.append((self.tag, "cleanup"))
