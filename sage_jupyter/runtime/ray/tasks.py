"""Ray backend: each chain instance runs in a non-detached Ray actor hosting a `ChainRunner`.

The instances of a stage are spread over the alive nodes that can host them (a soft node
affinity per instance), with 0 CPUs unless the stage's `ray_remote_args` ask for some. The
job fails, naming the stage and what it asked for, when an actor is not placed within
`placement_timeout`, and names the node when an actor dies with its node.

Producers push micro-batches straight to their consumers' actors, keeping at most
`INFLIGHT_PER_LINK` unacknowledged calls per link (backpressure) and numbering them, so a
consumer restores each link's order even though its threaded actor may run calls out of
order. End markers flow in-band as on threads. A driver thread watches every actor's
`run()` result, long-polls counters and captured output, and reports each task's end once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..backend import JobRuntime, TaskBackend, chain_statuses
from ..channels import END, Aborted, Channel
from ..context import RuntimeContext, make_logger
from ..job import ErrorInfo, TaskState, TaskStatus
from ..operators import ChainRunner, end_targets, make_route
from ..peek import Sample
from ..plan import ChainSpec, Plan
from ..services import error_info
from ..threads import spawn
from .capture import capture_output, deliver_output
from .cluster import actor_options, describe_node, ensure_ray, hosting_nodes, node_alive, node_label, where_am_i
from .options import describe_demand
from .orphans import NAMESPACE, actor_name, kill_actor, wait_dead
from .pickling import dumps, loads
from .services import RayServiceHost, actor_service_caller, remote_class

INFLIGHT_PER_LINK = 4  # unacknowledged batches per producer->consumer link
INBOX_CAPACITY = 8  # batches a consumer queues before its pushes wait
POLL_WAIT_S = 0.25  # a status poll answers at the latest after this, sooner on output
OUTPUT_COALESCE_S = 0.02
SETTLE_S = 0.25  # how often a blocked sender looks at the abort flag

log = logging.getLogger("sage_jupyter.runtime")


class _Link:
    """One producer instance's way to one consumer actor."""

    __slots__ = ("actor", "handle", "inflight", "key", "seq")

    def __init__(self, handle: Any, key: str, actor: ChainActor) -> None:
        self.handle = handle
        self.key = key
        self.seq = 0
        self.inflight: deque[Any] = deque()
        self.actor = actor

    def put(self, batch: Any) -> None:
        if len(self.inflight) >= INFLIGHT_PER_LINK:
            self._settle(self.inflight.popleft())
        self.inflight.append(self.handle.push.remote(self.key, self.seq, batch))
        self.seq += 1

    def flush(self) -> None:
        while self.inflight:
            self._settle(self.inflight.popleft())

    def _settle(self, ref: Any) -> None:
        while True:
            try:
                ray.get(ref, timeout=SETTLE_S)
                return
            except GetTimeoutError:
                if self.actor.aborted:
                    raise Aborted() from None
            except RayActorError:  # the consumer died; the driver reports why
                raise Aborted() from None


