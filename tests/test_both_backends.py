"""The core semantics, run on threads and on Ray actors: same pipeline, same answers."""

from __future__ import annotations

import os

import pytest

from ray_pipelines import (Boom, CallJournal, FileSink, Journal, journal, live_actors, read_sinks,
                           wait_for)
from tests.pipelines import Ticks
from sage_jupyter import JobState, LocalEnvironment, PipelineError
from sage_jupyter.runtime.policy import CleanupPolicy


@pytest.fixture(params=["thread", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request):
    if request.param == "ray":
        request.getfixturevalue("ray_session")
    return request.param


def own_frames(traceback_text: str) -> list[str]:
    """The traceback's frame lines that point into sage_jupyter's own files."""
    import sage_jupyter

    package = os.path.dirname(sage_jupyter.__file__)
    return [line for line in traceback_text.splitlines() if line.strip().startswith(f'File "{package}')]


def assert_no_live_actors(job, backend: str) -> None:
    if backend == "ray":
        assert live_actors(job) == [], "actors still alive after the job ended"


def test_exactly_once_through_chained_stages(backend, tmp_path, no_thread_leak):
    env = LocalEnvironment("once", backend=backend)
    (env.from_batch(range(3000))
        .map(lambda x: x * 3)
        .filter(lambda x: x % 2 == 0)
        .flatmap(lambda x: [x, -x] if x % 4 == 0 else [x])
        .sink(FileSink, str(tmp_path)))
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    got = read_sinks(tmp_path)[0]
    expected = []
    for x in range(3000):
        y = x * 3
        if y % 2 == 0:
            expected += [y, -y] if y % 4 == 0 else [y]
    assert got == expected  # every record once, in order along the single-instance path
    assert job.status().records_in == len(expected)
    assert_no_live_actors(job, backend)


def test_keyby_routes_the_record_itself(backend, tmp_path, no_thread_leak):
    env = LocalEnvironment("keyed", backend=backend)
    env.from_batch(range(4000)).keyby(lambda x: x % 5).sink(FileSink, str(tmp_path), parallelism=2)
    env.submit(autostop=True)
    per_instance = read_sinks(tmp_path)
    assert sorted(per_instance) == [0, 1]
    assert sorted(r for rs in per_instance.values() for r in rs) == list(range(4000))
    for records in per_instance.values():
        assert all(isinstance(r, int) for r in records)  # not (key, value) pairs
        assert records == sorted(records)  # one producer: its order is kept
    owner = {k: {i for i, rs in per_instance.items() if any(r % 5 == k for r in rs)} for k in range(5)}
    assert all(len(instances) == 1 for instances in owner.values()), owner
    assert_no_live_actors(env.job, backend)


def test_autostop_cleans_services_and_reports(backend, tmp_path, no_thread_leak):
    log = tmp_path / "journal.jsonl"
    env = LocalEnvironment("autostop", backend=backend)
    env.register_service("journal", Journal, str(log))

    env.from_batch(range(50)).map(CallJournal).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=True)
    report = job.cleanup_report
    assert job.state is JobState.FINISHED and report.reason == "finished" and report.ok
    entry = report["journal"]
    assert entry.stop.outcome == "ok" and entry.cleanup.outcome == "ok"
    assert [e["event"] for e in journal(log)] == ["stop", "cleanup"]
    assert journal(log)[-1]["calls"] == 50
    assert read_sinks(tmp_path)[0] == [x + 1 for x in range(50)]
    if backend == "ray":
        assert entry.kind == "ray" and entry.killed is True
        assert job.status().service("journal").actor_id
    else:
        assert entry.kind == "thread" and entry.killed is None
    assert_no_live_actors(job, backend)


def test_stage_failure_raises_pipeline_error_naming_it(backend, tmp_path, no_thread_leak):
    env = LocalEnvironment("failing", backend=backend)
    env.from_batch(range(100)).map(Boom, 40).map(lambda x: x + 1).sink(FileSink, str(tmp_path))
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    err = info.value
    assert "map:Boom" in err.stage and "(instance 0)" in err.stage
    assert "ZeroDivisionError: record 40 in pid" in err.traceback
    assert "raise ZeroDivisionError(" in err.traceback  # the user's own line
    # one chained task: only the operator that raised is FAILED, the rest of its chain STOPPED
    states = {t.stage: t.state.value for t in env.job.status().tasks}
    assert states == {"source:range": "STOPPED", "map:Boom": "FAILED", "map:lambda": "STOPPED",
                      "sink:FileSink": "STOPPED"}
    assert [t.stage for t in env.job.status().tasks if t.error is not None] == ["map:Boom"]
    assert own_frames(err.traceback) == [] and own_frames(err.error.full_traceback) != []
    # on Ray the traceback comes from the actor's process
    assert (f"in pid {os.getpid()}" in err.traceback) is (backend == "thread")
    assert env.job.state is JobState.FAILED
    assert env.job.cleanup_report.reason == "failed"
    assert_no_live_actors(env.job, backend)


def test_stop_ends_an_unbounded_source_and_drains(backend, tmp_path, no_thread_leak):
    env = LocalEnvironment("ticking", backend=backend)
    env.from_source(Ticks, 0.002).sink(FileSink, str(tmp_path))
    job = env.submit(autostop=True, block=False, cleanup=CleanupPolicy(graceful_timeout=5.0))
    wait_for(lambda: job.status().records_out > 20, what="records to flow")
    assert job.stop(timeout=60) is JobState.STOPPED
    assert job.cleanup_report.reason == "stopped"
    records = read_sinks(tmp_path)[0]  # close() ran: the stop drained gracefully
    assert records == list(range(1, len(records) + 1)) and len(records) > 20
    assert job.status().task(job.status().tasks[0].name).state.value == "STOPPED"
    assert_no_live_actors(job, backend)
