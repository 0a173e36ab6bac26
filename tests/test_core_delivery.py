"""Exactly-once delivery, order along single-instance paths, routing, and the sources."""

from __future__ import annotations

import collections
import threading

import pytest

from sage_jupyter import (BatchFunction, FlatMapFunction, JobState, KeyByFunction, LocalEnvironment,
                          MapFunction, SinkFunction)
from sage_jupyter.runtime.channels import EndOfStream
from tests.pipelines import Collector, Double, Explode, MultipleOf, Numbers

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def run(build, name="t"):
    env = LocalEnvironment(name)
    build(env)
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    return job


def test_linear_pipeline_keeps_order():
    out: list = []
    run(lambda env: env.from_batch(Numbers, 5000).map(Double).filter(MultipleOf, 3).sink(Collector, out))
    assert out == [x * 2 for x in range(1, 5001) if (x * 2) % 3 == 0]


@pytest.mark.parametrize("p_map,p_sink", [(2, 1), (3, 2), (1, 3), (4, 4)])
def test_exactly_once_under_parallelism(p_map, p_sink):
    out: list = []
    run(lambda env: env.from_batch(range(20000)).map(Double, parallelism=p_map)
        .sink(Collector, out, parallelism=p_sink))
    assert sorted(out) == [x * 2 for x in range(20000)]


def test_parallel_stages_feeding_a_slow_sink_lose_nothing():
    # Upstream SAGE loses the tail of the batch here (its issues #836, #1418).
    out: list = []
    run(lambda env: env.from_batch(range(3000)).map(Double, parallelism=3)
        .sink(Collector, out, delay=0.0002))
    assert sorted(out) == [x * 2 for x in range(3000)]


def test_slow_upstream_loses_nothing():
    out: list = []
    run(lambda env: env.from_batch(Numbers, 40, delay=0.01).map(Double, parallelism=2)
        .sink(Collector, out, parallelism=2))
    assert sorted(out) == [x * 2 for x in range(1, 41)]


def test_keyby_routes_the_record_itself_by_key():
    seen = collections.defaultdict(set)
    records: list = []
    lock = threading.Lock()

    class ByInstance(SinkFunction):
        def execute(self, data):
            with lock:
                seen[data % 5].add(self.ctx.parallel_index)
                records.append(data)

    run(lambda env: env.from_batch(range(1000)).map(Double, parallelism=2)
        .keyby(lambda x: x % 5).sink(ByInstance, parallelism=3))
    assert sorted(records) == [x * 2 for x in range(1000)]  # records, not (key, value) pairs
    assert all(len(instances) == 1 for instances in seen.values())
    assert len({i for s in seen.values() for i in s}) > 1  # keys really spread over instances


def test_keyby_function_class_and_string_keys():
    seen = collections.defaultdict(set)

    class Word(KeyByFunction):
        def execute(self, data):
            return data.split(":")[0]

    class Note(SinkFunction):
        def execute(self, data):
            seen[data.split(":")[0]].add(self.ctx.parallel_index)

    words = [f"{w}:{i}" for i in range(200) for w in ("a", "b", "c", "d")]
    run(lambda env: env.from_batch(words).keyby(Word).sink(Note, parallelism=2))
    assert set(seen) == {"a", "b", "c", "d"}
    assert all(len(v) == 1 for v in seen.values())


def test_broadcast_gives_every_instance_every_record():
    got = collections.defaultdict(list)

    class PerInstance(SinkFunction):
        def execute(self, data):
            got[self.ctx.parallel_index].append(data)

    run(lambda env: env.from_batch(range(100)).keyby(lambda x: x, strategy="broadcast")
        .sink(PerInstance, parallelism=3))
    assert sorted(got) == [0, 1, 2]
    assert all(v == list(range(100)) for v in got.values())


def test_flatmap_return_and_collect():
    class Both(FlatMapFunction):
        def execute(self, data):
            self.collect(("c", data))
            return [("r", data)]

    out: list = []
    run(lambda env: env.from_batch([1, 2]).flatmap(Both).sink(Collector, out))
    assert out == [("c", 1), ("r", 1), ("c", 2), ("r", 2)]

    out2: list = []
    run(lambda env: env.from_batch(range(10)).flatmap(Explode, parallelism=2).sink(Collector, out2))
    assert sorted(out2) == sorted(x for x in range(10) for _ in range(x % 3))


def test_fan_out_feeds_every_branch():
    a: list = []
    b: list = []

    def build(env):
        s = env.from_batch(range(500)).map(Double)
        s.filter(lambda x: x % 4 == 0).sink(Collector, a)
        s.map(lambda x: -x, parallelism=2).sink(Collector, b)

    run(build)
    assert a == [x * 2 for x in range(500) if x * 2 % 4 == 0]
    assert sorted(b) == sorted(-x * 2 for x in range(500))


@pytest.mark.parametrize("source", [
    lambda: [1, 2, 3],                       # a function returning an iterable
    [1, 2, 3],                               # an iterable
    (i for i in (1, 2, 3)),                  # an iterator
])
def test_from_batch_accepts_iterables_and_callables(source):
    out: list = []
    run(lambda env: env.from_batch(source).sink(Collector, out))
    assert out == [1, 2, 3]


def test_map_returning_none_drops_the_record():
    out: list = []
    run(lambda env: env.from_batch(range(6)).map(lambda x: x if x % 2 else None).sink(Collector, out))
    assert out == [1, 3, 5]


def test_end_marker_never_reaches_user_code_and_close_runs_once_after_last_record():
    events: list = []
    lock = threading.Lock()

    class Watch(MapFunction):
        def execute(self, data):
            assert not isinstance(data, EndOfStream)
            with lock:
                events.append(("rec", self.ctx.parallel_index, data))
            return data

        def close(self):
            with lock:
                events.append(("close", self.ctx.parallel_index, None))

    class Last(SinkFunction):
        def execute(self, data):
            assert data is not None and not isinstance(data, EndOfStream)

    run(lambda env: env.from_batch(range(300)).map(Watch, parallelism=3).sink(Last))
    for idx in range(3):
        mine = [e for e in events if e[1] == idx]
        assert [e[0] for e in mine].count("close") == 1
        assert mine[-1][0] == "close"
    assert sorted(e[2] for e in events if e[0] == "rec") == list(range(300))


def test_parallel_index_and_batch_source_per_instance():
    class Shard(BatchFunction):
        def __init__(self):
            super().__init__()
            self.left = 3

        def execute(self):
            if not self.left:
                return None
            self.left -= 1
            return self.ctx.parallel_index

    out: list = []
    run(lambda env: env.from_batch(Shard).sink(Collector, out))
    assert out == [0, 0, 0]


def test_unbounded_source_returning_none_is_polled_again():
    from sage_jupyter import SourceFunction

    class Sometimes(SourceFunction):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def execute(self):
            self.calls += 1
            return self.calls if self.calls % 3 == 0 else None  # nothing right now

    out: list = []
    env = LocalEnvironment("poll")
    env.from_source(Sometimes).sink(Collector, out)
    job = env.submit(autostop=True, block=False)
    import time

    deadline = time.monotonic() + 5
    while len(out) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    job.stop()
    assert out[:10] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert job.state is JobState.STOPPED
