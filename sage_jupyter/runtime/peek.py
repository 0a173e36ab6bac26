"""Peek: the newest records each stage emitted (sinks: received), as short reprs.

Each operator notes its latest batch (a reference and a time: two stores per batch) and, at
most every `SAMPLE_EVERY_S`, keeps the tail of a batch in a small ring. Peek reads the ring
plus the latest batch, so the newest records are always exact and, on a fast stream, older
ones are sampled.
Reprs are taken only when someone peeks (threads) or when an actor answers a status poll
(Ray). Memory is bounded: the latest batch (at most `MAX_BATCH` records and about 2 MB) and
fewer than 2 x `PEEK_KEEP` records in the ring, where a big record (over `BIG_RECORD_BYTES`,
judged by the last of its batch) is kept as its repr, not itself.
"""

from __future__ import annotations

import reprlib
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PEEK_KEEP = 10  # newest records kept per operator instance; peek(n) returns at most this many
REPR_LIMIT = 200  # characters of one record's repr
# The ring takes a batch's tail at most this often: every batch of an operator that sees at most
# 1,000 batches a second (any source taking >= 1 ms a record), one in a few of a faster one, so
# the ring costs at most ~0.1 % of a core whatever the rate.
SAMPLE_EVERY_S = 0.001
BIG_RECORD_BYTES = 64 * 2**10  # records bigger than this are kept as reprs (a 1 MB record is not held)
# The internal switch benchmarks flip to measure what sampling costs (bench_core "peek on vs off").
SAMPLING = True

Sample = tuple[float, str]  # (time the record's batch passed, repr of the record)

_repr = reprlib.Repr()
# Limits past the 200 characters kept: the kept prefix reads as repr() would, but a huge list
# or string costs no more than a few hundred characters (reprlib shortens the middle, after it).
_repr.maxlevel = 4
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 100
_repr.maxdict = 50
_repr.maxstring = _repr.maxother = _repr.maxlong = 5 * REPR_LIMIT


def short_repr(record: Any) -> str:
    """repr of a record, at most `REPR_LIMIT` characters (cut ones end with an ellipsis)."""
    try:
        text = _repr.repr(record)
    except Exception as exc:  # noqa: BLE001 - a user __repr__ that raises must not break a peek
        text = f"<{type(record).__name__}: repr() raised {type(exc).__name__}>"
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 1] + "\u2026"


class Shown(str):
    """A record kept as its repr already (it was big)."""

    __slots__ = ()


_getsizeof = sys.getsizeof
_now = time.time


class RecentRecords:
    """One operator instance's recent records. `offer(batch)` runs on the task's thread for
    every batch; `samples()` may run on any other (it copies what it reads first)."""

    __slots__ = ("_kept", "_last_kept", "_ring", "last", "last_at", "next_at")

    def __init__(self) -> None:
        self._ring: deque[tuple[float, list[Any]]] = deque()
        self._kept = 0  # records in the ring
        self.last: list[Any] | None = None  # the latest batch, and when it passed
        self.last_at = 0.0
        self._last_kept = False  # the latest batch's tail is in the ring
        self.next_at = 0.0  # when the ring takes a tail again

    def offer(self, batch: list[Any]) -> None:
        """The hot path: note the batch; keep its tail when the sampling period passed.
        A batch shorter than PEEK_KEEP does not hold the newest records alone: the tail of
        the batch before it is kept first, so they stay exact."""
        now = _now()
        if len(batch) < PEEK_KEEP and not self._last_kept and self.last:
            self.keep(self.last, self.last_at)
        self.last = batch
        self.last_at = now
        self._last_kept = now >= self.next_at
        if self._last_kept:
            self.next_at = now + SAMPLE_EVERY_S
            self.keep(batch, now)

    def keep(self, batch: list[Any], now: float) -> None:
        tail = batch[-PEEK_KEEP:]
        if not tail:
            return
        if _getsizeof(tail[-1]) > BIG_RECORD_BYTES:
            tail = [Shown(short_repr(record)) for record in tail]
        ring = self._ring
        ring.append((now, tail))
        kept = self._kept + len(tail)
        while kept - len(ring[0][1]) >= PEEK_KEEP:  # the newer tails hold PEEK_KEEP already
            kept -= len(ring.popleft()[1])
        self._kept = kept

    def samples(self) -> list[Sample]:
        """The newest records, oldest first, as (time, repr)."""
        last, last_at = self.last, self.last_at
        for _ in range(3):
            try:
                ring = list(self._ring)
                break
            except RuntimeError:  # mutated while copied: try again
                continue
        else:
            ring = []
        if last and (not ring or ring[-1][0] < last_at):  # the latest batch was not sampled
            ring.append((last_at, last[-PEEK_KEEP:]))
        out: list[tuple[float, Any]] = []
        for t, tail in reversed(ring):
            for record in reversed(tail):
                out.append((t, record))
                if len(out) == PEEK_KEEP:
                    break
            if len(out) == PEEK_KEEP:
                break
        return [(t, str.__str__(record) if type(record) is Shown else short_repr(record))
                for t, record in reversed(out)]


def check_peek_args(stage: Any, n: Any, labels: Sequence[str]) -> None:
    """Refuse a bad `peek(stage, n)`: ValueError for `n`, KeyError naming the known stages."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"peek(n={n!r}): n must be an integer >= 0")
    if stage is not None and stage not in labels:
        raise KeyError(f"peek(stage={stage!r}): no such stage; the stages are {', '.join(map(repr, labels))}")


def merge_samples(labels: Sequence[str], per_instance: Iterable[Mapping[str, list[Sample]]],
                  stage: str | None, n: int) -> dict[str, list[str]]:
    """Per stage label, the `n` newest reprs over all its instances, newest last."""
    wanted = list(labels) if stage is None else [stage]
    merged: dict[str, list[Sample]] = {label: [] for label in wanted}
    for samples in per_instance:
        for label, items in samples.items():
            if label in merged:
                merged[label].extend(items)
    out: dict[str, list[str]] = {}
    for label, items in merged.items():
        items.sort(key=lambda item: item[0])  # stable: one instance's order is kept
        out[label] = [text for _, text in items[-n:]] if n else []
    return out
