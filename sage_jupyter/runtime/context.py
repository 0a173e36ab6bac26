"""What the runtime attaches to every function and service instance as `self.ctx`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .services import ServiceCaller


@dataclass
class RuntimeContext:
    """Identity of one function or service instance, and its way to the job's services.

    `parallel_index` is this instance's index among `parallelism` instances (upstream
    SAGE name). `emit` is set by the runtime while a flatmap instance runs, for `collect`.
    """

    name: str
    job_name: str
    env_name: str
    parallel_index: int = 0
    parallelism: int = 1
    services: ServiceCaller | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("sage_jupyter.user"))
    emit: Callable[[Any], None] | None = None

    # upstream spellings
    @property
    def index(self) -> int:
        return self.parallel_index


def attach_context(obj: Any, ctx: RuntimeContext) -> None:
    """Give a function or service instance its context and, where it has one (the SAGE base
    classes), its `call_service`: plain attribute stores, never through `__dict__`, which would
    turn every later attribute access of the instance into a slower dict lookup."""
    obj.ctx = ctx
    if ctx.services is not None and getattr(type(obj), "_sage_calls_services", False):
        obj.call_service = ctx.services


def make_logger(job_name: str, name: str) -> logging.Logger:
    return logging.getLogger(f"sage_jupyter.job.{job_name}.{name}")
