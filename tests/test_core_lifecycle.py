"""Job life cycle: failure, stop, honest terminal states, observers, threads, interpreter exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sage_jupyter import (CleanupPolicy, JobState, LocalEnvironment, MapFunction, PipelineError,
                          ServiceState, TaskState)
from tests.conftest import sage_threads
from tests.pipelines import Collector, Double, Recorder, Ticks

pytestmark = pytest.mark.usefixtures("no_thread_leak")


class Boom(MapFunction):
    def execute(self, data):
        if data == 50:
            raise ValueError("bad record 50")
        return data


def test_failing_stage_fails_the_job_names_the_stage_and_cleans_services():
    events: list = []
    env = LocalEnvironment("fails")
    env.register_service("svc", Recorder, events)
    env.from_batch(range(1000)).map(Boom, parallelism=2).sink(Collector, [])
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    err = info.value
    assert err.stage.startswith("stage 'map:Boom' (instance ")
    assert "ValueError: bad record 50" in str(err)
    assert 'raise ValueError("bad record 50")' in err.traceback  # the original traceback
    job = env.job
    assert job.state is JobState.FAILED
    assert events[-2:] == [("svc", "stop"), ("svc", "cleanup")]
    assert job.cleanup_report.reason == "failed"
    assert any(t.state is TaskState.FAILED and t.error for t in job.status().tasks)


def test_failure_without_blocking_raises_from_wait():
    env = LocalEnvironment("fails2")
    env.from_batch(range(100)).map(Boom).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    with pytest.raises(PipelineError, match="map:Boom"):
        job.wait(10)
    assert job.status().error.type == "ValueError"


def test_stop_of_an_unbounded_source_drains_then_cleans():
    events: list = []
    out: list = []
    env = LocalEnvironment("stream")
    env.register_service("svc", Recorder, events)
    env.from_source(Ticks, 0.001).map(Double).sink(Collector, out)
    job = env.submit(autostop=True, block=False)
    deadline = time.monotonic() + 5
    while len(out) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state is JobState.RUNNING
    state = job.stop()
    assert state is JobState.STOPPED
    produced = job.status().task("source:Ticks").records_out
    assert len(out) == produced  # what was produced before the stop was drained, not lost
    assert events[-1] == ("svc", "cleanup")
    assert job.cleanup_report.reason == "stopped"


def test_stop_escalates_when_a_stage_ignores_it():
    release = threading.Event()

    class Stuck(MapFunction):
        def execute(self, data):
            release.wait(10)
            return data

    env = LocalEnvironment("stuck")
    env.register_service("svc", Recorder, [])
    env.from_source(Ticks, 0.001).map(Stuck).sink(lambda x: None)
    job = env.submit(block=False)
    time.sleep(0.1)
    t0 = time.monotonic()
    job._dispatcher.policy = CleanupPolicy(graceful_timeout=0.2, kill_timeout=0.2)
    assert job.stop() is JobState.STOPPED
    assert time.monotonic() - t0 < 3
    assert job.cleanup_report.tasks_left_running  # honest: the stuck thread is named
    assert job.status().service("svc").state is ServiceState.CLEANED
    release.set()


def test_terminal_state_is_published_only_after_cleanup():
    seen: list = []
    go = threading.Event()

    class SlowClean(Recorder):
        def cleanup(self):
            time.sleep(0.05)

    env = LocalEnvironment("honest")
    env.register_service("svc", SlowClean, [])
    env.from_batch(lambda: (go.wait(5) and i for i in range(10))).sink(lambda x: None)
    job = env.submit(autostop=True, block=False)
    job.subscribe(lambda snap: seen.append(snap))
    go.set()
    job.wait(5)
    assert seen[0].state is JobState.RUNNING
    assert any(s.state is JobState.STOPPING for s in seen)
    finals = [s for s in seen if s.state.terminal]
    assert finals and finals[0].cleanup_report is not None
    assert all(svc.state is ServiceState.CLEANED for svc in finals[0].services)
    assert [s.state for s in seen].count(JobState.FINISHED) >= 1


def test_status_snapshot_counts_records_and_describes_the_graph():
    env = LocalEnvironment("status")
    env.register_service("svc", Recorder, [])
    env.from_batch(range(100)).map(Double, parallelism=2).filter(lambda x: x % 4 == 0).sink(lambda x: None)
    job = env.submit(autostop=True)
    s = job.status()
    assert s.state is JobState.FINISHED and s.backend == "thread" and s.autostop
    assert s.task("source:range").records_out == 100
    assert sum(t.records_in for t in s.tasks if t.stage == "map:Double") == 100
    assert s.task("filter:lambda").records_out == 50
    assert s.records_in == 50
    assert [st.name for st in s.stages] == ["source:range", "map:Double", "filter:lambda", "sink:lambda"]
    assert s.stages[1].parallelism == 2 and s.stages[2].upstream == ("map:Double",)
    assert s.elapsed_s >= 0 and s.ended_at is not None
    d = s.to_dict()
    assert d["state"] == "FINISHED" and d["cleanup_report"]["reason"] == "finished"
    # the derived fields travel in the payload, so views work nothing out
    assert (d["terminal"], d["records_in"], d["records_out"], d["elapsed_s"]) == (True, 50, 100, s.elapsed_s)


def test_wait_timeout_raises_and_threads_return_to_baseline():
    before = len(sage_threads())
    env = LocalEnvironment("wait")
    env.from_source(Ticks, 0.01).sink(lambda x: None)
    job = env.submit(block=False)
    with pytest.raises(TimeoutError, match="did not end within 0.05 s"):
        job.wait(0.05)
    assert len(sage_threads()) > before
    job.stop()
    assert len(sage_threads()) == before


def test_env_close_stops_and_cleans():
    events: list = []
    with LocalEnvironment("ctx") as env:
        env.register_service("svc", Recorder, events)
        env.from_source(Ticks, 0.005).sink(lambda x: None)
        job = env.submit(autostop=True, block=False)
    assert job.state is JobState.STOPPED and events[-1] == ("svc", "cleanup")


def test_interpreter_exit_stops_live_jobs_within_two_seconds(tmp_path):
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(f"""
        import time
        from sage_jupyter import LocalEnvironment, BaseService
        from tests.pipelines import Ticks

        class Svc(BaseService):
            def cleanup(self):
                open({str(marker)!r}, "w").write("cleaned")

        env = LocalEnvironment("exit")
        env.register_service("svc", Svc)
        env.from_source(Ticks, 0.001).sink(lambda x: None)
        env.submit(autostop=True, block=False)
        time.sleep(0.2)
        print("leaving", flush=True)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert "leaving" in proc.stdout
    assert marker.read_text() == "cleaned"
    assert took < 10  # start-up plus the 2 s exit budget, with room for a loaded machine


