"""`JobHandle`, what `submit()` returns, and `JobHandleLike`, the interface that local and
remote handles both offer (views type against it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .job import CleanupReport, ErrorInfo, JobState, JobStatus, StatusListener
from .threads import current_job

if TYPE_CHECKING:  # pragma: no cover
    from .dispatcher import Dispatcher


@runtime_checkable
class JobHandleLike(Protocol):
    """What every job handle offers, local (`JobHandle`) or remote (`RemoteJobHandle`)."""

    @property
    def job_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> JobState: ...

    @property
    def done(self) -> bool: ...

    @property
    def cleanup_report(self) -> CleanupReport | None: ...

    @property
    def error(self) -> ErrorInfo | None: ...

    def status(self) -> JobStatus: ...

    def wait(self, timeout: float | None = None) -> JobState: ...

    def stop(self, wait: bool = True, timeout: float | None = None) -> JobState: ...

    def subscribe(self, listener: StatusListener) -> Callable[[], None]: ...

    def peek(self, stage: str | None = None, n: int = 5) -> dict[str, list[str]]: ...


class JobHandle:
    """What `submit()` returns: wait for, stop and observe one job.

    A thin view over the dispatcher that runs the job; all state lives there.
    """

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    @property
    def job_id(self) -> str:
        return self._dispatcher.job_id

    @property
    def name(self) -> str:
        return self._dispatcher.name

    @property
    def state(self) -> JobState:
        return self._dispatcher.state

    @property
    def done(self) -> bool:
        return self._dispatcher.state.terminal

    @property
    def cleanup_report(self) -> CleanupReport | None:
        """The report of the last cleanup, or None while services have not been cleaned."""
        return self._dispatcher.cleanup_report

    @property
    def error(self) -> ErrorInfo | None:
        return self._dispatcher.error

    def status(self) -> JobStatus:
        return self._dispatcher.snapshot()

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ended and its services were cleaned; return the final state.

        Raises `PipelineError` if the job failed and `TimeoutError` if `timeout` passed.
        A job submitted without autostop returns once all its tasks ended: its services
        stay up (state RUNNING) until `stop()`.
        """
        return self._dispatcher.wait(timeout)

    def stop(self, wait: bool = True, timeout: float | None = None) -> JobState:
        """Stop gracefully: sources stop, in-flight records drain within the graceful
        timeout, then services are cleaned. With `wait=False` return at once; called from
        one of the job's own threads (a stage, a service) it never waits (it would wait on itself)."""
        self._dispatcher.request_stop()
        if wait and current_job() != self._dispatcher.job_id:
            try:
                return self._dispatcher.wait(timeout, raise_on_failure=False, until_terminal=True)
            except TimeoutError:
                return self._dispatcher.state
        return self._dispatcher.state

    def subscribe(self, listener: StatusListener) -> Callable[[], None]:
        """Call `listener(snapshot)` now and on every state change (not per record); returns
        an unsubscribe function. Listeners run on runtime threads and must be quick."""
        return self._dispatcher.subscribe(listener)

    def peek(self, stage: str | None = None, n: int = 5) -> dict[str, list[str]]:
        """The newest records (at most `n`, newest last, as reprs cut at 200 characters) that
        each stage emitted, by stage label as in `TaskStatus.stage`; sinks: the records they
        received. With `stage`, only that stage. At most the 10 newest are kept per instance;
        the newest are exact, a fast stream's older ones sampled (see runtime/peek.py).
        Raises `KeyError` (naming the stages) for an unknown `stage` and `ValueError` for an
        `n` that is not an integer >= 0."""
        return self._dispatcher.peek(stage, n)

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<JobHandle {s.name!r} id={s.job_id} state={s.state.value} backend={s.backend} "
            f"tasks={len(s.tasks)} services={len(s.services)}>"
        )
