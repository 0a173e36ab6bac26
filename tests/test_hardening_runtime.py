"""Runtime hardening (issue 10, items 1-9): bad budgets, stops during setup, copied function
instances, honest waits, blame on the right stage, service calls outliving their caller,
declarations that cannot work, stop from inside a job, byte-bounded channels."""

from __future__ import annotations

import math
import threading
import time
from typing import ClassVar

import pytest

from sage_jupyter import (
    BaseService,
    CleanupPolicy,
    FlatMapFunction,
    JobState,
    LocalEnvironment,
    MapFunction,
    PipelineError,
    ServiceState,
    SinkFunction,
)
from sage_jupyter.runtime.channels import Channel, batch_bytes
from sage_jupyter.runtime.handle import JobHandleLike
from tests.conftest import sage_threads
from tests.pipelines import Collector, Ticks

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def join_starter(job_name: str) -> None:
    """The starter thread may still sit in a service's setup() after the job ended."""
    for t in sage_threads():
        if t.name == f"sage:{job_name}:start":
            t.join(10)


# ---- 1. cleanup budgets -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["graceful_timeout", "kill_timeout"])
@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0, True])
def test_cleanup_policy_refuses_non_finite_negative_or_bool_budgets(field, value):
    with pytest.raises(ValueError, match=f"CleanupPolicy.{field} must be a finite number >= 0"):
        CleanupPolicy(**{field: value})


def test_a_bad_budget_in_a_config_dict_is_refused_at_the_environment_and_at_submit():
    with pytest.raises(ValueError, match="kill_timeout must be a finite number"):
        LocalEnvironment("bad", config={"cleanup": {"kill_timeout": math.inf}})
    env = LocalEnvironment("bad2")
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(ValueError, match="graceful_timeout must be a finite number"):
        env.submit(autostop=True, cleanup={"graceful_timeout": math.nan})
    assert env.job is None  # nothing started


# ---- 2. stop while setup() runs -----------------------------------------------------------

class SlowSetup(BaseService):
    def __init__(self, events: list, release: threading.Event) -> None:
        super().__init__()
        self.events, self.release = events, release

    def setup(self) -> None:
        self.events.append("setup")
        self.release.wait(30)
        self.events.append("setup returned")

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")

    def cleanup(self) -> None:
        self.events.append("cleanup")


def _submit_slow_setup(name: str, events: list, release: threading.Event, policy: CleanupPolicy):
    env = LocalEnvironment(name)
    env.register_service("svc", SlowSetup, events, release)
    env.from_source(Ticks).sink(lambda x: None)
    job = env.submit(block=False, cleanup=policy)
    wait_for(lambda: events == ["setup"], what="setup() to begin")
    return job


def test_a_setup_that_outlives_the_stop_is_left_running_and_no_hook_runs_after_it():
    events: list = []
    release = threading.Event()
    job = _submit_slow_setup("slow_setup", events, release, CleanupPolicy(graceful_timeout=0.1, kill_timeout=0.1))
    assert job.stop(timeout=20) is JobState.STOPPED
    report = job.cleanup_report
    svc = report["svc"]
    assert not report.ok and not svc.ok
    assert svc.setup is not None and svc.setup.outcome == "timeout"
    assert "setup() still running" in svc.describe() and "left running" in svc.describe()
    release.set()  # setup() returns now, after the job ended
    join_starter("slow_setup")
    assert events == ["setup", "setup returned"]  # no start(), stop() or cleanup() after it
    final = job.status()
    assert final.state is JobState.STOPPED and final.service("svc").state is ServiceState.FAILED


def test_a_setup_that_returns_during_the_stop_is_cleaned_after_it_and_start_never_runs():
    events: list = []
    release = threading.Event()
    job = _submit_slow_setup("late_setup", events, release, CleanupPolicy(graceful_timeout=20, kill_timeout=0.1))
    job.stop(wait=False)
    # the cleanup is waiting for setup() (the service shows "stopping"): let setup() return now
    wait_for(lambda: job.status().service("svc").state is ServiceState.STOPPING, timeout=60,
             what="the cleanup to wait for setup()")
    release.set()
    assert job.wait(30) is JobState.STOPPED
    assert events == ["setup", "setup returned", "cleanup"]
    svc = job.cleanup_report["svc"]
    assert svc.ok and svc.setup.outcome == "late" and svc.stop.outcome == "skipped"
    assert "cleaned after it returned" in svc.describe()
    assert job.status().service("svc").state is ServiceState.CLEANED
    join_starter("late_setup")


# ---- 3. a function instance with parallelism > 1 -----------------------------------------

