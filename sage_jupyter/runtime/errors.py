"""Errors the runtime raises to users."""

from __future__ import annotations

from .job import ErrorInfo


class PipelineError(RuntimeError):
    """A job failed: a stage or a service raised, or a worker died.

    `stage` names where it happened, `traceback` holds the original traceback text (from
    the worker thread or the remote actor), `error` the structured `ErrorInfo`.
    """

    def __init__(self, error: ErrorInfo, job_name: str = "") -> None:
        self.error = error
        self.stage = error.where
        self.traceback = error.traceback
        self.job_name = job_name
        head = f"job {job_name!r} failed in {error.where}" if job_name else f"failed in {error.where}"
        msg = f"{head}: {error.type}: {error.message}"
        if error.traceback:
            msg += "\n\nOriginal traceback:\n" + error.traceback.rstrip()
        super().__init__(msg)

    @property
    def summary(self) -> str:
        """One line: where and what, without the traceback."""
        return str(self).split("\n", 1)[0]


class ServiceCallError(LookupError):
    """An unknown service name or method was called."""