def test_importing_starts_nothing():
    code = ("import threading, sys; import sage_jupyter; "
            "assert threading.active_count() == 1, threading.enumerate(); "
            "assert 'ray' not in sys.modules; print('clean')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "clean", proc.stderr


def test_a_raising_constructor_is_named():
    class NoInit(MapFunction):
        def __init__(self):
            super().__init__()
            raise RuntimeError("model file missing")

        def execute(self, data):
            return data

    env = LocalEnvironment("ctor")
    env.from_batch([1]).map(Double).map(NoInit).sink(lambda x: None)
    with pytest.raises(PipelineError, match="stage 'map:NoInit' \\(instance 0\\).*model file missing"):
        env.submit(autostop=True)


def test_stop_does_not_wait_forever_for_a_hanging_setup():
    release = threading.Event()
    events: list = []

    class SlowSetup(Recorder):
        def setup(self):
            release.wait(10)

    env = LocalEnvironment("slow-setup")
    env.register_service("first", Recorder, events, "first")
    env.register_service("slow", SlowSetup, events, "slow")
    env.from_batch(range(10)).sink(lambda x: None)
    job = env.submit(autostop=True, block=False,
                     cleanup=CleanupPolicy(graceful_timeout=0.3, kill_timeout=0.3))
    time.sleep(0.1)
    t0 = time.monotonic()
    assert job.stop() is JobState.STOPPED
    assert time.monotonic() - t0 < 5
    assert ("first", "cleanup") in events
    assert all(t.records_out == 0 for t in job.status().tasks)  # no task started after the stop
    release.set()
    time.sleep(0.1)  # the starter returns from setup() and must not launch anything
    assert job.state is JobState.STOPPED and job.status().tasks == ()
