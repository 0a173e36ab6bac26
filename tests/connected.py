"""CoMap and Join functions shared by the multi-input tests (threads, Ray, JobManager)."""

from __future__ import annotations

import json
from pathlib import Path

from sage_jupyter import BaseCoMapFunction, BaseJoinFunction


class Tag(BaseCoMapFunction):
    """Marks each record with the input it came from; drops negative records (None)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = 0
        self.closed_after = None

    def map0(self, data):
        self.seen += 1
        return None if data < 0 else ("a", data)

    def map1(self, data):
        self.seen += 1
        return None if data < 0 else ("b", data)

    def close(self):
        self.closed_after = self.seen


class Tag3(Tag):
    def map2(self, data):
        self.seen += 1
        return ("c", data)


class InnerJoin(BaseJoinFunction):
    """Keeps every record per key and emits each new pair as soon as both sides have one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sides: tuple[dict, dict] = ({}, {})

    def execute(self, payload, key, tag):
        self.sides[tag].setdefault(key, []).append(payload)
        others = self.sides[1 - tag].get(key, [])
        return [(payload, o) if tag == 0 else (o, payload) for o in others]


class CollectingJoin(InnerJoin):
    """The same join, emitting through `self.collect` instead of returning a list."""

    def execute(self, payload, key, tag):
        for pair in super().execute(payload, key, tag):
            self.collect(pair)
        return None


def read_json_sinks(directory, tag: str = "sink") -> list:
    """Every record the `FileSink` instances (tests/ray_pipelines.py) of `tag` wrote, as tuples, in
    instance order."""
    out: list = []
    for path in sorted(Path(directory).glob(f"{tag}-*.json")):
        out.extend(tuple(r) if isinstance(r, list) else r for r in json.loads(path.read_text())["records"])
    return out


def expected_join(left, right, key) -> list:
    """Brute-force inner join: every (l, r) pair with equal keys."""
    return sorted((a, b) for a in left for b in right if key(a) == key(b))
