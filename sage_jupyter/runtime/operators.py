"""Operators run a micro-batch at a time: one user call per record, bookkeeping per batch.

`ChainRunner` drives one parallel instance of a chain (source or not). It is the same on
every backend: the thread backend calls it from a thread, the Ray backend from an actor.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, NoReturn

from . import peek
from .batch_sizes import MAX_BATCH, next_batch_size
from .channels import END, batch_bytes
from .context import RuntimeContext, attach_context
from .fusion import Fused, fusable
from .graph import StageSpec
from .limits import SourceBounds
from .peek import RecentRecords
from .plan import ChainSpec
from .routes import fan_out, untag

POLL_BACKOFF_MAX_S = 0.05

MakeContext = Callable[[str, int, int], RuntimeContext]


class Operator:
    """One stage instance: the user object, its execute function and its counters."""

    __slots__ = ("stage", "label", "index", "obj", "fn", "ctx", "records_in", "records_out", "closed", "recent",
                 "total")

    def __init__(self, stage: StageSpec, label: str, index: int, ctx: RuntimeContext) -> None:
        self.stage = stage
        self.label = label
        self.index = index
        self.ctx = ctx
        self.records_in = 0
        self.records_out = 0
        self.closed = False
        self.recent = RecentRecords()
        self.total: int | None = None  # a source's length, when it has one
        built = stage.factory()
        if stage.call == "method":
            attach_context(built, ctx)
            self.obj, self.fn = built, built.execute
        else:  # "plain": the callable itself; "iter": the iterable
            self.obj, self.fn = built, built
        if stage.kind == "source" and stage.bounded and stage.call != "plain":
            self.total = _length(built)

    def step(self) -> Callable[[list[Any]], list[Any] | None]:
        """A function that runs this operator over one batch."""
        fn, op, kind = self.fn, self, self.stage.kind

        if kind == "map":
            def run(batch: list[Any]) -> list[Any] | None:
                op.records_in += len(batch)
                # None drops it, as upstream; a comprehension, not map(): CPython then calls
                # a Python `fn` inline, about 40 ns a record less than from C
                out = [y for x in batch if (y := fn(x)) is not None]
                op.records_out += len(out)
                return out
        elif kind == "filter":
            def run(batch: list[Any]) -> list[Any] | None:
                op.records_in += len(batch)
                out = [x for x in batch if fn(x)]
                op.records_out += len(out)
                return out
        elif kind == "flatmap":
            ctx = self.ctx

            def run(batch: list[Any]) -> list[Any] | None:
                op.records_in += len(batch)
                out: list[Any] = []
                ctx.emit = out.append  # what `self.collect(x)` calls
                try:
                    for x in batch:
                        produced = fn(x)
                        if produced is not None:
                            out.extend(produced)
                finally:
                    ctx.emit = None
                op.records_out += len(out)
                return out
        elif kind == "comap":
            per_input = self._per_input_functions()

            def run(batch: list[Any]) -> list[Any] | None:
                tag, records = untag(batch, op.label)
                op.records_in += len(records)
                fn_of_input = per_input[tag]
                out = [y for x in records if (y := fn_of_input(x)) is not None]
                op.records_out += len(out)
                return out
        elif kind == "join":
            ctx = self.ctx
            routes = [self.stage.route(i) for i in range(len(self.stage.upstream))]
            keys = [route.key_factory() if route.key_factory else _no_key(self.label, i)
                    for i, route in enumerate(routes)]

            def run(batch: list[Any]) -> list[Any] | None:
                tag, records = untag(batch, op.label)
                key = keys[tag]
                op.records_in += len(records)
                out: list[Any] = []
                ctx.emit = out.append  # what `self.collect(x)` calls
                try:
                    for x in records:
                        produced = fn(x, key(x), tag)
                        if isinstance(produced, list):  # upstream: a list is many, anything else one
                            out.extend(y for y in produced if y is not None)
                        elif produced is not None:
                            out.append(produced)
                finally:
                    ctx.emit = None
                op.records_out += len(out)
                return out
        elif kind == "sink":
            def run(batch: list[Any]) -> list[Any] | None:
                for x in batch:
                    fn(x)
                op.records_in += len(batch)
                return None
        else:
            raise ValueError(f"{self.label}: a {kind} stage cannot follow another stage")
        return run

    def _per_input_functions(self) -> list[Callable[[Any], Any]]:
        """comap: `map0`, `map1`, ... of the object, or the plain callables, one per input."""
        count = len(self.stage.upstream)
        if self.stage.call != "method":
            return list(self.obj)
        return [getattr(self.obj, f"map{i}") for i in range(count)]

    def close(self) -> None:
        """Call the user's `close()` once."""
        if self.closed:
            return
        self.closed = True
        close = getattr(self.obj, "close", None) if self.stage.call == "method" else None
        if callable(close):
            close()