class ChainActor:
    """One chain instance. `run()` is the task (its result is the task's end); `push()`
    receives batches on its own thread, so stop, abort and polls are never queued
    behind data."""

    def __init__(self, payload: bytes, task_name: str, first_label: str, index: int,
                 job_name: str, env_name: str, services: dict[str, Any],
                 outputs: list[list[Any]]) -> None:
        self._capture = capture_output()
        self._payload = payload
        self._task_name = task_name
        self._first_label = first_label
        self._index = index
        self._job_name = job_name
        self._env_name = env_name
        self._service_targets = services
        self._outputs = outputs
        self._inbox = Channel(INBOX_CAPACITY)
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, Any]] = {}
        self._stop = threading.Event()
        self.aborted = False
        self._runner: ChainRunner | None = None
        self._caller: Any = None
        self._links: list[list[_Link]] = []
        self._finished = False

    # ---- data ----------------------------------------------------------------------

    @ray.method(concurrency_group="data")
    def push(self, key: str, seq: int, batch: Any) -> None:
        """Queue a producer's batch (or END) in that producer's order."""
        expected = self._next.get(key, 0)
        if seq != expected:  # an earlier call of this link has not run yet
            self._early.setdefault(key, {})[seq] = batch
            return
        early = self._early.get(key)
        try:
            self._inbox.put(batch)
            expected += 1
            while early and expected in early:
                self._inbox.put(early.pop(expected))
                expected += 1
        except Aborted:  # the task ended (failure or abort): drop
            pass
        self._next[key] = expected

    # ---- the task --------------------------------------------------------------------

    @ray.method(concurrency_group="run")
    def run(self) -> dict[str, Any]:
        state, error, failing = TaskState.RUNNING, None, None
        runner = None
        try:
            chain, index = loads(self._payload)
            self._caller = actor_service_caller(self._service_targets)
            runner = self._runner = ChainRunner(chain, index, self._make_ctx)
            # One ordering key per output edge: a stream connected to itself feeds one consumer twice.
            self._links = [[_Link(h, f"{self._task_name}>{e}", self) for h in handles]
                           for e, handles in enumerate(self._outputs)]
            routes = [make_route(edge, index, [link.put for link in links])
                      for edge, links in zip(chain.outputs, self._links, strict=True)]
            runner.open()
            state = self._drive(chain, runner, routes)
        except Aborted:
            state = TaskState.STOPPED
            if runner is not None:
                runner.close_quietly()
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            failing = runner.failing_label if runner is not None else self._first_label
            error = error_info(f"stage {failing!r} (instance {self._index})", exc)
            state = TaskState.FAILED
            if runner is not None:
                runner.close_quietly()
        finally:
            self._inbox.abort()  # late or blocked pushes return at once
        output = self._capture.drain()
        self._finished = True
        self._capture.ready.set()  # a waiting poll answers now
        return {"state": state, "error": error, "counters": self._counters(), "failing": failing,
                "output": output}

    def _drive(self, chain: ChainSpec, runner: ChainRunner, routes: list[Any]) -> TaskState:
        stop = self._stop
        stopped = runner.run_to_end(self._inbox.get, routes, stop.is_set, stop.wait)
        if self.aborted:
            raise Aborted()
        for edge, links in zip(chain.outputs, self._links, strict=True):
            for i in end_targets(edge, self._index, len(links)):
                links[i].put(END)
        for links in self._links:
            for link in links:
                link.flush()
        return TaskState.STOPPED if stopped else TaskState.FINISHED

    def _make_ctx(self, label: str, index: int, parallelism: int) -> RuntimeContext:
        return RuntimeContext(name=label, job_name=self._job_name, env_name=self._env_name,
                              parallel_index=index, parallelism=parallelism, services=self._caller,
                              logger=make_logger(self._job_name, label))

    def _counters(self) -> dict[str, tuple[int, int]]:
        runner = self._runner
        if runner is None:
            return {}
        return {op.label: (op.records_in, op.records_out) for op in list(runner.ops)}

    # ---- control -----------------------------------------------------------------------

    @ray.method(concurrency_group="poll")
    def poll(self) -> dict[str, Any]:
        """Counters and captured output; waits up to `POLL_WAIT_S` for output to show up."""
        if not self._finished and self._capture.ready.wait(POLL_WAIT_S) and not self._finished:
            time.sleep(OUTPUT_COALESCE_S)  # gather a burst of prints into one answer
        return {"counters": self._counters(), "output": self._capture.drain()}

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
        """Forced: drop queued batches and wake every wait in this actor."""
        self.aborted = True
        self._stop.set()
        self._inbox.abort()


RemoteChainActor: Any = remote_class(concurrency_groups={"data": 1, "run": 1, "poll": 1, "control": 1})(ChainActor)


class RayTask:
    """The driver's record of one task instance and its actor."""

    def __init__(self, chain: ChainSpec, index: int, actor: Any, actor_name: str) -> None:
        self.chain = chain
        self.index = index
        self.name = chain.task_name(index)
        self.actor = actor
        self.actor_name = actor_name
        self.actor_id = ""  # known once placed (`where`)
        self.node: str | None = None
        self.node_label: str | None = None
        self.state = TaskState.CREATED
        self.error: ErrorInfo | None = None
        self.failing: str | None = None
        self.counters: dict[str, tuple[int, int]] = {}
        self.run_ref: Any = None
        self.poll_ref: Any = None
        self.ended = False

    def statuses(self) -> list[TaskStatus]:
        return chain_statuses(self.chain, self.index, self.state, self.counters, self.error, self.failing,
                              self.actor_id or "ray", self.node, self.node_label)