class WhereAmI(MapFunction):
    closed: ClassVar[list] = []

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def execute(self, data):
        self.seen.add(self.ctx.parallel_index)
        return (self.ctx.parallel_index, id(self))

    def close(self) -> None:
        WhereAmI.closed.append((id(self), frozenset(self.seen)))


class CollectTwice(FlatMapFunction):
    def execute(self, data):
        self.collect(data)
        self.collect(data)


def test_an_instance_with_parallelism_is_copied_once_per_parallel_instance():
    WhereAmI.closed = []
    template = WhereAmI()
    out: list = []
    env = LocalEnvironment("copies")
    env.from_batch(range(3000)).map(template, parallelism=3).flatmap(CollectTwice(), parallelism=3).sink(Collector, out)
    env.submit(autostop=True)
    assert len(out) == 6000
    assert {index for index, _ in out} == {0, 1, 2}
    closed_ids = [obj for obj, _ in WhereAmI.closed]
    assert len(closed_ids) == 3 and len(set(closed_ids)) == 3 and id(template) not in closed_ids
    # each copy saw its own index
    assert sorted(tuple(sorted(seen)) for _, seen in WhereAmI.closed) == [(0,), (1,), (2,)]
    assert template.seen == set() and template.ctx is None  # the user's object is only a template


class HoldsALock(SinkFunction):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def execute(self, data):
        pass


def test_an_instance_that_cannot_be_copied_is_refused_at_the_call():
    stream = LocalEnvironment("nocopy").from_batch([1])
    with pytest.raises(TypeError, match=r"sink\(HoldsALock\(\), parallelism=2\).*cannot be copied.*pass the class"):
        stream.sink(HoldsALock(), parallelism=2)
    stream.sink(HoldsALock())  # parallelism 1 runs the user's own instance: fine


# ---- 4. wait(timeout) on a failing job whose cleanup is slow ------------------------------

class SlowCleanup(BaseService):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def cleanup(self) -> None:
        self.release.wait(30)


class FailsAtOnce(MapFunction):
    def execute(self, data):
        raise RuntimeError("broken record")


def test_wait_with_a_timeout_raises_while_a_failed_jobs_cleanup_is_slow():
    release = threading.Event()
    env = LocalEnvironment("slow_fail")
    env.register_service("svc", SlowCleanup, release)
    env.from_batch(range(10)).map(FailsAtOnce).sink(lambda x: None)
    job = env.submit(autostop=False, block=False, cleanup=CleanupPolicy(graceful_timeout=20, kill_timeout=0.5))
    with pytest.raises(TimeoutError, match="did not end within"):
        job.wait(0.3)
    release.set()
    with pytest.raises(PipelineError, match="broken record"):
        job.wait(30)
    assert job.state is JobState.FAILED


# ---- 5. the stage whose code raised is the one named ---------------------------------------

class CloseFails(MapFunction):
    def execute(self, data):
        return data

    def close(self) -> None:
        raise OSError("flush failed")


def _failure(build) -> tuple[PipelineError, LocalEnvironment]:
    env = LocalEnvironment("blame")
    build(env)
    with pytest.raises(PipelineError) as info:
        env.submit(autostop=True)
    return info.value, env


def test_a_close_error_in_a_chain_is_blamed_on_the_stage_that_closed():
    err, env = _failure(lambda env: env.from_batch(range(10)).map(CloseFails).sink(lambda x: None))
    assert err.stage == "stage 'map:CloseFails' (instance 0)"
    failed = [t.stage for t in env.job.status().tasks if t.error is not None]
    assert failed == ["map:CloseFails"]


def bad_key(x):
    if x == 5:
        raise KeyError("no key for 5")
    return x


def test_a_raising_key_function_is_blamed_on_the_keyby_not_the_upstream_map():
    err, _ = _failure(lambda env: env.from_batch(range(10)).map(lambda x: x, parallelism=2)
                   .keyby(bad_key).sink(lambda x: None, parallelism=2))
    assert err.stage.startswith("stage 'keyby:bad_key' (instance ")
    assert "no key for 5" in str(err)


def test_an_unhashable_key_is_blamed_on_the_keyby_not_the_source():
    err, _ = _failure(lambda env: env.from_batch(range(10)).keyby(lambda x: [x]).sink(lambda x: None, parallelism=2))
    assert err.stage == "stage 'keyby:lambda' (instance 0)"
    assert "unhashable type: 'list'" in str(err)


# ---- 6. service calls that outlive their caller's timeout ---------------------------------

