"""The one job-status model, data only: states, immutable snapshots and the cleanup report.

Every view (widget, magics, sidebar comm, JobManager protocol) reads `JobStatus` snapshots
made here; none keeps a copy of state of its own. `JobStatus.to_dict`/`JobStatus.from_dict`
is the one serializer, shared with the wire. The handle lives in `handle.py`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class JobState(str, enum.Enum):
    """Life cycle of a job. FINISHED, STOPPED and FAILED are terminal and are set only
    after every service of the job was cleaned."""

    CREATED = "CREATED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.STOPPED, JobState.FAILED)

    def __str__(self) -> str:
        return self.value


class TaskState(str, enum.Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value


class ServiceState(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CLEANED = "cleaned"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ErrorInfo:
    """A failure, with where it happened: `traceback` holds the user's frames only,
    `full_traceback` every frame (the runtime's too)."""

    where: str
    type: str
    message: str
    traceback: str
    full_traceback: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.type}: {self.message}"


@dataclass(frozen=True)
class TaskStatus:
    """One operator instance: `stage` names the operator, `index` its parallel instance."""

    name: str
    stage: str
    index: int
    state: TaskState
    records_in: int
    records_out: int
    error: ErrorInfo | None = None
    worker: str = "thread"  # "thread" or the Ray actor id running it
    node: str | None = None  # Ray node id (hex) of the actor's node; None on threads
    node_label: str | None = None  # what views show: its IP, plus a short id if IPs repeat
    # Progress: records a source instance will emit, when known (a sized iterable, a
    # BatchFunction with __len__, capped by max_records); None if unknown or not a source.
    total: int | None = None
    # Backpressure: records waiting in this instance's input channel (0 for sources and for
    # the later operators of a chained task), and whether that channel is full (its producers wait).
    queued: int = 0
    input_full: bool = False


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    kind: str  # "thread" or "ray"
    state: ServiceState
    calls: int
    actor_id: str | None = None
    error: ErrorInfo | None = None
    node: str | None = None  # Ray node id (hex) of the actor's node; None on threads
    node_label: str | None = None  # what views show: its IP, plus a short id if IPs repeat


@dataclass(frozen=True)
class StageInfo:
    """A node of the logical graph, for pictures of the pipeline."""

    name: str
    kind: str
    parallelism: int
    upstream: tuple[str, ...]


@dataclass(frozen=True)
class HookOutcome:
    """What happened when one hook ran: ok, error, timeout or skipped; for a `setup()` or
    `start()` still running when the job stopped, "late" (it returned, then cleanup ran)
    or "timeout" (still running: left running, no hook runs after it)."""

    outcome: str
    duration_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "skipped")


@dataclass(frozen=True)
class ServiceCleanup:
    """Cleanup of one service: its `stop()` and `cleanup()` hooks and, for a Ray actor,
    whether the actor was killed. `setup` is set only when the stop came while `setup()`
    or `start()` still ran."""

    name: str
    kind: str
    stop: HookOutcome
    cleanup: HookOutcome
    killed: bool | None = None  # None: not an actor
    duration_s: float = 0.0
    setup: HookOutcome | None = None  # set when a stop came while setup() or start() ran
    start_error: str | None = None  # what setup() or start() raised: the service FAILED

    @property
    def ok(self) -> bool:
        """Its cleanup went well (hooks ran, actor killed, no start hook overran the stop)."""
        overran = self.setup is not None and self.setup.outcome != "late"
        return self.stop.ok and self.cleanup.ok and self.killed is not False and not overran

    @property
    def cleaned(self) -> bool:
        """It ran and was cleaned: False for a service that failed to start."""
        return self.ok and self.start_error is None

    def describe(self) -> str:
        if self.cleaned:
            return "ok" if self.setup is None else f"ok ({self.setup.error})"
        parts = [f"failed to start: {self.start_error}"] if self.start_error else []
        if self.setup is not None and self.setup.error:
            parts.append(self.setup.error)
        for hook, res in (("stop", self.stop), ("cleanup", self.cleanup)):
            if not res.ok:
                parts.append(f"{hook}() {res.outcome}" + (f": {res.error}" if res.error else ""))
        if self.killed is False:
            parts.append("actor not killed")
        return "; ".join(parts)


