"""Services: hooks in order, the three call forms, errors, and cleanup under the policy."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from sage_jupyter import (BaseService, CleanupPolicy, JobState, LocalEnvironment, MapFunction,
                          PipelineError, ServiceCallError, ServiceState, SinkFunction)
from tests.pipelines import Collector, Numbers, Recorder

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def test_hooks_run_in_order_and_cleanup_is_reverse_start_order():
    events: list = []
    env = LocalEnvironment("hooks")
    env.register_service("a", Recorder, events, "a")
    env.register_service("b", Recorder, events, tag="b")
    env.from_batch([1]).sink(lambda x: None)
    job = env.submit(autostop=True)
    assert events == [("a", "setup"), ("a", "start"), ("b", "setup"), ("b", "start"),
                      ("b", "stop"), ("b", "cleanup"), ("a", "stop"), ("a", "cleanup")]
    report = job.cleanup_report
    assert [s.name for s in report.services] == ["b", "a"]
    assert report.ok and report.reason == "finished"
    assert all(s.state is ServiceState.CLEANED for s in job.status().services)


def test_three_ways_to_call_a_service():
    events: list = []
    results: list = []

    class Caller(MapFunction):
        def execute(self, data):
            self.call_service["store"].put(data, data * 10)
            a = self.call_service["store"].get(data)
            b = self.call_service("store", data, method="process", timeout=5)
            fut = self.call_service_async("store", data, method="get")
            assert isinstance(fut, Future)
            return (a, b, fut.result(5))

    env = LocalEnvironment("calls")
    env.register_service("store", Recorder, events)
    env.from_batch([1, 2]).map(Caller).sink(Collector, results)
    job = env.submit(autostop=True)
    assert results == [(10, 2, 10), (20, 3, 20)]
    assert job.status().service("store").calls == 8


def test_service_exception_keeps_its_type_and_names_the_service():
    caught: list = []

    class Try(SinkFunction):
        def execute(self, data):
            try:
                self.call_service["store"].fail()
            except KeyError as exc:
                caught.append(str(exc))

    env = LocalEnvironment("err")
    env.register_service("store", Recorder, [])
    env.from_batch([1]).sink(Try)
    env.submit(autostop=True)
    assert len(caught) == 1 and "store" in caught[0] and "no such thing" in caught[0]


def test_unknown_service_and_unknown_method_are_clear_errors():
    class Bad(SinkFunction):
        def __init__(self, what):
            super().__init__()
            self.what = what

        def execute(self, data):
            if self.what == "service":
                self.call_service["nope"].get(1)
            else:
                self.call_service["store"].missing(1)

    for what, pattern in (("service", "unknown service 'nope'; registered services: store"),
                          ("method", "service 'store' \\(Recorder\\) has no method 'missing'")):
        env = LocalEnvironment("unknown")
        env.register_service("store", Recorder, [])
        env.from_batch([1]).sink(Bad, what)
        with pytest.raises(PipelineError, match=pattern) as info:
            env.submit(autostop=True)
        assert f"{ServiceCallError.__name__}:" in info.value.summary


def test_call_timeout_raises_timeout_error():
    class Slow(BaseService):
        def nap(self):
            time.sleep(0.5)

    got: list = []

    class Call(SinkFunction):
        def execute(self, data):
            try:
                self.call_service("slow", method="nap", timeout=0.05)
            except TimeoutError as exc:
                got.append(str(exc))

    env = LocalEnvironment("timeout")
    env.register_service("slow", Slow)
    env.from_batch([1]).sink(Call)
    env.submit(autostop=True, cleanup=CleanupPolicy(graceful_timeout=2, kill_timeout=1))
    assert got and "did not answer within 0.05 s" in got[0]


def test_hanging_and_raising_hooks_are_recorded_and_do_not_block_the_rest():
    release = threading.Event()
    events: list = []

    class Hangs(BaseService):
        def cleanup(self):
            release.wait(10)

    class Raises(BaseService):
        def stop(self):
            raise RuntimeError("stop broke")

    env = LocalEnvironment("hang")
    env.register_service("first", Recorder, events, "first")
    env.register_service("hangs", Hangs)
    env.register_service("raises", Raises)
    env.from_batch([1, 2]).sink(lambda x: None)
    t0 = time.monotonic()
    job = env.submit(autostop=True, cleanup=CleanupPolicy(graceful_timeout=0.3, kill_timeout=0.3))
    took = time.monotonic() - t0
    release.set()
    report = job.cleanup_report
    assert job.state is JobState.FINISHED
    assert report["hangs"].cleanup.outcome == "timeout"
    assert report["raises"].stop.outcome == "error" and "stop broke" in report["raises"].stop.error
    assert report["raises"].cleanup.outcome == "ok"  # cleanup still ran after a failed stop
    assert report["first"].ok and ("first", "cleanup") in events
    assert not report.ok
    assert took < 5  # the hang cost its timeout, not the 10 s it wanted


def test_raising_setup_fails_the_job_and_cleans_started_services():
    events: list = []

    class Broken(BaseService):
        def setup(self):
            raise OSError("disk gone")

    env = LocalEnvironment("setup")
    env.register_service("ok", Recorder, events, "ok")
    env.register_service("broken", Broken)
    env.from_batch([1]).sink(lambda x: None)
    with pytest.raises(PipelineError, match="service 'broken' setup.*OSError: disk gone"):
        env.submit(autostop=True)
    assert events[-2:] == [("ok", "stop"), ("ok", "cleanup")]
    assert env.job.state is JobState.FAILED
    assert env.job.status().service("ok").state is ServiceState.CLEANED


def test_without_autostop_services_stay_up_until_stop():
    events: list = []
    env = LocalEnvironment("keep")
    env.register_service("svc", Recorder, events)
    out: list = []
    env.from_batch(Numbers, 10).sink(Collector, out)
    job = env.submit()  # no autostop: returns at once
    job.wait(5)  # returns when the tasks ended
    assert len(out) == 10
    assert job.state is JobState.RUNNING
    assert job.status().service("svc").state is ServiceState.RUNNING
    assert ("svc", "cleanup") not in events and job.cleanup_report is None
    env.stop()
    assert job.state is JobState.STOPPED
    assert events[-1] == ("svc", "cleanup")
    assert job.cleanup_report.ok and job.cleanup_report.reason == "stopped"


def test_a_service_can_call_another_service():
    class Front(BaseService):
        def ask(self, x):
            return self.call_service["back"].process(x) * 2

    out: list = []

    class Use(MapFunction):
        def execute(self, data):
            return self.call_service["front"].ask(data)

    env = LocalEnvironment("chain")
    env.register_service("back", Recorder, [])
    env.register_service("front", Front)
    env.from_batch([1, 2]).map(Use).sink(Collector, out)
    env.submit(autostop=True)
    assert out == [4, 6]


def test_service_calls_are_serialized_like_an_actor():
    class Counter(BaseService):
        def setup(self):
            self.n = 0

        def bump(self):
            n = self.n
            time.sleep(0)  # invite a thread switch inside the read-modify-write
            self.n = n + 1

        def cleanup(self):
            totals.append(self.n)

    totals: list = []

    class Bump(MapFunction):
        def execute(self, data):
            self.call_service["counter"].bump()
            return data

    env = LocalEnvironment("serial")
    env.register_service("counter", Counter)
    env.from_batch(range(3000)).map(Bump, parallelism=3).sink(lambda x: None)
    env.submit(autostop=True)
    assert totals == [3000]


def test_a_thread_calling_lock_free_is_refused_once_the_service_stopped():
    """The one thread calling a service takes the lock-free path; when the service stops
    taking calls, that path ends too and the thread's next call is refused."""
    class Ping(BaseService):
        def ping(self):
            return "pong"

    seen: dict = {}
    started = threading.Event()

    def keep_calling(call_service):
        try:
            while True:
                call_service["ping"].ping()
                seen["calls"] = seen.get("calls", 0) + 1
                started.set()
                time.sleep(0.001)
        except ServiceCallError as exc:
            seen["refused"] = str(exc)

    class StartsCaller(MapFunction):
        def execute(self, data):
            thread = threading.Thread(target=keep_calling, args=(self.call_service,), daemon=True)
            thread.start()
            seen["thread"] = thread
            started.wait(5)  # the caller thread owns the lock-free path before the job ends
            return data

    env = LocalEnvironment("refuse_owner")
    env.register_service("ping", Ping)
    env.from_batch([1]).map(StartsCaller).sink(lambda x: None)
    env.submit(autostop=True)
    seen["thread"].join(5)
    assert not seen["thread"].is_alive()
    assert seen["calls"] >= 1 and "takes no more calls" in seen["refused"]
    assert env.job.status().service("ping").calls == seen["calls"]  # the refused call is not counted
