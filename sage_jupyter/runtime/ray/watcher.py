"""The driver thread that watches a job's chain actors: it waits on every actor's `run()`
(the task's end, reported once) and long-polls counters and captured output, and turns an
actor's death into an error that says why (killed, crashed, or its node died)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

from ..backend import JobRuntime
from ..job import ErrorInfo, TaskState
from ..services import error_info
from .capture import deliver_output
from .cluster import describe_node, node_alive
from .task_table import RayTask, TaskTable

log = logging.getLogger("sage_jupyter.runtime")


class TaskWatcher:
    """Runs `watch()` on one driver thread until no call is outstanding, then `on_idle()`."""

    def __init__(self, table: TaskTable, job: JobRuntime, on_idle: Callable[[], None]) -> None:
        self.table = table
        self.job = job
        self.on_idle = on_idle

    def watch(self) -> None:
        table = self.table
        while True:
            refs = table.outstanding()
            if not refs:
                self.on_idle()
                return
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if not ready:
                continue
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                entry = table.take(ref)
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
                        self.report(task, TaskState.FAILED, error_info(f"task {task.name!r}", exc))

    def _polled(self, task: RayTask, ref: Any) -> None:
        try:
            answer = ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor died; its run() result says how
            return
        task.counters = answer["counters"]
        task.progress = answer.get("progress") or task.progress
        deliver_output(answer["output"], self.job.output)
        table = self.table
        with table.lock:
            if not task.ended and task.state is TaskState.CREATED:
                task.state = TaskState.RUNNING  # its actor is up
            if not task.ended and not table.killing:
                table.track(task, task.actor.poll.remote(), "poll")

    def _ended(self, task: RayTask, ref: Any) -> None:
        self._last_poll(task)
        state, error = TaskState.FAILED, None
        try:
            result = ray.get(ref)
            state, error = result["state"], result["error"]
            task.counters = result["counters"] or task.counters
            task.progress = result.get("progress") or task.progress
            task.failing = result["failing"]
            deliver_output(result["output"], self.job.output)
        except RayActorError as exc:
            if self.table.killing:  # we killed it at the end of the job
                state = TaskState.STOPPED
            else:
                error = death_error(task, exc)
        except BaseException as exc:  # noqa: BLE001 - a bug or a result that cannot be read
            error = error_info(f"task {task.name!r} (Ray actor {task.actor_id})", exc)
        self.report(task, state, error)

    def _last_poll(self, task: RayTask) -> None:
        """Deliver the output of the task's outstanding poll before that of its end, to
        keep its order (a finished run wakes the poll at once)."""
        ref = self.table.take_poll(task)
        if ref is None:
            return
        try:
            answer = ray.get(ref, timeout=1.0)
        except Exception:  # noqa: BLE001 - dead actor, or a slow one: join() reads it
            return
        deliver_output(answer["output"], self.job.output)

    def report(self, task: RayTask, state: TaskState, error: ErrorInfo | None) -> None:
        if self.table.end(task, state, error):
            self.job.on_task_end(task.name, state, error)


def death_error(task: RayTask, exc: RayActorError) -> ErrorInfo:
    """Why the task's actor died, as far as the driver can tell."""
    where = f"task {task.name!r} (Ray actor {task.actor_id})"
    if task.node is not None and not node_alive(task.node):
        return ErrorInfo(where=where, type=type(exc).__name__,
                         message=f"the Ray actor running this task died because its {describe_node(task.node)} "
                                 "died; the job's actors on other nodes were stopped and killed",
                         traceback=str(exc))
    return ErrorInfo(where=where, type=type(exc).__name__,
                     message="the Ray actor running this task died: it was killed from outside the "
                             "job, or its process crashed or ran out of memory",
                     traceback=str(exc))
