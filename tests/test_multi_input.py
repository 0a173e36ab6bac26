"""Connected streams on threads: comap, keyed join, merged map/sink/print, and the end of
a multi-input stage (one end marker from every upstream instance of every input)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from sage_jupyter import (BaseCoMapFunction, BaseJoinFunction, ConnectedStreams, JobState, LocalEnvironment,
                          MapFunction, PipelineError)
from tests.connected import CollectingJoin, InnerJoin, Tag, Tag3, expected_join
from tests.pipelines import Collector, Numbers, Ticks

pytestmark = pytest.mark.usefixtures("no_thread_leak")


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def run(env):
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    return job


def test_comap_sends_each_input_to_its_own_method_exactly_once_in_order():
    out: list = []
    env = LocalEnvironment("comap")
    a, b = env.from_batch(range(3000)), env.from_batch(range(100, 600))
    connected = a.connect(b)
    assert isinstance(connected, ConnectedStreams) and len(connected) == 2
    assert [t.label for t in connected.transformations] == ["source:range", "source:range"]
    connected.comap(Tag).sink(Collector, out)
    run(env)
    assert [x for t, x in out if t == "a"] == list(range(3000))  # order kept per input
    assert [x for t, x in out if t == "b"] == list(range(100, 600))


def test_three_inputs_by_chained_connect_and_by_connecting_connected_streams():
    out: list = []
    env = LocalEnvironment("three")
    a, b, c = env.from_batch([1, 2]), env.from_batch([3]), env.from_batch([4, 5, 6])
    a.connect(b).connect(c).comap(Tag3).sink(Collector, out)
    other: list = []
    a.connect(b.connect(c)).comap(Tag3).sink(Collector, other)
    run(env)
    expected = [("a", 1), ("a", 2), ("b", 3), ("c", 4), ("c", 5), ("c", 6)]
    assert sorted(out) == expected and sorted(other) == expected


def test_comap_none_drops_and_close_runs_after_every_input_ended():
    out: list = []
    built: list[Tag] = []

    class Watched(Tag):
        def __init__(self):
            super().__init__()
            built.append(self)

    env = LocalEnvironment("drops")
    env.from_batch([1, -1, 2]).connect(env.from_batch([-5, 7])).comap(Watched).sink(Collector, out)
    run(env)
    assert sorted(out) == [("a", 1), ("a", 2), ("b", 7)]
    assert [w.closed_after for w in built] == [5]  # close() once, after all five records


def test_comap_with_a_list_of_plain_functions():
    out: list = []
    env = LocalEnvironment("fns")
    env.from_batch([1, 2]).connect(env.from_batch([10])).comap([lambda x: x + 1, lambda x: -x]).sink(Collector, out)
    run(env)
    assert sorted(out) == [-10, 2, 3]


def test_inputs_of_very_different_speeds_and_lengths_lose_nothing():
    # Upstream SAGE ends its comap at the first input's end (its issue #707).
    out: list = []
    env = LocalEnvironment("speeds")
    slow = env.from_batch(Numbers, 15, delay=0.02)
    fast = env.from_batch(range(20000))
    slow.connect(fast).comap(Tag).sink(Collector, out)
    joined: list = []  # upstream's join hangs on such inputs (its issue #518)
    slow.keyby(lambda x: x % 50).connect(fast.keyby(lambda x: x % 50)).join(InnerJoin).sink(Collector, joined)
    run(env)
    assert [x for t, x in out if t == "a"] == list(range(1, 16))
    assert [x for t, x in out if t == "b"] == list(range(20000))
    assert sorted(joined) == expected_join(range(1, 16), range(20000), lambda x: x % 50)


def test_one_input_empty():
    out: list = []
    env = LocalEnvironment("empty")
    env.from_batch([]).connect(env.from_batch(range(50))).comap(Tag).sink(Collector, out)
    joined: list = []
    (env.from_batch([]).keyby(lambda x: x).connect(env.from_batch(range(5)).keyby(lambda x: x))
        .join(InnerJoin).sink(Collector, joined))
    run(env)
    assert out == [("b", x) for x in range(50)] and joined == []


def test_parallelism_on_both_sides_of_a_comap():
    out: list = []
    env = LocalEnvironment("wide")
    a = env.from_batch(range(4000)).map(lambda x: x, parallelism=3)
    b = env.from_batch(range(1000)).map(lambda x: x, parallelism=2)
    a.connect(b).comap(Tag, parallelism=2).map(lambda r: r, parallelism=2).sink(Collector, out, parallelism=3)
    job = run(env)
    assert sorted(x for t, x in out if t == "a") == list(range(4000))
    assert sorted(x for t, x in out if t == "b") == list(range(1000))
    comap_tasks = [t for t in job.status().tasks if t.stage == "comap:Tag"]
    assert len(comap_tasks) == 2 and sum(t.records_in for t in comap_tasks) == 5000


@pytest.mark.parametrize("parallelism", [1, 3])
def test_keyed_join_matches_a_brute_force_join_with_keys_on_one_side_only(parallelism):
    left = list(range(0, 300))  # keys 0..29 ...
    right = list(range(1000, 1400, 3))  # ... and keys that only this side has
    out: list = []
    env = LocalEnvironment("join")
    l_stream = env.from_batch(left).map(lambda x: x, parallelism=2).keyby(lambda x: x % 30)
    r_stream = env.from_batch(right).keyby(lambda x: x % 45)
    l_stream.connect(r_stream).join(InnerJoin, parallelism=parallelism).sink(Collector, out)
    run(env)
    assert sorted(out) == expected_join(left, right, lambda x: x % 30 if x < 1000 else x % 45)
    assert any(x % 45 >= 30 for x in right)  # the right side has keys the left never sends


def test_join_state_lives_per_key_and_instance_and_emits_as_records_arrive():
    keys_per_instance: dict[int, set] = {}
    lock = threading.Lock()

    class Tracking(InnerJoin):
        def execute(self, payload, key, tag):
            with lock:
                keys_per_instance.setdefault(self.ctx.parallel_index, set()).add(key)
            return super().execute(payload, key, tag)

    out: list = []
    env = LocalEnvironment("per-key")
    left, right = env.from_batch(range(200)).keyby(lambda x: x % 20), env.from_batch(range(200)).keyby(lambda x: x % 20)
    left.connect(right).join(Tracking, parallelism=2).sink(Collector, out)
    run(env)
    assert len(out) == 20 * 10 * 10
    assert not set.intersection(*keys_per_instance.values())  # one key, one instance


def test_join_ends_cleanly_when_one_side_is_unbounded_until_stopped():
    out: list = []
    env = LocalEnvironment("open-join")
    ticks = env.from_source(Ticks, 0.002).keyby(lambda x: x % 5)
    env.from_batch(range(5)).keyby(lambda x: x).connect(ticks).join(InnerJoin).sink(Collector, out)
    job = env.submit(autostop=True, block=False)
    wait_until(lambda: len(out) >= 10)
    assert job.state is JobState.RUNNING
    assert job.stop(wait=True, timeout=30) is JobState.STOPPED
    assert all(left == right % 5 for left, right in out)


def test_join_can_emit_with_collect_and_with_one_key_selector_per_input():
    out: list = []
    env = LocalEnvironment("collect")
    users = env.from_batch([{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
    orders = env.from_batch([{"user": 2, "amount": 5}, {"user": 1, "amount": 7}, {"user": 3, "amount": 1}])
    (users.connect(orders).keyby([lambda u: u["id"], lambda o: o["user"]])
        .join(CollectingJoin).map(lambda p: (p[0]["name"], p[1]["amount"])).sink(Collector, out))
    run(env)
    assert sorted(out) == [("ann", 7), ("bob", 5)]


def test_connected_map_sink_and_print_merge_every_input(capsys):
    merged: list = []
    env = LocalEnvironment("merge")
    a, b = env.from_batch([1, 2]), env.from_batch([10])
    a.connect(b).map(lambda x: x * 2).sink(Collector, merged)
    sunk: list = []
    a.connect(b).sink(Collector, sunk)
    a.connect(b).print("both", colored=False)
    run(env)
    assert sorted(merged) == [2, 4, 20] and sorted(sunk) == [1, 2, 10]
    lines = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("both"))
    assert lines == ["both | 1", "both | 10", "both | 2"]


def test_a_stream_connected_to_itself_feeds_both_inputs():
    out: list = []
    env = LocalEnvironment("self")
    s = env.from_batch([1, 2, 3])
    s.connect(s).comap(Tag).sink(Collector, out)
    run(env)
    assert sorted(out) == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]


def test_a_failing_map1_fails_the_job_naming_the_comap():
    class Fragile(Tag):
        def map1(self, data):
            raise ValueError(f"bad record {data}")

    env = LocalEnvironment("fragile")
    env.from_batch([1]).connect(env.from_batch([9])).comap(Fragile).sink(lambda x: None)
    with pytest.raises(PipelineError, match="stage 'comap:Fragile'.*bad record 9"):
        env.submit(autostop=True)


def test_declaration_errors_name_what_is_wrong():
    env = LocalEnvironment("errors")
    a, b, c = env.from_batch([1]), env.from_batch([2]), env.from_batch([3])

    class TwoOnly(BaseCoMapFunction):
        def map0(self, data):
            return data

        def map1(self, data):
            return data

    class NoMap1(BaseCoMapFunction):
        def map0(self, data):
            return data

    with pytest.raises(TypeError, match="needs map0, map1, map2; missing map2"):
        a.connect(b).connect(c).comap(TwoOnly)
    with pytest.raises(TypeError, match="missing map1"):
        a.connect(b).comap(NoMap1)
    with pytest.raises(TypeError, match="comap\\(\\) needs a BaseCoMapFunction subclass"):
        a.connect(b).comap(lambda x: x)
    with pytest.raises(TypeError, match="pass 2 functions"):
        a.connect(b).comap([lambda x: x])
    with pytest.raises(ValueError, match="join\\(\\): input 1 is not keyed"):
        a.keyby(lambda x: x).connect(b).join(InnerJoin)
    with pytest.raises(ValueError, match="input 0 is not partitioned by its key"):
        a.keyby(lambda x: x, strategy="broadcast").connect(b.keyby(lambda x: x)).join(InnerJoin)
    with pytest.raises(ValueError, match="exactly 2 connected streams, got 3"):
        a.connect(b).connect(c).keyby(lambda x: x).join(InnerJoin)
    with pytest.raises(TypeError, match="join\\(TwoOnly\\).*BaseJoinFunction"):
        a.connect(b).keyby(lambda x: x).join(TwoOnly)
    with pytest.raises(ValueError, match="3 key selectors for 2 connected streams"):
        a.connect(b).keyby([len, len, len])
    with pytest.raises(ValueError, match="input 1 is a sink's stream"):
        a.connect(b.sink(lambda x: None)).comap(TwoOnly)
    other = LocalEnvironment("elsewhere").from_batch([1])
    with pytest.raises(ValueError, match="belongs to environment 'elsewhere'"):
        a.connect(other)
    with pytest.raises(TypeError, match="input 1 is a list, not a DataStream"):
        a.connect([1, 2])


def test_function_bases_declare_execute_abstract_as_upstream():
    class NoExecute(MapFunction):
        pass

    class NoJoin(BaseJoinFunction):
        pass

    for cls in (NoExecute, NoJoin):
        with pytest.raises(TypeError, match="abstract"):
            cls()
    with pytest.raises(TypeError, match="map\\(NoExecute\\): NoExecute does not define execute"):
        LocalEnvironment("abstract").from_batch([1]).map(NoExecute)
    with pytest.raises(NotImplementedError, match="map0, map1"):
        Tag().execute(1)


def test_print_formats_records_as_upstream(capsys):
    env = LocalEnvironment("printing")
    env.from_batch([{"a": 1, "b": "x"}, list(range(8)), 2.5]).print()
    env.from_batch(["hi"]).print("tag", separator=": ")
    run(env)
    printed = capsys.readouterr().out.splitlines()
    assert "a=1, b=x" in printed and "[0, 1, 2, 3, 4, ... (+3 more)]" in printed and "2.5" in printed
    assert "\x1b[1;36mtag\x1b[0m: hi" in printed  # colored=True colours the prefix


def test_upstream_environment_attributes(caplog, capsys):
    env = LocalEnvironment("attrs", enable_monitoring=True)
    assert (env.platform, env.env_uuid, env.is_running, env.console_log_level) == ("local", None, False, "INFO")
    assert env.enable_monitoring is True

    class Loud(MapFunction):
        def execute(self, data):
            self.logger.info("info %s", data)
            self.logger.warning("warn %s", data)
            return data

    env.from_batch([1]).map(Loud, parallelism=2).sink(lambda x: None)
    assert [(s.function_class.__name__, s.parallelism) for s in env.pipeline] == [
        ("list", 1), ("Loud", 2), ("<lambda>", 1)]
    with pytest.raises(ValueError, match="use one of DEBUG, INFO, WARNING, ERROR"):
        env.set_console_log_level("LOUD")
    env.set_console_log_level("warning")
    with caplog.at_level(logging.DEBUG, logger="sage_jupyter"):
        job = env.submit(autostop=True, block=False)
        assert env.env_uuid == job.job_id
        job.wait(30)
    assert env.console_log_level == "WARNING" and not env.is_running
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sage_jupyter.job.attrs")]
    assert messages == ["warn 1"]  # INFO is below the console level
    console = capsys.readouterr().err
    assert "WARNING sage_jupyter.job.attrs" in console and "warn 1" in console and "info 1" not in console


def test_from_source_and_from_collection_take_what_upstream_takes():
    from sage_jupyter import BaseFunction, SourceFunction

    class Counting(BaseFunction):  # neither SourceFunction nor BatchFunction: upstream accepts it
        def __init__(self, stop_at, **kwargs):
            super().__init__(**kwargs)
            self.i, self.stop_at = 0, stop_at

        def execute(self):
            self.i += 1
            return self.i if self.i <= self.stop_at else None

    class Upto(SourceFunction):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.i = 0

        def execute(self, data=None):
            self.i += 1
            return self.i if self.i <= 3 else None

    out: list = []
    env = LocalEnvironment("sources")
    env.from_collection(Upto).sink(Collector, out)  # from_collection is bounded: None ends it
    env.from_collection(Counting, 2).map(lambda x: x * 100).sink(Collector, out)
    run(env)
    assert sorted(out) == [1, 2, 3, 100, 200]

    streamed: list = []
    env = LocalEnvironment("unbounded")
    env.from_source(Counting, 4).sink(Collector, streamed)  # from_source polls a None again
    job = env.submit(autostop=True, block=False)
    wait_until(lambda: len(streamed) >= 4)
    assert job.state is JobState.RUNNING and job.stop(wait=True, timeout=30) is JobState.STOPPED
    with pytest.raises(TypeError, match="a MapFunction consumes records"):
        LocalEnvironment("bad").from_source(MapFunction)


def test_keyed_connected_streams_route_one_key_to_one_instance_of_a_merged_sink():
    from sage_jupyter import KeyByFunction, SinkFunction

    class UserId(KeyByFunction):
        def execute(self, data):
            return data["user"]

    instances: dict = {}
    lock = threading.Lock()

    class ByInstance(SinkFunction):
        def execute(self, data):
            with lock:
                instances.setdefault(data["user"], set()).add(self.ctx.parallel_index)

    env = LocalEnvironment("keyed-merge")
    users = env.from_batch([{"user": u % 7, "kind": "profile"} for u in range(70)])
    events = env.from_batch([{"user": u % 7, "kind": "click"} for u in range(300)])
    users.connect(events).keyby(UserId).sink(ByInstance, parallelism=3)
    run(env)
    assert set(instances) == set(range(7)) and all(len(i) == 1 for i in instances.values())
    assert len(set.union(*instances.values())) > 1  # the keys did spread over the instances


def test_a_function_instance_on_connected_streams_is_copied_per_parallel_instance():
    closed: list = []

    class Where(BaseCoMapFunction):
        def map0(self, data):
            return (self.ctx.parallel_index, id(self))

        map1 = map0

        def close(self):
            closed.append(id(self))

    template, out = Where(), []
    env = LocalEnvironment("connected-copies")
    a, b = env.from_batch(range(300)), env.from_batch(range(300))
    a.connect(b).comap(template, parallelism=3).sink(Collector, out)
    run(env)
    assert len(out) == 600 and {index for index, _ in out} == {0, 1, 2}
    assert len({obj for _, obj in out}) == 3 and id(template) not in closed and len(set(closed)) == 3
    assert template.ctx is None  # the user's object is only a template


def test_ray_remote_args_on_every_connected_stage_and_on_from_collection():
    from sage_jupyter.runtime.plan import build_plan

    env = LocalEnvironment("connected-remote-args", backend="ray")
    a = env.from_collection(range(3), ray_remote_args={"num_cpus": 1})
    b = env.from_batch(range(3))
    merged = a.connect(b).comap(Tag, ray_remote_args={"resources": {"box": 1}})
    merged.connect(b).map(abs, ray_remote_args={"num_cpus": 1}).print(ray_remote_args={"num_cpus": 1})
    a.connect(b).sink(print, ray_remote_args={"num_cpus": 1})
    args = [(s.label, s.ray_remote_args) for s in env._graph.stages]
    cpu = {"num_cpus": 1}
    assert args == [("source:range", cpu), ("source:range", None), ("comap:Tag", {"resources": {"box": 1}}),
                    ("map:abs", cpu), ("sink:PrintSink", cpu), ("sink:print", cpu)]
    assert build_plan(env._graph).chains  # plans
    keyed = a.keyby(abs).connect(b.keyby(abs))
    keyed.join(InnerJoin, ray_remote_args=cpu).sink(print)
    assert env._graph.stages[-2].label == "join:InnerJoin" and env._graph.stages[-2].ray_remote_args == cpu
    for connected, method, fn in ((a.connect(b), "comap", Tag), (keyed, "join", InnerJoin),
                                  (a.connect(b), "map", abs), (a.connect(b), "sink", print)):
        with pytest.raises(ValueError, match=rf"{method}\({fn.__name__}\).*'num_cpu' is not accepted"):
            getattr(connected, method)(fn, ray_remote_args={"num_cpu": 1})
    with pytest.raises(ValueError, match=r"from_collection\(.*'name' is not accepted"):
        env.from_collection([1], ray_remote_args={"name": "x"})
