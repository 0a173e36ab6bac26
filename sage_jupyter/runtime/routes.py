"""How batches travel from one chain instance to the next: one route per output edge
(pointwise, broadcast, by key, round robin), the input tag a multi-input stage needs, and
which consumer instances get a producer's end marker. Both backends use these; only the
`put` functions they are given differ (a channel's, a Ray link's)."""

from __future__ import annotations

import itertools
import zlib
from typing import Any, Callable, Iterable

from .plan import EdgeSpec


class TaggedBatch(list[Any]):
    """A batch bound for a multi-input stage (comap, join): its records, and the index of the
    input they came from. Pickles as (tag, records), so every transport carries it."""

    __slots__ = ("tag",)

    def __init__(self, tag: int, records: Iterable[Any]) -> None:
        super().__init__(records)
        self.tag = tag

    def __reduce__(self) -> tuple[type[TaggedBatch], tuple[int, list[Any]]]:
        return (TaggedBatch, (self.tag, list(self)))


def untag(batch: list[Any], label: str) -> tuple[int, list[Any]]:
    """The input index and records of a batch reaching a multi-input stage."""
    if not isinstance(batch, TaggedBatch):
        raise TypeError(f"{label}: a multi-input stage got a batch without its input index")
    return batch.tag, batch


def fan_out(routes: list[Callable[[list[Any]], None]]) -> Callable[[list[Any]], None]:
    """One send function over every output edge (none: the records are dropped)."""
    if len(routes) == 1:
        return routes[0]

    def send(batch: list[Any]) -> None:
        for route in routes:
            route(batch)

    return send


def stable_hash(key: Any) -> int:
    """A hash equal in every process (Python salts str hashes per process)."""
    if isinstance(key, int):
        return key
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, bytes):
        return zlib.crc32(key)
    if isinstance(key, tuple):
        h = 0x345678
        for item in key:
            h = (h * 1000003) ^ stable_hash(item)
        return h & 0xFFFFFFFFFFFF
    return hash(key)


def make_route(edge: EdgeSpec, index: int, put: list[Callable[[Any], None]]) -> Callable[[list[Any]], None]:
    """How one producer instance sends a batch over `edge`; `put[i]` feeds consumer i."""
    n = len(put)
    if edge.tag is not None:  # a multi-input consumer: say which of its inputs this is
        put = [_tagging(p, edge.tag) for p in put]
    if edge.mode == "pointwise":
        return put[index]
    if edge.mode == "broadcast":
        def broadcast(batch: list[Any]) -> None:
            for p in put:
                p(batch)
        return broadcast
    if edge.mode == "hash":
        key = edge.key_factory() if edge.key_factory else (lambda x: x)

        def by_key(batch: list[Any]) -> None:
            buckets: list[list[Any]] = [[] for _ in range(n)]
            for x in batch:
                buckets[stable_hash(key(x)) % n].append(x)
            for i, bucket in enumerate(buckets):
                if bucket:
                    put[i](bucket)
        by_key.label = f"keyby:{_key_name(key)}"  # type: ignore[attr-defined]  # blamed if the key raises
        return by_key
    counter = itertools.count(index)  # rebalance, staggered by producer

    def round_robin(batch: list[Any]) -> None:
        put[next(counter) % n](batch)
    return round_robin


def _key_name(key: Callable[[Any], Any]) -> str:
    owner = getattr(key, "__self__", None)  # a KeyByFunction's bound execute
    if owner is not None and not isinstance(owner, type) and getattr(key, "__name__", "") == "execute":
        return type(owner).__name__
    name = getattr(key, "__name__", None) or type(key).__name__
    return "lambda" if name == "<lambda>" else str(name)


def end_targets(edge: EdgeSpec, index: int, n: int) -> range:
    """Consumer instances that get this producer's end marker over `edge`."""
    return range(index, index + 1) if edge.mode == "pointwise" else range(n)


def _tagging(put: Callable[[Any], None], tag: int) -> Callable[[list[Any]], None]:
    def put_tagged(batch: list[Any]) -> None:
        put(TaggedBatch(tag, batch))

    return put_tagged
