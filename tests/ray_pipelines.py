"""User functions and services for tests that run on Ray actors as well as on threads.

Results leave the workers through files (a Ray actor cannot append to a test's list), and
this module is pickled by value so Ray workers need not import it from the tests folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ray.cloudpickle

from sage_jupyter import BaseService, MapFunction, SinkFunction
from sage_jupyter.runtime.ray import orphans

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FileSink(SinkFunction):
    """Keeps its records and writes them, in arrival order, to `<dir>/<tag>-<index>.json`
    when closed (so a file also proves that close() ran)."""

    def __init__(self, directory: str, tag: str = "sink") -> None:
        super().__init__()
        self.directory, self.tag, self.records = directory, tag, []

    def execute(self, data) -> None:
        self.records.append(data)

    def close(self) -> None:
        path = Path(self.directory) / f"{self.tag}-{self.ctx.parallel_index}.json"
        path.write_text(json.dumps({"pid": os.getpid(), "records": self.records}))


def read_sinks(directory, tag: str = "sink") -> dict[int, list]:
    """Records per sink instance, from the files `FileSink` wrote."""
    out = {}
    for path in Path(directory).glob(f"{tag}-*.json"):
        out[int(path.stem.rsplit("-", 1)[1])] = json.loads(path.read_text())["records"]
    return out


def sink_pids(directory, tag: str = "sink") -> set[int]:
    return {json.loads(p.read_text())["pid"] for p in Path(directory).glob(f"{tag}-*.json")}


class Boom(MapFunction):
    """Raises ZeroDivisionError on the record `at`, naming the process it ran in."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def execute(self, data):
        if data == self.at:
            raise ZeroDivisionError(f"record {data} in pid {os.getpid()}")
        return data


class CallJournal(MapFunction):
    """Adds one through the `journal` service, in the upstream call form."""

    def execute(self, data):
        return self.call_service("journal", data, method="add", timeout=30)


class Journal(BaseService):
    """Counts calls; `stop()` and `cleanup()` append to a file with the process id, so a
    test can see from outside that they ran, and where."""

    def __init__(self, path: str, hang_in_cleanup: float = 0.0) -> None:
        super().__init__()
        self.path, self.hang, self.calls = path, hang_in_cleanup, 0

    def _log(self, event: str) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), "calls": self.calls}) + "\n")

    def add(self, x, y=1):
        self.calls += 1
        return x + y

    def shout(self, text: str) -> str:
        print(f"service says {text}")
        return text.upper()

    def fail(self):
        raise KeyError("no such key")

    def stop(self) -> None:
        self._log("stop")

    def cleanup(self) -> None:
        if self.hang:
            time.sleep(self.hang)
        self._log("cleanup")


def journal(path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def live_actors(job) -> list[dict]:
    """The job's actors that Ray still lists as alive (by their names)."""
    return orphans.sage_actors(orphans.actor_prefix(job.job_id))


def job_actors(job) -> set[str]:
    """Ids of every Ray actor the job's status names (tasks and services), dead or alive."""
    status = job.status()
    tasks = {t.worker for t in status.tasks if t.worker not in ("thread", "ray")}
    return tasks | {s.actor_id for s in status.services if s.actor_id}


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Stuck(MapFunction):
    """Never returns from its first record (a stage that ignores stop requests)."""

    def execute(self, data):
        time.sleep(3600)


class BrokenSetup(BaseService):
    def setup(self) -> None:
        raise ConnectionError("database unreachable")


class SlowSink(SinkFunction):
    """Consumes about `rate` records per second."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.pause, self.n = 100 / rate, 0

    def execute(self, data) -> None:
        self.n += 1
        if self.n % 100 == 0:
            time.sleep(self.pause)