class SlowCalls(BaseService):
    def __init__(self, events: list, release: threading.Event | None = None) -> None:
        super().__init__()
        self.events, self.release = events, release

    def slow(self) -> str:
        self.events.append("call began")
        if self.release is not None:
            self.release.wait(30)
        else:
            time.sleep(0.5)
        self.events.append("call ended")
        return "late"

    def cleanup(self) -> None:
        self.events.append("cleanup")


class GivesUpOnACall(MapFunction):
    def execute(self, data):
        if data == 0:
            with pytest.raises(TimeoutError, match=r"did not answer within 0.05 s"):
                self.call_service("svc", method="slow", timeout=0.05)
        return data


def test_cleanup_waits_for_a_timed_out_call_before_running_cleanup():
    events: list = []
    env = LocalEnvironment("late_call")
    env.register_service("svc", SlowCalls, events)
    env.from_batch(range(3)).map(GivesUpOnACall).sink(lambda x: None)
    env.submit(autostop=True)
    assert events == ["call began", "call ended", "cleanup"]
    assert env.job.cleanup_report.ok and env.job.cleanup_report.calls_left_running == ()


def test_a_call_still_running_after_the_graceful_timeout_is_in_the_report():
    events: list = []
    release = threading.Event()
    env = LocalEnvironment("stuck_call")
    env.register_service("svc", SlowCalls, events, release)
    env.from_batch(range(3)).map(GivesUpOnACall).sink(lambda x: None)
    env.submit(autostop=True, cleanup=CleanupPolicy(graceful_timeout=0.1, kill_timeout=0.1))
    report = env.job.cleanup_report
    assert report.calls_left_running == ("svc.slow()",) and not report.ok
    assert events == ["call began", "cleanup"]
    release.set()  # let the call end, so no thread outlives the test
    wait_for(lambda: events[-1] == "call ended", what="the call to end")
    wait_for(lambda: not sage_threads(), what="the call thread to end")


# ---- 7. declarations that cannot work, and builtins that can -------------------------------

def test_keyby_after_a_sink_is_refused_at_the_call():
    sunk = LocalEnvironment("trailing").from_batch([1, 2]).sink(lambda x: None)
    with pytest.raises(ValueError, match=r"keyby\(\) after sink\(\)"):
        sunk.keyby(lambda x: x)


@pytest.mark.parametrize("cls", [dict, int, type("Slotted", (), {"__slots__": ()})])
def test_a_service_class_whose_instances_take_no_attributes_is_refused(cls):
    with pytest.raises(TypeError, match=rf"register_service\('s', {cls.__name__}\): its instances cannot take"):
        LocalEnvironment("svc_types").register_service("s", cls)


def test_builtins_and_c_callables_are_accepted_as_functions():
    out: list = []
    env = LocalEnvironment("builtins")
    (env.from_batch([12, 345, 6])
        .map(str).flatmap(list).map(int).filter(bool).map(float).map(math.sqrt)
        .keyby(round).sink(out.append, parallelism=2))
    env.submit(autostop=True)
    assert sorted(out) == sorted(math.sqrt(d) for d in (1, 2, 3, 4, 5, 6))


# ---- 8. env.stop() from inside the job ---------------------------------------------------

def test_env_stop_from_inside_a_sink_returns_at_once_and_the_job_stops_cleanly():
    returned: list = []
    env = LocalEnvironment("self_stop")

    def sink(x):
        if x == 10:
            env.stop()
            returned.append(env.job.state)

    env.from_source(Ticks).sink(sink)
    job = env.submit(block=False)
    assert job.wait(30) is JobState.STOPPED
    assert returned == [JobState.STOPPING]
    assert job.cleanup_report.ok and job.cleanup_report.tasks_left_running == ()


# ---- 9. channels bounded in bytes --------------------------------------------------------

def test_a_channel_refuses_more_bytes_than_its_bound():
    chan = Channel(capacity=16, max_bytes=1_000_000)
    big = [b"x" * 600_000]
    assert chan.offer(big)  # an empty channel takes a batch of any size
    assert not chan.offer([b"y" * 600_000])  # a second one would pass the bound
    assert chan.offer([1, 2, 3])  # small batches still fit
    assert chan.get() is big
    assert chan.offer([b"y" * 600_000])


def test_batch_sizes_are_estimated_from_their_records():
    assert batch_bytes([b"x" * 2**20] * 10) >= 10 * 2**20
    assert batch_bytes([("key", "v" * 10_000)] * 100) >= 100 * 10_000
    assert 0 < batch_bytes(list(range(1000))) < 100_000



