"""Ray backend: each chain instance runs in a non-detached Ray actor (`chain_actor`).

The instances of a stage are spread over the alive nodes that can host them (a soft node
affinity per instance), with 0 CPUs unless the stage's `ray_remote_args` ask for some. The
job fails, naming the stage and what it asked for, when an actor is not placed within
`placement_timeout`, and names the node when an actor dies with its node (`watcher`).

Producers push micro-batches straight to their consumers' actors (`links`). End markers
flow in-band as on threads. The driver keeps one record per task (`task_table`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ray

from ..backend import JobRuntime, TaskBackend
from ..job import TaskStatus
from ..peek import Sample
from ..plan import Plan
from .budget import BoundsSpec, RemoteBudgetActor
from ..threads import spawn
from .chain_actor import RemoteChainActor
from .cluster import actor_options, ensure_ray, hosting_nodes, node_label
from .options import describe_demand
from .orphans import NAMESPACE, actor_name, kill_actor, wait_dead
from .pickling import dumps
from .services import RayServiceHost
from .task_table import RayTask, TaskTable, incoming_backlog
from .watcher import TaskWatcher


class RayBackend(TaskBackend):
    name = "ray"

    def __init__(self, placement_timeout: float = 60.0) -> None:
        self.placement_timeout = placement_timeout
        self.table = TaskTable()
        self._stopping = False
        self._aborted = False
        self._watcher: threading.Thread | None = None
        self._budget_actor: Any = None  # max_records shared by several source actors
        self._budget_name = ""

    @property
    def tasks(self) -> list[RayTask]:
        return self.table.snapshot()

    # ---- start -----------------------------------------------------------------------

    def launch(self, plan: Plan, job: JobRuntime) -> None:
        ensure_ray()
        table = self.table
        # Pickle everything first: a failure here leaves no actor behind.
        payloads = {(c.id, i): dumps((c, i)) for c, i in plan.instances()}
        services = {name: host.actor if isinstance(host, RayServiceHost) else None
                    for name, host in job.services.items()}
        handles: dict[int, list[tuple[str, Any]]] = {}  # per chain: (task name, actor) of each instance
        made: dict[tuple[int, int], RayTask] = {}
        bounds = self._bounds(plan, job)
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
                         job.job_name, job.env_name, services, outputs, bounds if chain.is_source else None)
                handles[chain.id].append((chain.task_name(index), actor))
                made[(chain.id, index)] = task = RayTask(chain, index, actor, name)
                with table.lock:
                    table.tasks.append(task)  # known to join() at once, should launch fail now
        self._await_placement(list(made.values()), job)
        created = [made[(chain.id, i)] for chain, i in plan.instances()]
        with table.lock:
            table.tasks = created
            for task in created:
                table.track(task, task.actor.run.remote(), "run")
                table.track(task, task.actor.poll.remote(), "poll")
            if self._aborted:
                for task in created:
                    task.actor.abort.remote()
            elif self._stopping:
                for task in created:
                    if task.chain.is_source:
                        task.actor.stop.remote()
        watcher = TaskWatcher(table, job, self._release)
        self._watcher = spawn(watcher.watch, f"sage:{job.job_name}:ray-tasks", job.output)

    def _bounds(self, plan: Plan, job: JobRuntime) -> BoundsSpec | None:
        """The sources' limits; several source actors share one budget actor."""
        if not job.limits.bounded:
            return None
        sources = sum(c.parallelism for c in plan.chains if c.is_source)
        if job.limits.max_records is not None and sources > 1:
            self._budget_name = actor_name(job.job_id, "budget")
            self._budget_actor = RemoteBudgetActor.options(name=self._budget_name, namespace=NAMESPACE).remote(
                job.limits.max_records)
        return BoundsSpec(job.limits, sources, self._budget_actor)

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

    def _release(self) -> None:
        """Every task ended: their actors have nothing left to do, even when the job keeps
        its services up (no autostop), so they go now; `join` confirms their death."""
        for task in self.table.start_killing() or []:
            kill_actor(task.actor)
        if self._budget_actor is not None:  # the sources are done with it
            kill_actor(self._budget_actor)

    # ---- stopping ----------------------------------------------------------------------

    def request_stop(self) -> None:
        table = self.table
        with table.lock:
            self._stopping = True
            sources = [t for t in table.tasks if t.chain.is_source and not t.ended]
        for task in sources:
            task.actor.stop.remote()

    def abort(self) -> None:
        table = self.table
        with table.lock:
            first = not self._aborted
            self._aborted = True
            live = [t for t in table.tasks if not t.ended]
        if first:
            for task in live:
                task.actor.abort.remote()

    def join(self, timeout: float) -> list[str]:
        """Wait for the tasks to end, then kill every actor and wait for Ray to show them
        dead; returns the tasks whose actor could not be confirmed dead."""
        deadline = time.monotonic() + timeout
        table = self.table
        tasks = table.snapshot()
        if not tasks:
            return self._kill_budget(timeout)
        if all(t.run_ref is not None for t in tasks):  # else launch failed half way
            table.all_ended.wait(timeout)
        with table.lock:
            table.killing = True
        for task in tasks:
            kill_actor(task.actor)  # again if _release did: harmless, and covers a race with it
        if self._budget_actor is not None:
            kill_actor(self._budget_actor)
        left = set(wait_dead([t.actor_name for t in tasks] + [self._budget_name],
                             max(0.5, deadline - time.monotonic())))
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(max(0.1, deadline - time.monotonic()))
        _read_stale_polls(tasks)
        return [t.name for t in tasks if t.actor_name in left] + \
            (["record budget"] if self._budget_name in left else [])

    def _kill_budget(self, timeout: float) -> list[str]:
        if self._budget_actor is None:
            return []
        kill_actor(self._budget_actor)
        return ["record budget"] if wait_dead([self._budget_name], timeout) else []

    def task_statuses(self) -> list[TaskStatus]:
        tasks = self.table.snapshot()
        backlog = incoming_backlog(tasks)
        return [s for t in tasks for s in t.statuses(*backlog.get(t.name, (0, False)))]

    def samples(self) -> list[dict[str, list[Sample]]]:
        return [t.samples() for t in self.table.snapshot()]


def _read_stale_polls(tasks: list[RayTask]) -> None:
    """Read polls that were outstanding when the actors died, so Ray does not log their
    errors as unhandled."""
    refs = [t.poll_ref for t in tasks if t.poll_ref is not None]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.2) if refs else ([], [])
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - expected: the actor is dead
            pass
