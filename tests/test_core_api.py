"""Bad input is rejected where it is written, with a message naming what was wrong."""

from __future__ import annotations

import pytest

from sage_jupyter import (BaseService, FilterFunction, LocalEnvironment, MapFunction, PipelineError,
                          SinkFunction)
from tests.pipelines import Collector, Double, Numbers


def test_non_callable_stage_is_rejected_at_map():
    env = LocalEnvironment("bad")
    with pytest.raises(TypeError, match="map\\(\\) needs a function or a MapFunction subclass"):
        env.from_batch([1, 2]).map(42)


def test_class_of_the_wrong_kind_is_rejected():
    env = LocalEnvironment("bad")
    with pytest.raises(TypeError, match="FilterFunction subclass; pass a MapFunction"):
        env.from_batch([1]).map(type("F", (FilterFunction,), {"execute": lambda s, d: True}))


def test_plain_class_is_not_a_function():
    class NotAFunction:
        def execute(self, data):
            return data

    with pytest.raises(TypeError, match="NotAFunction is a class that is not a SAGE function"):
        LocalEnvironment("bad").from_batch([1]).sink(NotAFunction)


def test_duplicate_service_name():
    env = LocalEnvironment("bad")
    env.register_service("cache", BaseService)
    with pytest.raises(ValueError, match="'cache' is already registered"):
        env.register_service("cache", BaseService)


def test_service_must_be_a_class():
    with pytest.raises(TypeError, match="pass the service class"):
        LocalEnvironment("bad").register_service("cache", BaseService())


@pytest.mark.parametrize("parallelism", [0, -1, 1.5, True])
def test_parallelism_must_be_positive_int(parallelism):
    with pytest.raises(ValueError, match="parallelism must be an integer >= 1"):
        LocalEnvironment("bad").from_batch([1]).map(Double, parallelism=parallelism)


def test_submit_without_sink():
    env = LocalEnvironment("nosink")
    env.from_batch([1, 2]).map(Double)
    with pytest.raises(ValueError, match="has no sink"):
        env.submit(autostop=True)


def test_submit_twice():
    env = LocalEnvironment("twice")
    env.from_batch([1]).sink(lambda x: None)
    env.submit(autostop=True)
    with pytest.raises(RuntimeError, match="already submitted"):
        env.submit(autostop=True)


def test_nothing_after_sink():
    with pytest.raises(ValueError, match="after sink"):
        LocalEnvironment("bad").from_batch([1]).sink(print).map(Double)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend='spark'"):
        LocalEnvironment("bad", backend="spark")


def test_string_is_not_a_batch():
    with pytest.raises(TypeError, match="got a str"):
        LocalEnvironment("bad").from_batch("abc")


def test_bad_keyby_strategy():
    with pytest.raises(ValueError, match="strategy='random'"):
        LocalEnvironment("bad").from_batch([1]).keyby(lambda x: x, strategy="random")


def test_bad_cleanup_policy():
    env = LocalEnvironment("bad")
    env.from_batch([1]).sink(print)
    with pytest.raises(ValueError, match="graceful_timeout"):
        env.submit(autostop=True, cleanup={"graceful": 1})


def test_from_batch_callable_must_return_iterable():
    env = LocalEnvironment("bad")
    env.from_batch(lambda: 5).sink(print)
    with pytest.raises(PipelineError, match="returned int, not an iterable"):
        env.submit(autostop=True)


def test_functions_accept_upstream_constructor_arguments():
    class Upstream(MapFunction):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def execute(self, data):
            self.logger.debug("index %s", self.ctx.parallel_index)
            return data * self.factor

    out: list = []
    env = LocalEnvironment("upstream")
    env.from_collection([1, 2, 3]).map(Upstream, 10, ctx=None, name="x").sink(Collector, out)
    env.submit(autostop=True)
    assert out == [10, 20, 30]


def test_sink_class_with_extra_args():
    out: list = []

    class Tagged(SinkFunction):
        def __init__(self, tag, store):
            super().__init__()
            self.tag, self.store = tag, store

        def execute(self, data):
            self.store.append((self.tag, data))

    env = LocalEnvironment("args")
    env.from_batch(Numbers, 3).sink(Tagged, "t", store=out)
    env.submit(autostop=True)
    assert out == [("t", 1), ("t", 2), ("t", 3)]
