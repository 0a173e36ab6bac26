"""This kernel's jobs and services, as the magics, the status table and the sidebar see them.

A job is listed with its handle and widget; everything shown about it is read from the
handle's `JobStatus` snapshots. Services declared with `%%sage_service` are kept here and
registered in every later `%%sage_pipeline` environment.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..runtime import registry
from ..runtime.handle import JobHandle, JobHandleLike
from ..runtime.job import JobStatus
from . import templates
from .widget import JobWidget

MAX_LISTED = 100  # ended jobs beyond this are forgotten, oldest first


@dataclass
class TrackedJob:
    name: str
    handle: JobHandleLike  # local or remote
    widget: JobWidget
    cell_id: str | None = None

    @property
    def snapshot(self) -> JobStatus:
        """The job's latest snapshot, as its widget last showed it (pushed or polled)."""
        return self.widget.snapshot

    def status(self) -> JobStatus:
        return self.handle.status()


@dataclass(frozen=True)
class ServiceDef:
    name: str
    cls: type
    remote: bool = False


class KernelJobs:
    """Ordered, thread-safe list of this kernel's jobs."""

    def __init__(self) -> None:
        self._jobs: list[TrackedJob] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (from any thread; it must be quick) when a job is added or
        removed, or one of their widgets showed a new snapshot."""
        self._listeners.append(listener)

    def _changed(self, _snapshot: Any = None) -> None:
        for listener in list(self._listeners):
            listener()

    def next_name(self, prefix: str = "pipeline") -> str:
        taken = {j.name for j in self.all()}
        while True:
            name = f"{prefix}-{next(self._numbers)}"
            if name not in taken:
                return name

    def add(self, job: TrackedJob, at: int | None = None) -> TrackedJob:
        """List a job at the end, or at position `at` (where the run it replaces was)."""
        with self._lock:
            self._jobs.insert(len(self._jobs) if at is None else at, job)
            ended = [j for j in self._jobs if j.snapshot.state.terminal]
            for old in ended[: max(0, len(self._jobs) - MAX_LISTED)]:
                self._jobs.remove(old)
        job.widget.listeners.append(self._changed)
        self._changed()
        return job

    def remove(self, job: TrackedJob) -> int | None:
        """Forget a job; return the position it had (None if it was not listed)."""
        with self._lock:
            if job not in self._jobs:
                return None
            at = self._jobs.index(job)
            self._jobs.remove(job)
        self._changed()
        return at

    def clear_finished(self) -> list[TrackedJob]:
        """Forget every ended job (the sidebar's "Clear finished"); return them."""
        with self._lock:
            ended = [j for j in self._jobs if j.snapshot.state.terminal]
            self._jobs = [j for j in self._jobs if j not in ended]
        if ended:
            self._changed()
        return ended

    def all(self) -> list[TrackedJob]:
        with self._lock:
            return list(self._jobs)

    def find(self, name: str) -> TrackedJob | None:
        """The newest job with this name or job id."""
        for job in reversed(self.all()):
            if job.name == name:
                return job
        for job in reversed(self.all()):
            if getattr(job.handle, "job_id", None) == name:
                return job
        return None

    def previous_runs(self, name: str | None, cell_id: str | None) -> list[TrackedJob]:
        """Jobs a new run replaces: same cell, or same name."""
        return [j for j in self.all() if (cell_id is not None and j.cell_id == cell_id)
                or (name is not None and j.name == name)]

    def unique_name(self, name: str) -> str:
        taken = {j.name for j in self.all()}
        if name not in taken:
            return name
        for n in itertools.count(2):
            if f"{name}#{n}" not in taken:
                return f"{name}#{n}"
        raise AssertionError("unreachable")

    def rows(self) -> list[dict[str, str]]:
        now = time.time()
        out = []
        for job in self.all():
            try:
                snapshot = job.status()
            except Exception:  # noqa: BLE001 - an unreachable remote job is still listed
                snapshot = job.snapshot
            row = templates.job_row(snapshot, now)
            row["name"] = job.name
            out.append(row)
        return out

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()
        self._changed()


JOBS = KernelJobs()
SERVICES: dict[str, ServiceDef] = {}


def stop_jobs(jobs: list[TrackedJob], timeout: float = 10.0) -> list[str]:
    """Stop jobs (all requested at once, then waited for within one deadline); return
    the names of those that had not ended by then."""
    for job in jobs:
        try:
            job.handle.stop(wait=False)
        except Exception:  # noqa: BLE001 - unreachable remote job: reported below
            pass
    deadline = time.monotonic() + timeout
    left = []
    for job in jobs:
        try:
            state = job.handle.stop(wait=True, timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001
            state = None
        if state is None or not getattr(state, "terminal", False):
            left.append(job.name)
    return left


class KernelTable:
    """A snapshot table of this kernel, shown as HTML or text."""

    columns: tuple[str, ...] = ()
    empty = ""

    def __init__(self, rows: list[dict[str, str]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def _repr_html_(self) -> str:
        return templates.rows_html(self.rows, self.columns, self.empty)

    def __repr__(self) -> str:
        return templates.rows_text(self.rows, self.columns, self.empty)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


class JobTable(KernelTable):
    """`%sage_status`: this kernel's jobs."""

    columns = templates.JOB_COLUMNS
    empty = "No sage_jupyter jobs in this kernel."


class ServiceTable(KernelTable):
    """`%sage_services`: the services `%%sage_service` declared in this kernel."""

    columns = templates.SERVICE_COLUMNS
    empty = "No sage_jupyter services in this kernel."


def service_rows() -> list[dict[str, str]]:
    return [{"name": s.name, "class": s.cls.__name__, "kind": "Ray actor" if s.remote else "thread"}
            for s in SERVICES.values()]


def widget_of(job: Any) -> JobWidget:
    """The widget of a job of this kernel, by handle, name or job id (its `.output.text()`
    is what the job printed)."""
    for tracked in reversed(JOBS.all()):
        if tracked.handle is job:
            return tracked.widget
    found = JOBS.find(job) if isinstance(job, str) else None
    if found is None:
        raise KeyError(f"no job {job!r} is shown in this kernel")
    return found.widget


def track(handle: JobHandleLike, name: str | None = None, display: bool = True,
          cell_id: str | None = None, output: Any = None) -> JobWidget:
    """Show a submitted job's widget and list it in `%sage_status` and the sidebar.

    Works for any handle with the JobHandle interface (`state`, `status()`,
    `stop(wait=False)`, `subscribe`, `cleanup_report`), e.g. a `RemoteEnvironment`'s.
    Handles whose status travels over the wire are polled at about 2 Hz, and a handle
    with `forward_output(sink)` sends the job's prints to the widget's output area.
    """
    for attr in ("status", "stop"):
        if not callable(getattr(handle, attr, None)):
            raise TypeError(f"track(): expected a job handle with status() and stop(), got {type(handle).__name__}")
    widget = JobWidget(handle, output=output)
    forward = getattr(handle, "forward_output", None)
    if callable(forward):  # a remote job: its prints come over the wire into this widget
        forward(widget.output)
    job_name = JOBS.unique_name(name or widget.snapshot.name)
    JOBS.add(TrackedJob(job_name, handle, widget, cell_id))
    if display:
        widget.display()
    widget.start()
    return widget


def adopt_plain_jobs(cell_id: str | None = None) -> None:
    """List the running jobs this kernel submitted with the plain API (`env.submit(...)`
    in a cell) beside the magics' ones, so `%sage_status`, `%sage_stop`, the sidebar and
    unloading see every job. Adopted jobs get a widget, not displayed anywhere; `cell_id`
    is the cell that just ran (after a cell, the one that submitted them)."""
    known = {j.handle.job_id for j in JOBS.all() if j.snapshot.location == "local"}
    for dispatcher in registry.live_jobs():
        if dispatcher.job_id not in known and not dispatcher.state.terminal:
            track(JobHandle(dispatcher), display=False, cell_id=cell_id)