def test_a_fast_source_reaches_full_batches_in_a_few_batches():
    from sage_jupyter.runtime.batch_sizes import FAST_BATCH_S, MAX_BATCH, MAX_BATCH_BYTES, next_batch_size

    def sizes(per_record_s: float, record_bytes: int, batches: int = 12) -> list[int]:
        size, seen = 1, []
        for _ in range(batches):
            seen.append(size)
            size = next_batch_size(size, size, size * per_record_s, size * record_bytes)
        return seen

    fast = sizes(1e-6, 28)
    assert fast[3] == MAX_BATCH and fast[:4] == sorted(fast[:4])  # doubling took 11 batches; each is a Ray call
    steady = sizes(1e-4, 28)[-1]  # 100 us a record: only batches under FAST_BATCH_S grow
    assert 2 <= steady and steady * 1e-4 <= 2 * FAST_BATCH_S
    assert max(sizes(1e-6, 2**20)) * 2**20 <= MAX_BATCH_BYTES  # 1 MB records: memory stays bounded
    assert next_batch_size(64, 64, 1.0, 100) == 32  # a slow batch halves
    assert next_batch_size(64, 10, 1e-6, 100) == 64  # a source that gave less than asked: no growth
    assert next_batch_size(64, 64, 1e-6, 2 * MAX_BATCH_BYTES) == 32  # too many bytes halves

# ---- the handle interface ----------------------------------------------------------------

def test_local_and_remote_handles_offer_the_job_handle_interface():
    from sage_jupyter.jobmanager import RemoteJobHandle

    env = LocalEnvironment("like")
    env.from_batch([1]).sink(lambda x: None)
    job = env.submit(autostop=True)
    assert isinstance(job, JobHandleLike)
    members = [n for n in vars(JobHandleLike) if not n.startswith("_")]
    assert set(members) >= {"state", "status", "wait", "stop", "subscribe", "cleanup_report"}
    assert all(hasattr(RemoteJobHandle, n) for n in members)


# ---- service calls: one at a time, also without a lock on the single-caller path ---------

class Exclusive(BaseService):
    """Counts calls that overlapped with a call from another thread (there must be none)."""

    def __init__(self, result: dict) -> None:
        super().__init__()
        self.result = result
        self.inside: int | None = None
        self.overlaps = self.count = 0

    def cleanup(self) -> None:
        self.result.update(overlaps=self.overlaps, count=self.count)

    def touch(self, x: int, nested: bool = False) -> int:
        me = threading.get_ident()
        if self.inside is not None and self.inside != me:
            self.overlaps += 1
        outer, self.inside = self.inside, me
        sum(range(200))  # a window for another thread to come in
        if nested:
            self.call_service["svc"].touch(x)  # a service calling itself: reentrant
        self.count += 1
        self.inside = outer
        return x


class Touches(MapFunction):
    def execute(self, data):
        return self.call_service["svc"].touch(data, nested=data % 7 == 0)


def test_calls_of_several_tasks_never_overlap_even_after_a_single_callers_fast_path():
    import sys

    result: dict = {}
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to give overlaps every chance
    try:
        env = LocalEnvironment("exclusive")
        env.register_service("svc", Exclusive, result)
        # one source instance calls first (the fast path), then three map instances join
        (env.from_batch(range(3000)).map(Touches).map(lambda x: x, parallelism=3)
            .map(Touches, parallelism=3).sink(lambda x: None))
        env.submit(autostop=True)
    finally:
        sys.setswitchinterval(old)
    nested = len([x for x in range(3000) if x % 7 == 0])
    assert result == {"overlaps": 0, "count": 2 * (3000 + nested)}
    assert env.job.status().service("svc").calls == 2 * (3000 + nested)


def test_the_new_report_fields_travel_through_the_one_serializer():
    import json

    from sage_jupyter import CleanupReport, JobStatus, ServiceCleanup
    from sage_jupyter.runtime.job import HookOutcome

    late = HookOutcome("late", 0.5, "setup() was still running at the stop; cleaned after it returned")
    cleaned = ServiceCleanup("svc", "thread", HookOutcome("skipped"), HookOutcome("ok"), None, 0.6, late)
    report = CleanupReport((cleaned,), "stopped", (), 0.7, ("svc.slow()",))
    status = JobStatus("j-1", "j", JobState.STOPPED, "thread", True, 1.0, 2.0, 3.0, (), (), cleanup_report=report)
    back = JobStatus.from_dict(json.loads(json.dumps(status.to_dict())))
    assert back == status
    assert back.cleanup_report["svc"].setup == late and not back.cleanup_report.ok