class ChainRunner:
    """Runs the operators of one chain instance in order over each batch."""

    def __init__(self, chain: ChainSpec, index: int, make_ctx: MakeContext,
                 bounds: SourceBounds | None = None) -> None:
        self.chain = chain
        self.index = index
        self._make_ctx = make_ctx
        self.bounds = bounds or SourceBounds()
        self.ops: list[Operator] = []
        self._sampling = peek.SAMPLING  # read once: the benchmark's switch
        self._steps: list[tuple[Operator, Callable[[list[Any]], list[Any] | None], RecentRecords | None]] = []
        self.current: Operator | None = None  # the operator running now, for error messages
        self.routing: str | None = None  # the key function partitioning the output now, likewise
        self.settle_calls: Callable[[], None] = _nothing  # set by open()

    def open(self) -> None:
        """Build every operator (user constructors run here, in the task's worker)."""
        caller = None  # the operators share one service caller: they run on one thread
        for stage, label in zip(self.chain.stages, self.chain.labels, strict=True):
            self._opening = label
            ctx = self._make_ctx(label, self.index, self.chain.parallelism)
            if caller is None:
                caller = ctx.services
            ctx.services = caller
            op = Operator(stage, label, self.index, ctx)
            self.ops.append(op)
            if stage.kind != "source":
                self._steps.append((op, op.step(), op.recent if self._sampling else None))
        self._opening = None
        # the lock-free service calls' counts, folded on this thread after every batch
        self.settle_calls = getattr(caller, "settle", None) or _nothing
        kinds = [op.stage.kind for op, _, _ in self._steps]
        self._fused = Fused([op for op, _, _ in self._steps], kinds) if fusable(kinds) else None

    _opening: str | None = None

    @property
    def failing_label(self) -> str:
        """Where an exception came from: the operator running or being built."""
        if self.current is not None:
            return self.current.label
        if self.routing is not None:
            return self.routing
        return self._opening or (self.ops[-1].label if self.ops else self.chain.labels[0])

    @property
    def source_total(self) -> int | None:
        """How many records this source instance will emit, when known (see `TaskStatus.total`)."""
        if not self.chain.is_source or not self.ops:
            return None
        return self.bounds.cap(self.ops[0].total)

    _fused: Fused | None = None

    def process(self, batch: list[Any]) -> list[Any] | None:
        """Run a batch through the operators after the source; what comes out (None when
        the chain ends in a sink)."""
        fused = self._fused
        if fused is None:
            return self._one_stage_at_a_time(batch)
        # The last records go one stage at a time, so that each stage's newest records (peek)
        # are exact: enough of them that every stage passes on PEEK_KEEP (see _kept_enough).
        keep = self._unfused_tail if self._sampling else 0
        head = batch[:-keep] if keep else batch
        if head:
            try:
                fused(head)
            except BaseException as exc:
                index = fused.culprit(exc)
                self.current = self._steps[index][0] if index is not None else None
                raise
        if len(head) == len(batch):
            return None
        self._tails += 1
        # whether the tail is long enough, judged on every batch until it is, then every 32nd
        # (a batch no longer than the tail says nothing about its length)
        judge = keep < len(batch) and not (self._tails & 31 and self._tail_long_enough)
        before = [op.records_in for op, _, _ in self._steps] if judge else []
        self._one_stage_at_a_time(batch[len(head):])
        if judge:
            self._tail_long_enough = self._kept_enough(before)
            if not self._tail_long_enough:
                self._unfused_tail = min(2 * keep, MAX_BATCH)  # stages drop records: a longer tail
        return None

    _unfused_tail = peek.PEEK_KEEP
    _tail_long_enough = False
    _tails = 0

    def _kept_enough(self, before: list[int]) -> bool:
        """Whether the tail just run gave every stage after the first PEEK_KEEP records in."""
        later = zip(self._steps[1:], before[1:], strict=True)
        return all(op.records_in - n >= peek.PEEK_KEEP for (op, _, _), n in later)

    def _one_stage_at_a_time(self, batch: list[Any]) -> list[Any] | None:
        for op, run, recent in self._steps:
            self.current = op
            out = run(batch)
            if recent is not None:
                if out:
                    recent.offer(out)
                elif out is None:  # a sink: what it received
                    recent.offer(batch)
            if not out:
                self.current = None
                return None
            batch = out
        self.current = None
        return batch

    def run_source(self, should_stop: Callable[[], bool], wait_stop: Callable[[float], Any],
                   emit: Callable[[list[Any]], None]) -> bool:
        """Pull records from the source until it ends or a stop is requested. A spent budget
        (max_records) or a passed deadline (max_duration) ends it as if it were exhausted.

        Returns True if the source was exhausted, False if it was stopped.
        """
        src = self.ops[0]
        stage = src.stage
        size = 1
        backoff = 0.0
        budget = self.bounds.budget
        duration = self.bounds.max_duration
        deadline = None if duration is None else time.monotonic() + duration
        recent = src.recent if self._sampling else None
        if stage.call == "iter":
            iterator = iter(src.obj)
        while True:
            if should_stop():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return True
            want = size if budget is None else budget.take(size, should_stop)
            if want == 0:  # the budget is spent (or a stop came while waiting for it)
                return not should_stop()
            t0 = time.perf_counter()
            self.current = src
            exhausted = False
            batch: list[Any] = []
            try:
                if stage.call == "iter":
                    batch = list(itertools.islice(iterator, want))
                    exhausted = len(batch) < want
                else:
                    fn = src.fn
                    for _ in range(want):
                        record = fn()
                        if record is None:
                            exhausted = stage.bounded  # an unbounded source is polled again
                            break
                        batch.append(record)
            finally:
                if budget is not None:
                    budget.settle(want - len(batch))
            self.current = None
            if batch:
                src.records_out += len(batch)
                if recent is not None:
                    recent.offer(batch)
                out = self.process(batch)
                self.settle_calls()
                if out:
                    blocked = time.perf_counter()
                    emit(out)
                    t0 += time.perf_counter() - blocked  # waiting on a full consumer is not a slow batch
                backoff = 0.0
            if exhausted:
                return True
            size = next_batch_size(size, len(batch), time.perf_counter() - t0, batch_bytes(batch))
            if not batch:  # an idle unbounded source: wait a little, but wake on stop
                backoff = min(POLL_BACKOFF_MAX_S, backoff * 2 or 0.001)
                if deadline is not None:
                    backoff = max(0.0, min(backoff, deadline - time.monotonic()))
                wait_stop(backoff)

    def run_to_end(self, get: Callable[[], Any] | None, routes: list[Callable[[list[Any]], None]],
                   should_stop: Callable[[], bool], wait_stop: Callable[[float], Any]) -> bool:
        """Run until this instance's input ends: the source is exhausted or stopped, or one
        end marker came from every upstream instance. Then close every operator.

        Returns True if a stop request ended it early. The caller forwards end markers.
        """
        stopped = False
        if self.chain.is_source:
            stopped = not self.run_source(should_stop, wait_stop, self._blaming(fan_out(routes), routes))
        else:
            assert get is not None, "a chain with upstreams reads its input channel"
            feed = self.feeder(routes)
            while not feed(get()):
                pass
        self.close()
        return stopped

    def feeder(self, routes: list[Callable[[list[Any]], None]]) -> Callable[[Any], bool]:
        """The input step of a chain with upstreams: a function taking one item (a batch or
        an end marker), running a batch through the operators and sending what comes out;
        it returns True once an end marker came from every upstream instance. The thread
        backend calls it with what its channel gives; a Ray actor as pushes arrive."""
        send = self._blaming(fan_out(routes), routes)
        process, settle_calls = self.process, self.settle_calls
        expected = self.chain.ends_expected
        ends = 0

        def feed(item: Any) -> bool:
            nonlocal ends
            if item is END:
                ends += 1
                return ends >= expected
            out = process(item)
            settle_calls()
            if out:
                send(out)
            return False

        return feed

    def close(self) -> None:
        """Close every operator in chain order; the first error is raised after all ran,
        blamed on the operator whose `close()` raised it."""
        first: BaseException | None = None
        culprit: Operator | None = None
        for op in self.ops:
            self.current = op
            try:
                op.close()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if first is None:
                    first, culprit = exc, op
        self.current = culprit
        self.settle_calls()
        if first is not None:
            raise first

    def _blaming(self, send: Callable[[list[Any]], None],
                 routes: list[Callable[[list[Any]], None]]) -> Callable[[list[Any]], None]:
        """`send`, noting which key function runs while a keyed route partitions a batch."""
        keyed = [(route, label) for route in routes if (label := getattr(route, "label", None)) is not None]
        if not keyed:
            return send
        if len(routes) == 1:
            label = keyed[0][1]

            def send_one(batch: list[Any]) -> None:
                self.routing = label
                send(batch)
                self.routing = None

            return send_one

        def send_each(batch: list[Any]) -> None:
            for route in routes:
                self.routing = getattr(route, "label", None)
                route(batch)
            self.routing = None

        return send_each

    def samples(self) -> dict[str, list[peek.Sample]]:
        """The recent records of each operator of this instance, by label (for peek)."""
        return {op.label: op.recent.samples() for op in list(self.ops)}

    def close_quietly(self) -> None:
        for op in self.ops:
            try:
                op.close()
            except BaseException:  # noqa: BLE001 - the job is already ending on an error
                pass


def _length(source: Any) -> int | None:
    """len() of a source object that has one (list, range, sized iterable, BatchFunction with
    __len__); None if it has none or it fails."""
    if not hasattr(type(source), "__len__"):
        return None
    try:
        n = len(source)
    except Exception:  # noqa: BLE001 - a broken __len__ only means the total is unknown
        return None
    return n if isinstance(n, int) and n >= 0 else None


def _no_key(label: str, position: int) -> NoReturn:
    raise ValueError(f"{label}: input {position} has no key; a join needs keyby(...) on every input")


def _nothing() -> None:
    return None
