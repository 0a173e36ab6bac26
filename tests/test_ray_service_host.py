"""A Ray service actor hosts the thread backend's `LocalServiceHost` (issue 9, one service
host), so issue 10's rules hold on Ray too: no hook runs after cleanup when a stop comes
during `setup()` (item 2), cleanup waits for timed-out calls still running in the actor and
the report lists those it could not wait for (item 6), one call at a time, and a service
calling itself through its actor does not deadlock.

The service runs in another process: it reports what happened by appending lines to a file,
and waits for a file to appear where the thread tests wait for an event."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

from sage_jupyter import BaseService, CleanupPolicy, JobState, LocalEnvironment, MapFunction, ServiceState
from sage_jupyter.runtime.ray.orphans import live_names
from tests.pipelines import Ticks
from tests.ray_pipelines import FileSink, read_sinks

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session", "no_thread_leak")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def note(log: str, event: str) -> None:
    with open(log, "a") as f:
        f.write(event + "\n")


def wait_file(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def no_actor_of(job) -> bool:
    return not [n for n in live_names() if job.job_id in n]


# ---- item 2: a stop while setup() runs ---------------------------------------------------

class SlowSetup(BaseService):
    def __init__(self, log: str, release: str) -> None:
        super().__init__()
        self.log, self.release = log, release

    def setup(self) -> None:
        note(self.log, "setup")
        Path(self.log + ".pid").write_text(str(os.getpid()))
        wait_file(self.release, 60)
        note(self.log, "setup returned")

    def start(self) -> None:
        note(self.log, "start")

    def stop(self) -> None:
        note(self.log, "stop")

    def cleanup(self) -> None:
        note(self.log, "cleanup")


def _submit_slow_setup(name: str, tmp_path: Path, policy: CleanupPolicy):
    log, release = tmp_path / "events", tmp_path / "release"
    env = LocalEnvironment(name, backend="ray")
    env.register_service("svc", SlowSetup, str(log), str(release), remote=True)
    env.from_source(Ticks).sink(lambda x: None)
    job = env.submit(block=False, cleanup=policy)
    wait_for(lambda: events(log) == ["setup"], what="setup() to begin in the actor")
    return job, log, release


def test_on_ray_a_setup_that_outlives_the_stop_is_reported_and_its_actor_killed(tmp_path):
    job, log, release = _submit_slow_setup("ray_slow_setup", tmp_path,
                                           CleanupPolicy(graceful_timeout=0.2, kill_timeout=0.5))
    assert job.stop(timeout=30) is JobState.STOPPED
    report = job.cleanup_report
    svc = report["svc"]
    assert not report.ok and svc.killed is True
    assert svc.setup is not None and svc.setup.outcome == "timeout"
    assert "setup() still running" in svc.describe() and "actor was killed" in svc.describe()
    # Ray shows the actor dead a moment before its process exits: wait for the process, then
    # release setup() (were it alive, it would now note "setup returned" and go on)
    wait_for(lambda: not process_alive(int(Path(f"{log}.pid").read_text())), what="the actor's process to exit")
    release.touch()
    time.sleep(0.3)
    assert events(log) == ["setup"]  # killed inside setup(): no start(), stop() or cleanup()
    assert job.status().service("svc").state is ServiceState.FAILED
    assert no_actor_of(job)


def test_on_ray_a_setup_that_returns_during_the_stop_is_cleaned_after_it_and_start_never_runs(tmp_path):
    job, log, release = _submit_slow_setup("ray_late_setup", tmp_path,
                                           CleanupPolicy(graceful_timeout=5, kill_timeout=0.5))
    job.stop(wait=False)
    wait_for(lambda: job.status().service("svc").state is ServiceState.STOPPING, timeout=60,
             what="the cleanup to wait for setup()")
    release.touch()
    assert job.wait(60) is JobState.STOPPED
    assert events(log) == ["setup", "setup returned", "cleanup"]
    svc = job.cleanup_report["svc"]
    assert svc.ok and svc.killed is True and svc.setup.outcome == "late" and svc.stop.outcome == "skipped"
    assert "cleaned after it returned" in svc.describe()
    assert job.status().service("svc").state is ServiceState.CLEANED
    assert no_actor_of(job)


# ---- item 6: a call that outlived its caller's timeout -----------------------------------

class SlowCalls(BaseService):
    def __init__(self, log: str, release: str | None = None) -> None:
        super().__init__()
        self.log, self.release = log, release

    def slow(self) -> str:
        Path(self.log + ".pid").write_text(str(os.getpid()))
        note(self.log, "call began")
        if self.release is not None:
            wait_file(self.release, 60)
        else:
            time.sleep(0.5)
        note(self.log, "call ended")
        return "late"

    def cleanup(self) -> None:
        note(self.log, "cleanup")


class GivesUpOnACall(MapFunction):
    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def execute(self, data):
        if data == 0:
            try:
                self.call_service("svc", method="slow", timeout=0.05)
            except TimeoutError as exc:
                assert "did not answer within 0.05 s" in str(exc)
            else:
                raise AssertionError("the call should have timed out")
            # on a busy machine the call may reach the actor late: the job goes on once it runs there
            deadline = time.monotonic() + 30
            while "call began" not in events(Path(self.log)) and time.monotonic() < deadline:
                time.sleep(0.01)
        return data


def test_on_ray_cleanup_waits_for_a_timed_out_call_before_running_cleanup(tmp_path):
    log = tmp_path / "events"
    env = LocalEnvironment("ray_late_call", backend="ray")
    env.register_service("svc", SlowCalls, str(log), remote=True)
    env.from_batch(range(3)).map(GivesUpOnACall, str(log)).sink(lambda x: None)
    env.submit(autostop=True)
    assert events(log) == ["call began", "call ended", "cleanup"]
    report = env.job.cleanup_report
    assert report.ok and report.calls_left_running == ()


def test_on_ray_a_call_still_running_after_the_graceful_timeout_is_in_the_report(tmp_path):
    log, release = tmp_path / "events", tmp_path / "release"
    env = LocalEnvironment("ray_stuck_call", backend="ray")
    env.register_service("svc", SlowCalls, str(log), str(release), remote=True)
    env.from_batch(range(3)).map(GivesUpOnACall, str(log)).sink(lambda x: None)
    env.submit(autostop=True, cleanup=CleanupPolicy(graceful_timeout=0.2, kill_timeout=0.5))
    report = env.job.cleanup_report
    assert report.calls_left_running == ("svc.slow()",) and not report.ok
    assert report["svc"].killed is True  # the call died with its actor: nothing is left running
    # (Ray shows the actor dead a moment before its process exits: release the call only then)
    wait_for(lambda: not process_alive(int(Path(f"{log}.pid").read_text())), what="the actor's process to exit")
    release.touch()
    time.sleep(0.3)
    assert events(log) == ["call began", "cleanup"]
    assert no_actor_of(env.job)


# ---- the host's rules in an actor: one call at a time, reentrant self-calls --------------

class Counter(BaseService):
    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log
        self.total = 0
        self.active = 0
        self.overlaps = 0

    def add(self, x: int) -> int:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        time.sleep(0.001)  # a window for a second call to overlap, were calls not serialised
        self.total += x
        self.active -= 1
        return self.total

    def add_twice(self, x: int) -> int:
        self.call_service["counter"].add(x)  # back into this service, through its own actor
        return self.call_service["counter"].add(x)

    def cleanup(self) -> None:
        note(self.log, f"total={self.total} overlaps={self.overlaps}")


class AddsTwice(MapFunction):
    def execute(self, data: int) -> int:
        self.call_service["counter"].add_twice(data)
        return data


def test_on_ray_calls_from_parallel_tasks_never_overlap_and_a_self_call_does_not_deadlock(tmp_path):
    log = tmp_path / "events"
    env = LocalEnvironment("ray_serialised", backend="ray")
    env.register_service("counter", Counter, str(log), remote=True)
    env.from_batch(range(100)).map(AddsTwice, parallelism=2).sink(FileSink, str(tmp_path))
    job = env.submit(block=False, autostop=True)
    assert job.wait(120) is JobState.FINISHED
    assert sorted(r for records in read_sinks(tmp_path).values() for r in records) == list(range(100))
    assert events(log) == [f"total={2 * sum(range(100))} overlaps=0"]
    assert job.status().service("counter").calls == 300  # 100 add_twice, each calling add twice
    assert job.cleanup_report.ok
