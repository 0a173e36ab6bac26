"""Map and filter stages ending in a sink run as one loop (runtime/fusion.py): the same
records, counters, peek and blame as running them one stage at a time."""

import pytest

from sage_jupyter import FilterFunction, LocalEnvironment, MapFunction, PipelineError
from sage_jupyter.runtime import peek
from sage_jupyter.runtime.fusion import Fused, fusable


class Half(MapFunction):
    def execute(self, x):
        return None if x % 2 else x // 2  # odd records are dropped


class NotDividedBy3(FilterFunction):
    def execute(self, x):
        return x % 3 != 0


def _run(n, sampling=True):
    out: list = []
    old = peek.SAMPLING
    peek.SAMPLING = sampling
    try:
        env = LocalEnvironment("fused")
        env.from_batch(range(n)).map(Half).filter(NotDividedBy3).sink(out.append)
        job = env.submit(autostop=True)
    finally:
        peek.SAMPLING = old
    return out, job


@pytest.mark.parametrize("sampling", [True, False])
def test_a_fused_chain_gives_the_same_records_and_counters(sampling):
    n = 10_000
    out, job = _run(n, sampling)
    halves = [x // 2 for x in range(n) if x % 2 == 0]
    expected = [h for h in halves if h % 3 != 0]
    assert out == expected
    status = job.status()
    assert status.task("map:Half").records_in == n
    assert status.task("map:Half").records_out == len(halves)
    assert status.task("filter:NotDividedBy3").records_in == len(halves)
    assert status.task("filter:NotDividedBy3").records_out == len(expected)
    assert status.records_in == len(expected)  # what the sink took


def test_peek_of_a_fused_chain_shows_each_stages_newest_records_exactly():
    n = 10_000
    out, job = _run(n)
    seen = job.peek(n=5)
    assert seen["map:Half"] == [repr(x // 2) for x in range(n) if x % 2 == 0][-5:]
    assert seen["filter:NotDividedBy3"] == [repr(x) for x in out[-5:]]
    assert seen["sink:append"] == [repr(x) for x in out[-5:]]


@pytest.mark.parametrize("culprit", ["map", "filter", "sink"])
def test_an_error_in_a_fused_chain_is_blamed_on_the_stage_that_raised(culprit):
    class Map(MapFunction):
        def execute(self, x):
            if culprit == "map" and x == 5000:
                raise ValueError("map broke")
            return x

    class Keep(FilterFunction):
        def execute(self, x):
            if culprit == "filter" and x == 5000:
                raise ValueError("filter broke")
            return True

    def sink(x):
        if culprit == "sink" and x == 5000:
            raise ValueError("sink broke")

    env = LocalEnvironment("fused_blame")
    env.from_batch(range(10_000)).map(Map).filter(Keep).sink(sink)
    label = {"map": "map:Map", "filter": "filter:Keep", "sink": "sink:sink"}[culprit]
    with pytest.raises(PipelineError, match=f"failed in stage '{label}'.*{culprit} broke"):
        env.submit(autostop=True)


def test_only_map_and_filter_runs_ending_in_a_sink_are_fused():
    assert fusable(["map", "sink"]) and fusable(["filter", "map", "sink"])
    assert not fusable(["sink"])  # nothing to fuse
    assert not fusable(["map", "map"])  # no sink: the chain's output is a list for the next one
    assert not fusable(["flatmap", "sink"]) and not fusable(["map", "keyby", "sink"])


def test_the_fused_loop_counts_what_each_stage_dropped():
    class Op:
        def __init__(self, fn):
            self.fn, self.records_in, self.records_out = fn, 0, 0

    got: list = []
    ops = [Op(lambda x: x if x != 2 else None), Op(lambda x: x != 3), Op(got.append)]
    fused = Fused(ops, ["map", "filter", "sink"])
    fused([1, 2, 3, 4])
    assert got == [1, 4]
    assert [(op.records_in, op.records_out) for op in ops] == [(4, 3), (3, 2), (2, 0)]
