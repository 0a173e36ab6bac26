"""Progress totals, input backlog and peek on the thread backend (real threads, real channels)."""

from __future__ import annotations

import time

import pytest

from sage_jupyter import BatchFunction, JobState, LocalEnvironment, MapFunction, SinkFunction
from sage_jupyter.runtime import peek
from tests.pipelines import Collector, Numbers, Ticks

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Square(MapFunction):
    def execute(self, data):
        return data * data


class Sized:
    """An iterable with a length, not a list."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


class CountedBatch(BatchFunction):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.i = n, 0

    def __len__(self) -> int:
        return self.n

    def execute(self):
        if self.i >= self.n:
            return None
        self.i += 1
        return self.i


def letters():
    yield from "abcdef"


def source_total(source, *args, **submit) -> tuple[int | None, int]:
    """(TaskStatus.total, records emitted) of the source of a finished one-source job."""
    env = LocalEnvironment("totals")
    out: list = []
    env.from_batch(source, *args).map(lambda x: x).sink(Collector, out)
    job = env.submit(autostop=True, **submit)
    status = job.status()
    assert all(t.total is None for t in status.tasks if not t.stage.startswith("source"))
    src = status.task(status.tasks[0].stage)
    assert src.records_out == len(out)
    return src.total, src.records_out


@pytest.mark.parametrize(("source", "args", "expected"), [
    ([1, 2, 3, 4], (), 4),
    ((1, 2, 3), (), 3),
    (range(1000), (), 1000),
    (Sized(37), (), 37),
    (CountedBatch, (25,), 25),
    (letters, (), None),  # a generator has no length
    (Numbers, (12,), None),  # a BatchFunction without __len__
])
def test_total_of_a_source_is_its_length_when_it_has_one(source, args, expected):
    total, emitted = source_total(source, *args)
    assert total == expected
    assert emitted == (expected if expected is not None else emitted)


def test_max_records_caps_the_total_of_a_single_source():
    assert source_total(range(1000), max_records=300) == (300, 300)
    assert source_total(letters, max_records=4) == (4, 4)  # unknown length: the budget is the total
    assert source_total(range(10), max_records=300) == (10, 10)


def test_unbounded_source_has_no_total():
    env = LocalEnvironment("unbounded-total")
    env.from_source(Ticks, 0.001).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    try:
        wait_for(lambda: any(t.records_out for t in job.status().tasks), what="ticks")
        assert job.status().task("source:Ticks").total is None
    finally:
        job.stop()


class Gate(SinkFunction):
    """Takes one record every `pause` seconds: a bottleneck."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def execute(self, data) -> None:
        time.sleep(self.pause)


def test_queued_counts_the_records_waiting_before_a_slow_sink():
    env = LocalEnvironment("backlog")
    # map with parallelism 2 and a single sink: a channel in front of each, no chaining
    env.from_batch(range(30_000)).map(Square, parallelism=2).sink(Gate, 0.0002)
    job = env.submit(autostop=True, block=False)

    def sink_status():
        status = job.status()
        return status.task("sink:Gate") if status.tasks else None

    wait_for(lambda: (s := sink_status()) is not None and s.input_full and s.queued > 100, what="a full sink input")
    status = job.status()
    sink = status.task("sink:Gate")
    assert status.task("source:range").queued == 0 and not status.task("source:range").input_full
    # What waits there came out of the maps and was not taken by the sink yet.
    made = sum(t.records_out for t in status.tasks if t.stage == "map:Square")
    assert 0 < sink.queued <= made - sink.records_in
    assert job.wait(60) is JobState.FINISHED
    assert all(t.queued == 0 and not t.input_full for t in job.status().tasks)


def finished_job(records, *stages, parallelism: int = 1):
    env = LocalEnvironment("peek")
    out: list = []
    stream = env.from_batch(records)
    for stage in stages:
        stream = stream.map(stage, parallelism=parallelism)
    stream.sink(Collector, out)
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    return job, out


def test_peek_shows_the_newest_records_of_every_stage_newest_last():
    job, out = finished_job(range(100), Square)
    peeked = job.peek()
    assert list(peeked) == ["source:range", "map:Square", "sink:Collector"]
    assert peeked["source:range"] == ["95", "96", "97", "98", "99"]
    assert peeked["map:Square"] == [repr(x * x) for x in range(95, 100)]
    assert peeked["sink:Collector"] == [repr(x) for x in out[-5:]]
    assert job.peek(n=2) == {k: v[-2:] for k, v in peeked.items()}
    assert job.peek("map:Square", n=3) == {"map:Square": ["9409", "9604", "9801"]}
    assert job.peek(n=0) == {k: [] for k in peeked}
    many = job.peek("source:range", n=1000)["source:range"]
    assert many == [str(x) for x in range(100 - peek.PEEK_KEEP, 100)]  # bounded: PEEK_KEEP kept


