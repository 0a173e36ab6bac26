"""The actor of one chain instance: it hosts a `ChainRunner` (the steps the thread backend
uses too) and answers polls (counters, captured output) and stop/abort on threads of their
own, never queued behind data.

A source runs its loop in `run()`. A chain with upstreams runs each batch in the `push()`
that brought it, on the one data thread: handing batches to a second thread made two
threads take turns on the GIL for every batch, which cost about a fifth of the throughput.
`run()` then only waits for the input to end. A push returns once its batch went through,
so the backlog waits in Ray, bounded by each producer's window (`links.INFLIGHT_PER_LINK`);
the producers report it (`Link.backlog`) and the driver adds it up per consumer."""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from ..channels import END, Aborted
from ..context import RuntimeContext, make_logger
from ..job import TaskState
from ..operators import ChainRunner
from ..routes import end_targets, make_route
from ..plan import ChainSpec
from ..services import error_info
from .budget import BoundsSpec
from .capture import capture_output
from .cluster import where_am_i
from .links import Backlog, Link, add_backlog
from .pickling import loads
from .service_actor import actor_service_caller, remote_class

POLL_WAIT_S = 0.25  # a status poll answers at the latest after this, sooner on output
OUTPUT_COALESCE_S = 0.02


class ChainActor:
    """One chain instance. `run()` is the task (its result is the task's end); `push()`
    takes its upstreams' batches."""

    def __init__(self, payload: bytes, task_name: str, first_label: str, index: int,
                 job_name: str, env_name: str, services: dict[str, Any],
                 outputs: list[list[tuple[str, Any]]], bounds: BoundsSpec | None = None) -> None:
        self._capture = capture_output()
        self._bounds = bounds  # sources of a bounded run (max_records / max_duration)
        self._payload = payload
        self._task_name = task_name
        self._first_label = first_label
        self._index = index
        self._job_name = job_name
        self._env_name = env_name
        self._service_targets = services
        self._outputs = outputs  # per output edge: (task name, actor) of each consumer instance
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, Any]] = {}
        self._stop = threading.Event()
        self.aborted = False
        self._runner: ChainRunner | None = None
        self._caller: Any = None
        self._links: list[list[Link]] = []
        self._finished = False
        # the input side (chains with upstreams), driven by push() on the data thread
        self._feed: Any = None  # ChainRunner.feeder, set by run() once the operators are open
        self._opened = threading.Event()  # run() opened the operators (or gave up): pushes may go
        self._input_done = threading.Event()  # every end marker came, or a batch failed, or abort
        self._input_over = False  # later pushes are dropped
        self._failure: BaseException | None = None  # what a batch raised in push()
        self._taking = 0  # records of the batch push() is running now
        self._busy = threading.Lock()  # held by push() while a batch runs

    # ---- data ----------------------------------------------------------------------

    @ray.method(concurrency_group="data")
    def push(self, packet: tuple[str, int, Any]) -> None:
        """Run a producer's batch (or END) in that producer's order; returns once it went
        through (the producer's window is the backpressure). One argument (link key, number,
        batch), not three: Ray serialises each argument apart, about 5 % of a call here."""
        key, seq, batch = packet
        expected = self._next.get(key, 0)
        if seq != expected:  # an earlier call of this link has not run yet
            self._early.setdefault(key, {})[seq] = batch
            return
        early = self._early.get(key)
        self._take(batch)
        expected += 1
        while early and expected in early:
            self._take(early.pop(expected))
            expected += 1
        self._next[key] = expected

    def _take(self, item: Any) -> None:
        if not self._opened.is_set():
            self._opened.wait()
        if self._input_over:  # the input ended, failed or was aborted: drop
            return
        with self._busy:
            self._taking = len(item) if item is not END else 0
            try:
                done = self._feed(item)
            except BaseException as exc:  # noqa: BLE001 - run() raises it (Aborted: a send gave up)
                self._failure, done = exc, True
            self._taking = 0
        if done:
            self._input_over = True
            self._input_done.set()

    # ---- the task --------------------------------------------------------------------

    @ray.method(concurrency_group="run")
    def run(self) -> dict[str, Any]:
        state, error, failing = TaskState.RUNNING, None, None
        runner = None
        try:
            chain, index = loads(self._payload)
            self._caller = actor_service_caller(self._service_targets)
            bounds = self._bounds.build() if self._bounds is not None else None
            runner = self._runner = ChainRunner(chain, index, self._make_ctx, bounds)
            # One ordering key per output edge: a stream connected to itself feeds one consumer twice.
            self._links = [[Link(handle, f"{self._task_name}>{e}", self, target) for target, handle in consumers]
                           for e, consumers in enumerate(self._outputs)]
            routes = [make_route(edge, index, [link.put for link in links])
                      for edge, links in zip(chain.outputs, self._links, strict=True)]
            runner.open()
            state = self._drive(chain, runner, routes)
        except Aborted:
            state = TaskState.STOPPED
            if runner is not None and self._input_idle():
                runner.close_quietly()
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            failing = runner.failing_label if runner is not None else self._first_label
            error = error_info(f"stage {failing!r} (instance {self._index})", exc)
            state = TaskState.FAILED
            if runner is not None and self._input_idle():
                runner.close_quietly()
        finally:
            self._input_over = True  # late pushes are dropped
            self._opened.set()
        output = self._capture.drain()
        self._finished = True
        self._capture.ready.set()  # a waiting poll answers now
        return {"state": state, "error": error, "counters": self._counters(), "failing": failing,
                "output": output, "progress": self._progress()}

    def _drive(self, chain: ChainSpec, runner: ChainRunner, routes: list[Any]) -> TaskState:
        stop = self._stop
        if chain.is_source:
            stopped = runner.run_to_end(None, routes, stop.is_set, stop.wait)
        else:
            self._feed = runner.feeder(routes)
            self._opened.set()
            self._input_done.wait()
            if self._failure is not None:
                raise self._failure
            stopped = False
            if not self.aborted:
                runner.close()
        if self.aborted:
            raise Aborted()
        for edge, links in zip(chain.outputs, self._links, strict=True):
            for i in end_targets(edge, self._index, len(links)):
                links[i].put(END)
        for links in self._links:
            for link in links:
                link.flush()
        return TaskState.STOPPED if stopped else TaskState.FINISHED

    def _input_idle(self, timeout: float = 1.0) -> bool:
        """No batch is running in push(), waiting at most `timeout` for one to end (an abort
        wakes run() while user code may still run there; its operators are closed only after)."""
        if not self._busy.acquire(timeout=timeout):
            return False
        self._busy.release()
        return True

    def _make_ctx(self, label: str, index: int, parallelism: int) -> RuntimeContext:
        return RuntimeContext(name=label, job_name=self._job_name, env_name=self._env_name,
                              parallel_index=index, parallelism=parallelism, services=self._caller,
                              logger=make_logger(self._job_name, label))

    def _counters(self) -> dict[str, tuple[int, int]]:
        runner = self._runner
        if runner is None:
            return {}
        return {op.label: (op.records_in, op.records_out) for op in list(runner.ops)}

    def _progress(self) -> dict[str, Any]:
        """Source total, input backlog and peek samples (reprs taken here, a few per poll)."""
        runner = self._runner
        return {"total": runner.source_total if runner is not None else None,
                "taking": self._taking, "sent": self._backlog(),
                "samples": runner.samples() if runner is not None else {}}

    def _backlog(self) -> Backlog:
        """Per consumer instance: the records pushed to it and not yet taken, and whether
        this producer's window to it is full (its next batch waits)."""
        sent: Backlog = {}
        for links in list(self._links):
            for link in links:
                add_backlog(sent, link.target, *link.backlog())
        return sent

    # ---- control -----------------------------------------------------------------------

    @ray.method(concurrency_group="poll")
    def poll(self) -> dict[str, Any]:
        """Counters and captured output; waits up to `POLL_WAIT_S` for output to show up."""
        if not self._finished and self._capture.ready.wait(POLL_WAIT_S) and not self._finished:
            time.sleep(OUTPUT_COALESCE_S)  # gather a burst of prints into one answer
        return {"counters": self._counters(), "output": self._capture.drain(), "progress": self._progress()}

    @ray.method(concurrency_group="control")
    def where(self) -> tuple[str, str]:
        """(actor id, node id): answered once the actor is placed and up."""
        return where_am_i()

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        """Graceful: a source stops producing; its end markers drain the pipeline."""
        self._stop.set()

    @ray.method(concurrency_group="control")
    def abort(self) -> None:
        """Forced: drop later batches and wake every wait in this actor."""
        self.aborted = True
        self._stop.set()
        self._input_over = True
        self._opened.set()
        self._input_done.set()


RemoteChainActor: Any = remote_class(concurrency_groups={"data": 1, "run": 1, "poll": 1, "control": 1})(ChainActor)
