"""An upstream SAGE program runs by changing only its imports."""

from __future__ import annotations

import time

import pytest

from sage_jupyter import (BaseFunction, BaseService, BatchFunction, JobState, LocalEnvironment,
                          MapFunction, SinkFunction, SourceFunction)


class HelloBatch(BatchFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counter = 0
        self.max_count = 5

    def execute(self):
        if self.counter >= self.max_count:
            return None
        self.counter += 1
        return f"hello #{self.counter}"


class Greeter(BaseService):
    def __init__(self, greeting: str = "hi", **kwargs):
        super().__init__(**kwargs)
        self.greeting = greeting

    def process(self, data):  # the default method of the call form
        return f"{self.greeting} {data}"


class Upper(MapFunction):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.name = "upper-map"  # upstream code sets names; it must not break

    def execute(self, data):
        self.logger.info("%s at %s", self.name, self.ctx.parallel_index)
        return self.call_service("greeter", data.upper(), method=None, timeout=10)


class Keep(SinkFunction):
    seen: list = []

    def execute(self, data):
        Keep.seen.append(data)


def test_upstream_hello_world_with_a_service():
    Keep.seen = []
    env = LocalEnvironment("Hello_World")
    env.register_service("greeter", Greeter, greeting="hey")
    env.from_batch(HelloBatch).map(Upper).sink(Keep)
    env.submit(autostop=True)
    assert Keep.seen == [f"hey HELLO #{i}" for i in range(1, 6)]
    assert issubclass(Upper, BaseFunction)
    env.close()  # harmless after autostop


def test_upstream_streaming_shape_submit_sleep_close():
    class Counter(SourceFunction):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.n = 0

        def execute(self):
            time.sleep(0.002)
            self.n += 1
            return self.n

    got: list = []
    env = LocalEnvironment("stream_app")
    env.from_source(Counter).map(lambda x: x * 10).sink(got.append)
    env.submit()  # upstream: returns at once without autostop
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    env.close()
    assert env.job.state is JobState.STOPPED
    assert got[:5] == [10, 20, 30, 40, 50]


def test_from_collection_and_names():
    out: list = []
    env = LocalEnvironment("collection")
    env.from_collection(["a", "b"]).sink(out.append)
    env.submit(autostop=True)
    assert out == ["a", "b"]
    assert HelloBatch().name == "HelloBatch"  # outside a job: the class name


def test_config_as_second_positional_argument_as_upstream_passes_it():
    env = LocalEnvironment("positional", {"cleanup": {"graceful_timeout": 1.5}})
    assert env.backend == "thread" and env.config == {"cleanup": {"graceful_timeout": 1.5}}
    out: list[int] = []
    env.from_batch(range(3)).sink(out.append)
    env.submit(autostop=True)
    assert out == [0, 1, 2]
    with pytest.raises(ValueError, match="backend='nope'"):
        LocalEnvironment("bad", "nope")
