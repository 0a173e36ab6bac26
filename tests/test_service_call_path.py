"""The local service-call path: a task's own proxy calls lock-free while it is the service's
only caller; every other caller (another task, the call pool, a service) takes the lock,
and never overlaps a lock-free call still running."""

import threading
import time

import pytest

from sage_jupyter import BaseService, LocalEnvironment, MapFunction, PipelineError, ServiceCallError, SinkFunction


class Intervals(BaseService):
    """Records (start, end) of every call, and whether two calls ever ran at once."""

    def __init__(self, log):
        super().__init__()
        self.log = log
        self.active = 0

    def work(self, seconds):
        self.active += 1
        overlapped = self.active > 1
        start = time.perf_counter()
        time.sleep(seconds)
        self.log.append((start, time.perf_counter(), overlapped))
        self.active -= 1
        return seconds

    @property
    def expensive(self):  # building the proxy must not run it
        self.log.append("property ran")
        return 1


def _host(env, name):
    return env.job._dispatcher.hosts[name]


def test_an_async_call_waits_for_the_tasks_own_lock_free_call_in_progress():
    log: list = []

    class Both(MapFunction):
        def execute(self, data):
            self.call_service["svc"].work(0.0)  # the task's proxy owns the bias now
            future = self.call_service_async("svc", 0.05, method="work")  # the pool: the locked path
            self.call_service["svc"].work(0.2)  # lock-free until the pool's call revokes the bias
            return future.result(5)

    env = LocalEnvironment("async_vs_own")
    env.register_service("svc", Intervals, log)
    out: list = []
    env.from_batch([1, 2, 3]).map(Both).sink(out.append)
    env.submit(autostop=True)
    assert out == [0.05, 0.05, 0.05]
    calls = sorted(entry for entry in log if entry != "property ran")
    assert len(calls) == 9 and not any(overlapped for _, _, overlapped in calls)
    for (_, end, _), (start, _, _) in zip(calls, calls[1:], strict=False):
        assert start >= end - 1e-4, calls  # one call at a time
    assert "property ran" not in log
    assert _host(env, "svc")._bias.revoked  # the pool's calls ended the lock-free path
    assert env.job.status().service("svc").calls == 9


def test_operators_of_one_chain_share_a_caller_and_stay_lock_free():
    class Store(BaseService):
        def __init__(self):
            super().__init__()
            self.data = {}

        def put(self, k, v):
            self.data[k] = v

        def get(self, k):
            return self.data.get(k)

    class Put(MapFunction):
        def execute(self, x):
            self.call_service["store"].put(x, x * x)
            return x

    got: list = []

    class Get(SinkFunction):
        def execute(self, x):
            got.append(self.call_service["store"].get(x))

    env = LocalEnvironment("one_chain")
    env.register_service("store", Store)
    env.from_batch(range(100)).map(Put).sink(Get)
    env.submit(autostop=True)
    assert got == [x * x for x in range(100)]
    bias = _host(env, "store")._bias
    assert bias.owner is not None and not bias.revoked
    assert env.job.status().service("store").calls == 200


def test_an_unknown_method_is_a_service_call_error_in_the_report_and_in_the_upstream_form():
    seen: list = []

    class Upstream(SinkFunction):
        def execute(self, data):
            try:
                self.call_service("svc", 1, method="nope")
            except ServiceCallError as exc:
                seen.append(str(exc))
            self.call_service["svc"].nope(1)

    env = LocalEnvironment("unknown_method")
    env.register_service("svc", Intervals, [])
    env.from_batch([1]).sink(Upstream)
    with pytest.raises(PipelineError, match=r"service 'svc' \(Intervals\) has no method 'nope'") as info:
        env.submit(autostop=True)
    assert seen == ["service 'svc' (Intervals) has no method 'nope'"]
    assert "ServiceCallError:" in info.value.summary


