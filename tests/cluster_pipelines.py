"""User code for the cluster tests: functions that say which node ran them. Pickled by value,
so the cluster's workers need not import the tests folder."""

from __future__ import annotations

import sys
import time

import ray
import ray.cloudpickle

from sage_jupyter import BaseService, MapFunction, SourceFunction

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


class Where(MapFunction):
    """Tags each record with the node and the instance that mapped it."""

    def execute(self, data):
        return (data, node_id(), self.ctx.parallel_index)


class Locator(BaseService):
    """A service that says where it runs."""

    def node(self) -> str:
        return node_id()


class AskLocator(MapFunction):
    def execute(self, data):
        return (data, self.call_service["locator"].node())


class Pace(SourceFunction):
    """An unbounded source, a record every `interval` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__()
        self.interval, self.n = interval, 0

    def execute(self):
        time.sleep(self.interval)
        self.n += 1
        return self.n
