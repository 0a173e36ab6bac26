"""The driver's table of a job's Ray tasks: one record per chain instance (its actor, where
it runs, its state and counters) and the outstanding `run()`/`poll()` calls the watcher
waits on. One lock guards it; the backend and the watcher share it."""

from __future__ import annotations

import threading
from typing import Any, Literal

from ..backend import chain_statuses
from ..job import ErrorInfo, TaskState, TaskStatus
from ..peek import Sample
from ..plan import ChainSpec
from .links import Backlog, add_backlog

CallKind = Literal["run", "poll"]


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
        # From the actor's polls: source total, input backlog, peek samples (ChainActor._progress).
        self.progress: dict[str, Any] = {}
        self.run_ref: Any = None
        self.poll_ref: Any = None
        self.ended = False

    def statuses(self, sent: int = 0, window_full: bool = False) -> list[TaskStatus]:
        """`sent`: records the producers pushed to this task and it has not finished (the batch
        it runs now among them); `window_full`: a producer's window to it is full."""
        progress = self.progress
        live = not self.ended
        return chain_statuses(self.chain, self.index, self.state, self.counters, self.error, self.failing,
                              self.actor_id or "ray", self.node, self.node_label, total=progress.get("total"),
                              queued=max(0, sent - progress.get("taking", 0)) if live else 0,
                              input_full=window_full and live)

    def samples(self) -> dict[str, list[Sample]]:
        samples: dict[str, list[Sample]] = self.progress.get("samples", {})
        return samples


def incoming_backlog(tasks: list[RayTask]) -> Backlog:
    """Per consumer task: the records its live producers last said they pushed to it and it
    has not finished, and whether any producer's window to it is full."""
    into: Backlog = {}
    for task in tasks:
        if task.ended:
            continue
        for target, (records, full) in task.progress.get("sent", {}).items():
            add_backlog(into, target, records, full)
    return into


class TaskTable:
    """Every task of one job and the calls in flight to their actors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: list[RayTask] = []
        self.calls: dict[Any, tuple[RayTask, CallKind]] = {}
        self.killing = False  # the actors are being killed: their deaths are expected
        self.all_ended = threading.Event()

    def snapshot(self) -> list[RayTask]:
        with self.lock:
            return list(self.tasks)

    def track(self, task: RayTask, ref: Any, kind: CallKind) -> None:
        """Caller holds the lock."""
        if kind == "run":
            task.run_ref = ref
        else:
            task.poll_ref = ref
        self.calls[ref] = (task, kind)

    def outstanding(self) -> list[Any]:
        with self.lock:
            return list(self.calls)

    def take(self, ref: Any) -> tuple[RayTask, CallKind] | None:
        with self.lock:
            return self.calls.pop(ref, None)

    def take_poll(self, task: RayTask) -> Any:
        """The task's outstanding poll, no longer watched; None when there is none."""
        with self.lock:
            ref = task.poll_ref if task.poll_ref in self.calls else None
            if ref is not None:
                del self.calls[ref]
            return ref

    def end(self, task: RayTask, state: TaskState, error: ErrorInfo | None) -> bool:
        """Record the task's end; False when it had ended already (each end is reported once)."""
        with self.lock:
            if task.ended:
                return False
            task.ended = True
            task.state, task.error = state, error
            self.calls.pop(task.poll_ref, None)  # a poll left: read in join()
            if all(t.ended for t in self.tasks):
                self.all_ended.set()
            return True

    def start_killing(self) -> list[RayTask] | None:
        """Mark the actors as being killed; the tasks the first time, None after."""
        with self.lock:
            if self.killing:
                return None
            self.killing = True
            return list(self.tasks)