@dataclass(frozen=True)
class CleanupReport:
    """What autostop (or stop, or failure) did to each service, in cleanup order."""

    services: tuple[ServiceCleanup, ...]
    reason: str  # "finished", "stopped" or "failed"
    tasks_left_running: tuple[str, ...] = ()
    duration_s: float = 0.0
    calls_left_running: tuple[str, ...] = ()  # service calls (timed out or async) still running

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.services) and not self.tasks_left_running and not self.calls_left_running

    def __getitem__(self, name: str) -> ServiceCleanup:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r} in this cleanup report")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobStatus:
    """An immutable snapshot of a job at one moment."""

    job_id: str
    name: str
    state: JobState
    backend: str
    autostop: bool
    created_at: float
    started_at: float | None
    ended_at: float | None
    tasks: tuple[TaskStatus, ...]
    services: tuple[ServiceStatus, ...]
    stages: tuple[StageInfo, ...] = ()
    error: ErrorInfo | None = None
    cleanup_report: CleanupReport | None = None
    location: str = "local"  # "local" or "host:port" of a JobManager
    taken_at: float = field(default_factory=time.time)

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else self.taken_at
        return max(0.0, end - self.started_at)

    @property
    def records_in(self) -> int:
        """Records that reached the sinks."""
        return sum(t.records_in for t in self.tasks if t.stage.startswith("sink"))

    @property
    def records_out(self) -> int:
        """Records produced by the sources."""
        return sum(t.records_out for t in self.tasks if t.stage.startswith("source"))

    def task(self, name: str) -> TaskStatus:
        for t in self.tasks:
            if t.name == name or t.stage == name:
                return t
        raise KeyError(f"no task {name!r} in job {self.name!r}")

    def service(self, name: str) -> ServiceStatus:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r} in job {self.name!r}")

    def derived(self) -> dict[str, Any]:
        """The fields that follow from the others, carried in every payload so that no view
        (the TypeScript sidebar included) works them out; `from_dict` ignores them."""
        return {"elapsed_s": self.elapsed_s, "records_in": self.records_in, "records_out": self.records_out,
                "terminal": self.state.terminal}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as strings), for comms and the wire: the fields, then
        `derived()`."""
        result: dict[str, Any] = _jsonable(asdict(self))
        result.update(self.derived())
        return result

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobStatus:
        """Inverse of `to_dict`, used by the JobManager client."""
        return status_from_dict(d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def status_from_dict(d: dict[str, Any]) -> JobStatus:
    """Inverse of `JobStatus.to_dict`, used by the JobManager client."""

    def err(e: dict[str, Any] | None) -> ErrorInfo | None:
        return ErrorInfo(**e) if e else None

    def hook(h: dict[str, Any]) -> HookOutcome:
        return HookOutcome(**h)

    report = d.get("cleanup_report")
    return JobStatus(
        job_id=d["job_id"],
        name=d["name"],
        state=JobState(d["state"]),
        backend=d["backend"],
        autostop=d["autostop"],
        created_at=d["created_at"],
        started_at=d["started_at"],
        ended_at=d["ended_at"],
        tasks=tuple(
            TaskStatus(**{**t, "state": TaskState(t["state"]), "error": err(t.get("error"))})
            for t in d["tasks"]
        ),
        services=tuple(
            ServiceStatus(**{**s, "state": ServiceState(s["state"]), "error": err(s.get("error"))})
            for s in d["services"]
        ),
        stages=tuple(StageInfo(**{**s, "upstream": tuple(s["upstream"])}) for s in d.get("stages", ())),
        error=err(d.get("error")),
        cleanup_report=None
        if not report
        else CleanupReport(
            services=tuple(
                ServiceCleanup(**{**s, "stop": hook(s["stop"]), "cleanup": hook(s["cleanup"]),
                                  "setup": hook(s["setup"]) if s.get("setup") else None})
                for s in report["services"]
            ),
            reason=report["reason"],
            tasks_left_running=tuple(report.get("tasks_left_running", ())),
            duration_s=report.get("duration_s", 0.0),
            calls_left_running=tuple(report.get("calls_left_running", ())),
        ),
        location=d.get("location", "local"),
        taken_at=d.get("taken_at", time.time()),
    )


StatusListener = Callable[[JobStatus], None]


def __getattr__(name: str) -> Any:
    # `from sage_jupyter.runtime.job import JobHandle` predates handle.py; import lazily (no circle).
    if name == "JobHandle":
        from .handle import JobHandle

        return JobHandle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
