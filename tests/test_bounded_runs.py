"""Bounded runs, `submit(max_records=, max_duration=)`: the sources end as if exhausted, so the
job FINISHES, every emitted record reaches the sinks and autostop cleans the services. On
threads, on Ray actors and through a real JobManager."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from sage_jupyter import JobState, LocalEnvironment, SourceFunction
from sage_jupyter.jobmanager.protocol import ProtocolError, parse_options
from sage_jupyter.runtime.job import TaskState
from tests.pipelines import Collector, Recorder, Ticks
from tests.ray_pipelines import FileSink, Journal, SlowSink, journal, live_actors, read_sinks, wait_for


class Count(SourceFunction):
    """Unbounded and fast: 1, 2, 3, ..."""

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.i = start

    def execute(self):
        self.i += 1
        return self.i


def sources_out(job) -> int:
    return sum(t.records_out for t in job.status().tasks if t.stage.startswith("source"))


def assert_finished_as_if_exhausted(job) -> None:
    assert job.state is JobState.FINISHED
    assert job.cleanup_report is not None and job.cleanup_report.reason == "finished" and job.cleanup_report.ok
    assert all(t.state is TaskState.FINISHED for t in job.status().tasks)


# ---- threads ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_thread_leak")
class TestThreads:
    def test_max_records_is_exact_across_two_sources(self):
        events: list = []
        out: list = []
        env = LocalEnvironment("budget")
        env.register_service("svc", Recorder, events)
        env.from_source(Count).connect(env.from_source(Count, 10**9)).sink(Collector, out)
        job = env.submit(autostop=True, max_records=5000)
        assert_finished_as_if_exhausted(job)
        assert len(out) == 5000 == sources_out(job) == job.status().records_in
        assert len(set(out)) == 5000  # no record twice
        assert events[-2:] == [("svc", "stop"), ("svc", "cleanup")]
        assert job.cleanup_report["svc"].cleaned

    def test_a_source_with_fewer_records_leaves_its_share_to_the_others(self):
        out: list = []
        env = LocalEnvironment("uneven")
        env.from_batch(range(3)).connect(env.from_source(Count, 100)).sink(Collector, out)
        job = env.submit(autostop=True, max_records=777)
        assert_finished_as_if_exhausted(job)
        assert len(out) == 777 == sources_out(job)

    def test_sources_with_fewer_records_than_the_budget_emit_all_of_them(self):
        out: list = []
        env = LocalEnvironment("short")
        env.from_batch(range(30)).connect(env.from_batch(range(100, 140))).sink(Collector, out)
        job = env.submit(autostop=True, max_records=10_000)
        assert_finished_as_if_exhausted(job)
        assert sorted(out) == [*range(30), *range(100, 140)]

    def test_max_records_cuts_a_batch_source_and_it_still_finishes(self):
        out: list = []
        env = LocalEnvironment("cut-batch")
        env.from_batch(range(100_000)).map(lambda x: x + 1).sink(Collector, out)
        job = env.submit(autostop=True, max_records=1234)
        assert_finished_as_if_exhausted(job)
        assert out == list(range(1, 1235))
        assert job.status().task("source:range").total == 1234

    def test_max_records_zero_emits_nothing(self):
        out: list = []
        env = LocalEnvironment("zero")
        env.from_source(Count).sink(Collector, out)
        job = env.submit(autostop=True, max_records=0)
        assert_finished_as_if_exhausted(job)
        assert out == []

    def test_max_duration_ends_an_unbounded_source(self):
        events: list = []
        out: list = []
        env = LocalEnvironment("duration")
        env.register_service("svc", Recorder, events)
        env.from_source(Ticks, 0.001).map(lambda x: -x).sink(Collector, out)
        job = env.submit(autostop=True, max_duration=0.3)
        assert_finished_as_if_exhausted(job)
        assert 0 < len(out) == sources_out(job)
        assert out == [-x for x in range(1, len(out) + 1)]  # in order, none lost
        assert events[-1] == ("svc", "cleanup")

    def test_without_autostop_a_bounded_job_ends_its_tasks_and_keeps_its_services(self):
        events: list = []
        env = LocalEnvironment("keep-services")
        env.register_service("svc", Recorder, events)
        env.from_source(Count).sink(lambda x: None)
        job = env.submit(autostop=False, block=False, max_records=100)
        assert job.wait(30) is JobState.RUNNING  # tasks ended, services up: as for an exhausted batch
        assert sources_out(job) == 100 and ("svc", "cleanup") not in events
        assert job.stop() is JobState.STOPPED and events[-1] == ("svc", "cleanup")

    @pytest.mark.parametrize("value", [-1, 1.5, True, "10", math.nan])
    def test_bad_max_records_is_refused_naming_it(self, value):
        env = LocalEnvironment("bad-records")
        env.from_batch([1]).sink(lambda x: None)
        with pytest.raises(ValueError, match=r"submit\(max_records=.*\): max_records must be an integer >= 0"):
            env.submit(autostop=True, max_records=value)
        assert env.submit(autostop=True).state is JobState.FINISHED  # nothing was submitted before

    @pytest.mark.parametrize("value", [-0.5, math.inf, math.nan, "1", True])
    def test_bad_max_duration_is_refused_naming_it(self, value):
        env = LocalEnvironment("bad-duration")
        env.from_batch([1]).sink(lambda x: None)
        with pytest.raises(ValueError, match=r"submit\(max_duration=.*\): max_duration must be a finite number"):
            env.submit(autostop=True, max_duration=value)
        assert env.job is None

    def test_stop_still_stops_a_bounded_run(self):
        env = LocalEnvironment("stop-bounded")
        env.from_source(Ticks, 0.01).sink(lambda x: None)
        job = env.submit(autostop=True, block=False, max_records=10**9, max_duration=3600)
        threading.Event().wait(0.1)
        assert job.stop() is JobState.STOPPED


# ---- Ray --------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
class TestRay:
    def test_max_records_is_exact_across_two_source_actors(self, tmp_path):
        env = LocalEnvironment("ray-budget", backend="ray")
        env.from_batch(range(50)).connect(env.from_source(Count, 1000)).sink(FileSink, str(tmp_path))
        job = env.submit(autostop=True, max_records=3000)
        assert_finished_as_if_exhausted(job)
        records = read_sinks(tmp_path)[0]
        assert len(records) == 3000 == len(set(records)) == sources_out(job)
        assert job.status().task("source:range").total == 50
        assert live_actors(job) == []  # the task actors and the budget actor are gone

    def test_without_autostop_the_budget_actor_goes_with_the_tasks(self, tmp_path):
        env = LocalEnvironment("ray-budget-keep", backend="ray")
        env.from_source(Count).connect(env.from_source(Count, 10**6)).sink(FileSink, str(tmp_path))
        job = env.submit(autostop=False, block=False, max_records=500)
        assert job.wait(120) is JobState.RUNNING  # its tasks ended; a job without autostop waits for stop()
        assert len(read_sinks(tmp_path)[0]) == 500
        wait_for(lambda: live_actors(job) == [], what="the task and budget actors gone before stop()")
        assert job.stop() is JobState.STOPPED

    def test_max_duration_on_ray_finishes_and_cleans_the_service(self, tmp_path):
        log = tmp_path / "journal"
        env = LocalEnvironment("ray-duration", backend="ray")
        env.register_service("journal", Journal, str(log))
        env.from_source(Count).sink(FileSink, str(tmp_path))  # one chained actor
        job = env.submit(autostop=True, max_duration=0.5)
        assert_finished_as_if_exhausted(job)
        records = read_sinks(tmp_path)[0]
        assert 0 < len(records) == sources_out(job) and records == list(range(1, len(records) + 1))
        assert [e["event"] for e in journal(log)][-2:] == ["stop", "cleanup"]
        # the actor's last samples came with its end: peek shows the last records
        assert job.peek("sink:FileSink", n=2) == {"sink:FileSink": [repr(r) for r in records[-2:]]}
        assert live_actors(job) == []

    def test_backlog_total_and_live_peek_come_with_the_actors_polls(self, tmp_path):
        env = LocalEnvironment("ray-backlog", backend="ray")
        env.from_batch(range(40_000)).sink(SlowSink, 10_000, parallelism=2)  # 3 actors; the source waits on each sink
        job = env.submit(autostop=True, block=False)

        def sinks():
            return [t for t in job.status().tasks if t.stage == "sink:SlowSink"]

        wait_for(lambda: any(t.input_full and t.queued > 0 for t in sinks()), what="a full producer window")
        assert job.status().task("source:range").total == 40_000
        live = job.peek("source:range", n=3)["source:range"]
        assert len(live) == 3 and all(0 <= int(x) < 40_000 for x in live)
        assert job.wait(120) is JobState.FINISHED
        assert sum(t.records_in for t in sinks()) == 40_000
        assert all(t.queued == 0 and not t.input_full for t in sinks())
        assert job.peek("source:range", n=1) == {"source:range": ["39999"]}


# ---- through a JobManager ---------------------------------------------------------------


class AppendTo:
    """A plain sink callable writing records to a file (in the daemon's process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, x) -> None:
        with open(self.path, "a") as f:
            f.write(f"{x}\n")


def remote_env(daemon, name: str):
    from sage_jupyter import RemoteEnvironment

    return RemoteEnvironment(name, port=daemon.port, token=daemon.token)


def test_remote_max_records_is_exact_and_finishes(daemon, tmp_path):
    out = tmp_path / "records"
    events = tmp_path / "journal"
    env = remote_env(daemon, "remote-budget")
    env.register_service("journal", Journal, str(events))
    env.from_source(Count).connect(env.from_batch(range(20))).sink(AppendTo(str(out)))
    job = env.submit(autostop=True, max_records=400)
    assert_finished_as_if_exhausted(job)
    assert len(Path(out).read_text().split()) == 400 == sources_out(job)
    assert job.status().task("source:range").total == 20  # the wire carries the totals
    assert [e["event"] for e in journal(events)][-1] == "cleanup"
    env.close()


def test_remote_max_duration_and_peek(daemon, tmp_path):
    out = tmp_path / "records"
    env = remote_env(daemon, "remote-duration")
    env.from_source(Ticks, 0.001).map(lambda x: x * 3).sink(AppendTo(str(out)))
    job = env.submit(autostop=True, max_duration=0.3)
    assert_finished_as_if_exhausted(job)
    written = [int(x) for x in Path(out).read_text().split()]
    assert written and len(written) == sources_out(job)
    peeked = job.peek(n=3)
    assert list(peeked) == ["source:Ticks", "map:lambda", "sink:AppendTo"]
    assert peeked["sink:AppendTo"] == [repr(x) for x in written[-3:]]
    assert job.peek("map:lambda", n=1) == {"map:lambda": [repr(written[-1])]}
    with pytest.raises(KeyError, match="no such stage; the stages are 'source:Ticks'"):
        job.peek("map:Nope")
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        job.peek(n=-2)
    env.close()


def test_remote_submit_refuses_bad_limits_before_sending(daemon):
    env = remote_env(daemon, "remote-bad")
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(ValueError, match=r"max_records must be an integer >= 0"):
        env.submit(autostop=True, max_records=-5)
    with pytest.raises(ValueError, match=r"max_duration must be a finite number"):
        env.submit(autostop=True, max_duration=math.inf)
    env.close()


@pytest.mark.parametrize(("field", "value"), [("max_records", -1), ("max_records", 2.5), ("max_records", True),
                                              ("max_duration", -1), ("max_duration", "soon")])
def test_the_jobmanager_refuses_bad_limits_in_job_options(field, value):
    with pytest.raises(ProtocolError) as info:
        parse_options({"name": "x", field: value})
    assert info.value.status == 400 and field in info.value.message