class RayBackend(TaskBackend):
    name = "ray"

    def __init__(self, placement_timeout: float = 60.0) -> None:
        self.placement_timeout = placement_timeout
        self.tasks: list[RayTask] = []
        self._job: JobRuntime | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._aborted = False
        self._killing = False
        self._all_ended = threading.Event()
        self._watcher: threading.Thread | None = None
        self._refs: dict[Any, tuple[RayTask, str]] = {}

    # ---- start -----------------------------------------------------------------------

    def launch(self, plan: Plan, job: JobRuntime) -> None:
        ensure_ray()
        self._job = job
        # Pickle everything first: a failure here leaves no actor behind.
        payloads = {(c.id, i): dumps((c, i)) for c, i in plan.instances()}
        services = {name: host.actor if isinstance(host, RayServiceHost) else None
                    for name, host in job.services.items()}
        handles: dict[int, list[Any]] = {}
        made: dict[tuple[int, int], RayTask] = {}
        for chain in reversed(plan.chains):  # consumers first: producers get their handles
            outputs = [handles[edge.dst] for edge in chain.outputs]
            handles[chain.id] = []
            remote_args = chain.stages[0].ray_remote_args  # chained stages have equal ones
            spread = hosting_nodes(remote_args) if chain.parallelism > 1 else []
            for index in range(chain.parallelism):
                name = actor_name(job.job_id, f"task:{chain.id}:{index}")
                actor = RemoteChainActor.options(
                    name=name, namespace=NAMESPACE, **actor_options(remote_args, index, spread),
                ).remote(payloads[(chain.id, index)], chain.task_name(index), chain.labels[0], index,
                         job.job_name, job.env_name, services, outputs)
                handles[chain.id].append(actor)
                made[(chain.id, index)] = task = RayTask(chain, index, actor, name)
                with self._lock:
                    self.tasks.append(task)  # known to join() at once, should launch fail now
        self._await_placement(list(made.values()), job)
        created = [made[(chain.id, i)] for chain, i in plan.instances()]
        with self._lock:
            self.tasks = created
            for task in created:
                task.run_ref = task.actor.run.remote()
                task.poll_ref = task.actor.poll.remote()
                self._refs[task.run_ref] = (task, "run")
                self._refs[task.poll_ref] = (task, "poll")
            if self._aborted:
                for task in created:
                    task.actor.abort.remote()
            elif self._stopping:
                for task in created:
                    if task.chain.is_source:
                        task.actor.stop.remote()
        self._watcher = spawn(self._watch, f"sage:{job.job_name}:ray-tasks", job.output)

    def _await_placement(self, tasks: list[RayTask], job: JobRuntime) -> None:
        """Wait until every actor is placed and up (its node known), at most
        `placement_timeout`; else fail naming the stages and the resources they asked for
        (the dispatcher's cleanup then kills every actor made)."""
        pending = {task.actor.where.remote(): task for task in tasks}
        deadline = time.monotonic() + self.placement_timeout
        while pending and time.monotonic() < deadline and not job.stop_requested.is_set():
            ready, _ = ray.wait(list(pending), num_returns=len(pending),
                                timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            for ref in ready:
                task = pending.pop(ref)
                task.actor_id, task.node = ray.get(ref)
        for task in tasks:
            task.node_label = node_label(task.node)
        if pending and not job.stop_requested.is_set():
            asked = sorted({(t.chain.labels[0], describe_demand(t.chain.stages[0].ray_remote_args))
                            for t in pending.values()})
            what = "; ".join(f"stage {label!r} asked for {demand}" for label, demand in asked)
            raise RuntimeError(f"Ray could not place {len(pending)} actor(s) within placement_timeout="
                               f"{self.placement_timeout:g} s: {what}. No alive node has these resources "
                               "free; lower the request or add a node that has them")

    # ---- watching ----------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            with self._lock:
                refs = list(self._refs)
            if not refs:
                self._release()
                return
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if not ready:
                continue
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                with self._lock:
                    entry = self._refs.pop(ref, None)
                if entry is None:  # a poll dropped when its task ended (read in join)
                    continue
                task, kind = entry
                try:
                    if kind == "poll":
                        self._polled(task, ref)
                    else:
                        self._ended(task, ref)
                except BaseException as exc:
                    log.exception("ray backend: watching %s failed", task.name)
                    if kind == "run":
                        self._report(task, TaskState.FAILED, error_info(f"task {task.name!r}", exc))

    def _polled(self, task: RayTask, ref: Any) -> None:
        try:
            answer = ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor died; its run() result says how
            return
        task.counters = answer["counters"]
        deliver_output(answer["output"], self._job.output if self._job else None)
        with self._lock:
            if not task.ended and task.state is TaskState.CREATED:
                task.state = TaskState.RUNNING  # its actor is up
            if not task.ended and not self._killing:
                task.poll_ref = task.actor.poll.remote()
                self._refs[task.poll_ref] = (task, "poll")

    def _ended(self, task: RayTask, ref: Any) -> None:
        self._last_poll(task)
        state, error = TaskState.FAILED, None
        try:
            result = ray.get(ref)
            state, error = result["state"], result["error"]
            task.counters = result["counters"] or task.counters
            task.failing = result["failing"]
            deliver_output(result["output"], self._job.output if self._job else None)
        except RayActorError as exc:
            if self._killing:  # we killed it at the end of the job
                state = TaskState.STOPPED
            elif task.node is not None and not node_alive(task.node):
                error = ErrorInfo(
                    where=f"task {task.name!r} (Ray actor {task.actor_id})",
                    type=type(exc).__name__,
                    message=f"the Ray actor running this task died because its {describe_node(task.node)} "
                            "died; the job's actors on other nodes were stopped and killed",
                    traceback=str(exc))
            else:
                error = ErrorInfo(
                    where=f"task {task.name!r} (Ray actor {task.actor_id})",
                    type=type(exc).__name__,
                    message="the Ray actor running this task died: it was killed from outside the "
                            "job, or its process crashed or ran out of memory",
                    traceback=str(exc))
        except BaseException as exc:  # noqa: BLE001 - a bug or a result that cannot be read
            error = error_info(f"task {task.name!r} (Ray actor {task.actor_id})", exc)
        self._report(task, state, error)

    def _last_poll(self, task: RayTask) -> None:
        """Deliver the output of the task's outstanding poll before that of its end, to
        keep its order (a finished run wakes the poll at once)."""
        with self._lock:
            ref = task.poll_ref if task.poll_ref in self._refs else None
            if ref is not None:
                del self._refs[ref]
        if ref is None:
            return
        try:
            answer = ray.get(ref, timeout=1.0)
        except Exception:  # noqa: BLE001 - dead actor, or a slow one: join() reads it
            return
        deliver_output(answer["output"], self._job.output if self._job else None)

    def _report(self, task: RayTask, state: TaskState, error: ErrorInfo | None) -> None:
        with self._lock:
            if task.ended:
                return
            task.ended = True
            task.state, task.error = state, error
            self._refs.pop(task.poll_ref, None)  # a poll left: read in join()
            if all(t.ended for t in self.tasks):
                self._all_ended.set()
        if self._job is not None:
            self._job.on_task_end(task.name, state, error)

    def _release(self) -> None:
        """Every task ended: their actors have nothing left to do, even when the job keeps
        its services up (no autostop), so they go now; `join` confirms their death."""
        with self._lock:
            if self._killing:
                return
            self._killing = True
            tasks = list(self.tasks)
        for task in tasks:
            kill_actor(task.actor)

    # ---- stopping ----------------------------------------------------------------------

    def request_stop(self) -> None:
        with self._lock:
            self._stopping = True
            sources = [t for t in self.tasks if t.chain.is_source and not t.ended]
        for task in sources:
            task.actor.stop.remote()

    def abort(self) -> None:
        with self._lock:
            first = not self._aborted
            self._aborted = True
            live = [t for t in self.tasks if not t.ended]
        if first:
            for task in live:
                task.actor.abort.remote()

    def join(self, timeout: float) -> list[str]:
        """Wait for the tasks to end, then kill every actor and wait for Ray to show them
        dead; returns the tasks whose actor could not be confirmed dead."""
        deadline = time.monotonic() + timeout
        with self._lock:
            tasks = list(self.tasks)
        if not tasks:
            return []
        if all(t.run_ref is not None for t in tasks):  # else launch failed half way
            self._all_ended.wait(timeout)
        with self._lock:
            self._killing = True
        for task in tasks:
            kill_actor(task.actor)  # again if _release did: harmless, and covers a race with it
        left = set(wait_dead([t.actor_name for t in tasks], max(0.5, deadline - time.monotonic())))
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(max(0.1, deadline - time.monotonic()))
        self._read_stale_polls(tasks)
        return [t.name for t in tasks if t.actor_name in left]

    def _read_stale_polls(self, tasks: list[RayTask]) -> None:
        """Read polls that were outstanding when the actors died, so Ray does not log
        their errors as unhandled."""
        refs = [t.poll_ref for t in tasks if t.poll_ref is not None]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2) if refs else ([], [])
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - expected: the actor is dead
                pass

    def task_statuses(self) -> list[TaskStatus]:
        with self._lock:
            tasks = list(self.tasks)
        return [s for t in tasks for s in t.statuses()]

    def samples(self) -> list[dict[str, list[Sample]]]:
        return []
