"""Code defined in a module Ray workers cannot import (like this test file) still runs on
Ray: such modules are shipped by value. Nothing here registers itself by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from sage_jupyter import BaseService, JobState, KeyByFunction, LocalEnvironment, MapFunction, SinkFunction

pytestmark = pytest.mark.ray


class Offset(BaseService):
    def __init__(self, by: int) -> None:
        super().__init__()
        self.by = by

    def add(self, x: int) -> int:
        return x + self.by


class AddOffset(MapFunction):
    def execute(self, data):
        return self.call_service["offset"].add(data)


class Parity(KeyByFunction):
    def execute(self, data):
        return data % 2


class AppendToFile(SinkFunction):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def execute(self, data):
        with open(self.path, "a") as f:
            f.write(f"{self.ctx.parallel_index} {data}\n")


def test_classes_from_an_unimportable_module_run_on_ray(ray_session, tmp_path):
    out = tmp_path / "out.txt"
    env = LocalEnvironment("shipped", backend="ray")
    env.register_service("offset", Offset, 100)
    env.from_batch(range(20)).map(AddOffset).keyby(Parity).sink(AppendToFile, str(out), parallelism=2)
    job = env.submit(autostop=True)
    assert job.state is JobState.FINISHED
    rows = [tuple(map(int, line.split())) for line in Path(out).read_text().splitlines()]
    assert sorted(v for _, v in rows) == list(range(100, 120))
    by_parity = {v % 2: i for i, v in rows}
    assert all(by_parity[v % 2] == i for i, v in rows)  # each key stayed on one instance