def test_a_second_task_waits_for_the_owners_lock_free_call_to_end():
    log: list = []
    first_in = threading.Event()

    threads: set = set()

    class First(MapFunction):
        def execute(self, data):
            threads.add(threading.get_ident())
            if data == 0:
                first_in.set()
                return self.call_service["svc"].work(0.3)
            first_in.wait(5)
            time.sleep(0.05)  # the owner is inside its lock-free call now
            return self.call_service["svc"].work(0.0)

    env = LocalEnvironment("second_waits")
    env.register_service("svc", Intervals, log)
    env.from_batch([0, 1]).map(First, parallelism=2).sink(lambda x: None)
    env.submit(autostop=True)
    assert len(threads) == 2  # the two records went to the two instances
    (s1, e1, o1), (s2, e2, o2) = sorted(log)
    assert not o1 and not o2
    assert s2 >= e1 - 1e-4  # the second call began only after the owner's ended


def test_a_callable_set_on_the_instance_is_called_through_the_upstream_form():
    class Handlers(BaseService):
        def __init__(self):
            super().__init__()
            self.double = lambda x: 2 * x  # not a method of the class

    got: list = []

    class Use(SinkFunction):
        def execute(self, data):
            got.append(self.call_service("h", data, method="double"))

    env = LocalEnvironment("instance_callable")
    env.register_service("h", Handlers)
    env.from_batch([1, 2]).sink(Use)
    env.submit(autostop=True)
    assert got == [2, 4]
    assert env.job.status().service("h").calls == 2


class Adder(BaseService):
    def __init__(self):
        super().__init__()
        self.total = 0

    def add(self, x):
        self.total += x
        return x


class AddTwice(MapFunction):
    """Calls the service twice a record and notes the most lock-free calls left uncounted."""

    pending = 0

    def execute(self, data):
        acc = self.call_service["acc"]
        acc.add(data)
        AddTwice.pending = max(AddTwice.pending, len(acc._sage_tally))
        return acc.add(data)


@pytest.mark.parametrize("parallelism", [1, 2])  # 2: the second task revokes the first's lock-free path
def test_call_counts_are_exact_on_lock_free_paths_and_folded_every_batch(parallelism):
    from sage_jupyter.runtime.operators import MAX_BATCH

    AddTwice.pending = 0
    env = LocalEnvironment(f"counts_{parallelism}")
    env.register_service("acc", Adder)
    live: list[int] = []
    out: list[int] = []

    class Watch(SinkFunction):
        def execute(self, data):
            out.append(data)
            if data % 1000 == 0:
                live.append(env.job.status().service("acc").calls)

    n = 20_000
    env.from_batch(range(n)).map(AddTwice, parallelism=parallelism).sink(Watch)
    env.submit(autostop=True)
    assert sorted(out) == list(range(n))
    assert env.job.status().service("acc").calls == 2 * n
    assert _host(env, "acc").instance.total == 2 * sum(range(n))
    assert live and all(0 < c <= 2 * n for c in live)
    assert AddTwice.pending <= 2 * MAX_BATCH  # one batch's calls at most wait to be counted
    assert AddTwice.pending > 0 or parallelism > 1  # a lone task calls lock-free


def test_a_service_error_deep_in_a_fused_batch_shows_only_user_frames():
    class Picky(BaseService):
        def check(self, x):
            if x == 700:
                raise ValueError(f"bad record {x}")
            return x

    class Check(MapFunction):
        def execute(self, data):
            return self.call_service["picky"].check(data)

    env = LocalEnvironment("generated_frames")
    env.register_service("picky", Picky)
    env.from_batch(range(2000)).map(Check).sink(lambda x: None)  # fused: record 700 runs in the loop
    with pytest.raises(PipelineError):
        env.submit(autostop=True)
    error = env.job.status().error
    assert error is not None and "bad record 700" in error.message
    frames = [line for line in error.traceback.splitlines() if line.strip().startswith("File ")]
    assert [f.rsplit(" in ", 1)[1] for f in frames] == ["execute", "check"], error.traceback
    assert "<sage fused" in error.full_traceback and "<sage proxy check>" in error.full_traceback