def test_peek_merges_the_instances_of_a_parallel_stage():
    job, out = finished_job(range(5000), Square, parallelism=2)
    newest = job.peek("map:Square", n=6)["map:Square"]
    assert len(newest) == 6
    assert set(newest) <= {repr(x * x) for x in range(5000)}
    assert repr(out[-1]) in job.peek("sink:Collector", n=10)["sink:Collector"]


def test_peek_of_a_running_job_follows_its_records():
    env = LocalEnvironment("live-peek")
    env.from_source(Ticks, 0.002).map(Square).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    try:
        wait_for(lambda: len(job.peek("map:Square")["map:Square"]) == 5, what="five peeked records")
        first = [int(x) for x in job.peek()["map:Square"]]
        assert first == sorted(first) and all(round(x ** 0.5) ** 2 == x for x in first)
        wait_for(lambda: int(job.peek("map:Square")["map:Square"][-1]) > first[-1], what="newer records")
    finally:
        job.stop()


class Loud:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_peek_reprs_are_cut_at_200_characters():
    job, _ = finished_job(["x" * 1000], lambda s: s)
    (long_text,) = job.peek("map:lambda")["map:lambda"]
    assert len(long_text) == 200 and long_text.startswith("'xxx") and long_text.endswith("\u2026")
    long_list = peek.short_repr(list(range(10_000)))
    assert len(long_list) == 200 and long_list.startswith("[0, 1, 2, 3")
    assert peek.short_repr(Loud()).startswith("<Loud instance at 0x")  # a __repr__ that raises: the class
    assert peek.short_repr("short") == "'short'"
    assert peek.short_repr({"k": (1, 2)}) == "{'k': (1, 2)}"


@pytest.mark.parametrize("n", [-1, 1.5, True, "3", None])
def test_peek_refuses_a_bad_n(n):
    job, _ = finished_job([1, 2], Square)
    with pytest.raises(ValueError, match=r"peek\(n=.*\): n must be an integer >= 0"):
        job.peek(n=n)


def test_peek_names_the_known_stages_for_an_unknown_one():
    job, _ = finished_job([1, 2], Square)
    with pytest.raises(KeyError, match=r"no such stage; the stages are 'source:list', 'map:Square', "
                                       r"'sink:Collector'"):
        job.peek("map:Cube")


def test_sampling_switched_off_keeps_nothing(monkeypatch):
    monkeypatch.setattr(peek, "SAMPLING", False)
    job, out = finished_job(range(100), Square)
    assert len(out) == 100
    assert job.peek() == {"source:range": [], "map:Square": [], "sink:Collector": []}


def test_status_dict_carries_total_and_backlog():
    job, _ = finished_job(range(10), Square)
    status = job.status()
    wire = status.to_dict()
    assert wire["tasks"][0]["total"] == 10
    assert {"queued", "input_full"} <= set(wire["tasks"][0])
    assert type(status).from_dict(wire).tasks == status.tasks


def test_peek_keeps_big_records_as_reprs_not_themselves():
    megabyte = [bytes([i]) * 2**20 for i in range(3)]
    job, _ = finished_job(megabyte, lambda b: b)
    shown = job.peek("sink:Collector")["sink:Collector"]
    assert [s[:10] for s in shown] == ["b'\\x00\\x00", "b'\\x01\\x01", "b'\\x02\\x02"]
    assert all(len(s) == 200 and type(s) is str for s in shown)
    recent = peek.RecentRecords()
    for i in range(1000):
        recent.keep([i] * (i % 13 + 1), float(i))  # tails of every length: fewer than 2 x PEEK_KEEP kept
        assert sum(len(tail) for _, tail in recent._ring) < 2 * peek.PEEK_KEEP
    assert [text for _, text in recent.samples()] == ["999"] * peek.PEEK_KEEP


def test_the_newest_records_stay_exact_when_the_latest_batch_is_short():
    recent = peek.RecentRecords()
    recent.offer(list(range(100)))  # kept: the first batch starts the sampling period
    recent.offer(list(range(100, 200)))  # within the period: only noted as the latest
    recent.offer([200, 201, 202])  # short: the newest PEEK_KEEP span it and the one before
    assert [text for _, text in recent.samples()] == [repr(x) for x in range(193, 203)]
    recent.offer([203])  # a second short batch in a row
    assert [text for _, text in recent.samples()] == [repr(x) for x in range(194, 204)]
