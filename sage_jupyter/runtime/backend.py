"""The interface between the dispatcher and a way of running tasks (threads, Ray actors)."""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .context import RuntimeContext
from .job import ErrorInfo, TaskState, TaskStatus
from .limits import SourceLimits
from .peek import Sample
from .plan import ChainSpec, Plan


@dataclass
class JobRuntime:
    """What a backend gets from the dispatcher to run one job's tasks."""

    job_id: str
    job_name: str
    env_name: str
    make_ctx: Callable[[str, int, int], RuntimeContext]
    # Every task instance calls this exactly once when it ends, from any thread.
    on_task_end: Callable[[str, TaskState, ErrorInfo | None], None]
    stop_requested: threading.Event
    services: dict[str, Any]  # name -> ServiceHost, for backends that place calls themselves
    output: "Callable[[str, str], None] | None" = None  # (stream, text) from workers
    limits: SourceLimits = SourceLimits()  # max_records / max_duration of the job's sources


def operator_state(task_state: TaskState, failing: str | None, label: str) -> TaskState:
    """The state of one operator of a chained task: only the operator that raised is FAILED;
    the others of its chain were stopped by that failure."""
    if task_state is TaskState.FAILED and failing is not None and label != failing:
        return TaskState.STOPPED
    return task_state


class TaskBackend(abc.ABC):
    name = "abstract"

    @abc.abstractmethod
    def launch(self, plan: Plan, job: JobRuntime) -> None:
        """Start every task instance of the plan; return without waiting for them."""

    @abc.abstractmethod
    def request_stop(self) -> None:
        """Graceful: sources stop producing; in-flight records drain, end markers flow."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Forced: drop in-flight records and wake every blocked task so it exits."""

    @abc.abstractmethod
    def join(self, timeout: float) -> list[str]:
        """Wait for task workers to be gone; return the names of those still alive."""

    @abc.abstractmethod
    def task_statuses(self) -> list[TaskStatus]:
        """Per operator instance: state and record counts, cheap enough to call at 10 Hz."""

    @abc.abstractmethod
    def samples(self) -> list[dict[str, list[Sample]]]:
        """Per task instance: the recent records of each of its operators, by label (for peek)."""


def chain_statuses(chain: ChainSpec, index: int, state: TaskState, counters: dict[str, tuple[int, int]],
                   error: ErrorInfo | None, failing: str | None, worker: str = "thread",
                   node: str | None = None, node_label: str | None = None, total: int | None = None,
                   queued: int = 0, input_full: bool = False) -> list[TaskStatus]:
    """One status per operator of a chain instance, for every backend. The error goes to the
    operator that raised (`failing`), or to all of them when that is unknown. `total` is the
    source's (the chain's first operator), `queued`/`input_full` describe the chain's input,
    which its first operator reads."""
    if failing is not None and failing not in chain.labels:  # a key function: shown on the stage
        failing = chain.labels[-1]  # it partitions for, the last of this chain
    out = []
    for position, label in enumerate(chain.labels):
        rin, rout = counters.get(label, (0, 0))
        err = error if error is not None and failing in (label, None) else None
        head = position == 0
        out.append(TaskStatus(f"{label}[{index}]", label, index, operator_state(state, failing, label), rin, rout,
                              err, worker, node, node_label, total=total if head and chain.is_source else None,
                              queued=queued if head else 0, input_full=input_full and head))
    return out
