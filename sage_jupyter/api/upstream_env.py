"""Environment attributes upstream SAGE programs and tests read (`platform`, `env_uuid`,
`is_running`, `pipeline`, ...), and `set_console_log_level`, over this environment's state."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from ..runtime.graph import PipelineGraph, ServiceSpec, StageSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..jobmanager.remote_handle import RemoteJobHandle
    from ..runtime.job import JobHandle

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _ConsoleHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is when a record is logged, so a notebook's routed
    stderr (installed after the environment was built) receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)


class UpstreamEnvironment:
    """Mixed into `BaseEnvironment`; read-only views, except the console log level."""

    name: str
    _graph: PipelineGraph
    _services: dict[str, ServiceSpec]
    _job: "JobHandle | RemoteJobHandle | None"

    platform: str = "local"  # upstream: "local" or "remote"
    enable_monitoring: bool = False
    console_log_level: str = "INFO"  # upstream's default; ours prints nothing until set
    jobmanager_host: str | None = None  # a RemoteEnvironment's daemon
    jobmanager_port: int | None = None
    _console: logging.Handler | None = None

    @property
    def env_uuid(self) -> str | None:
        """The submitted job's id (upstream: the JobManager's uuid), None before submit."""
        return self._job.job_id if self._job is not None else None

    uuid = env_uuid

    @property
    def is_running(self) -> bool:
        """True from submit until the job reached a terminal state."""
        return self._job is not None and not self._job.state.terminal

    @property
    def pipeline(self) -> list[StageSpec]:
        """The declared stages in order (upstream: transformations), each with `function_class`,
        `parallelism` and `basename`."""
        return list(self._graph.stages)

    @property
    def service_factories(self) -> dict[str, ServiceSpec]:
        """Registered services by name."""
        return dict(self._services)

    @property
    def logger(self) -> logging.Logger:
        """The parent of every function's `self.logger` in this environment's job."""
        return logging.getLogger(f"sage_jupyter.job.{self.name}")

    def set_console_log_level(self, level: str) -> None:
        """Show this job's log records at `level` and above on stderr: "DEBUG", "INFO",
        "WARNING" or "ERROR" (upstream's names)."""
        if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
            raise ValueError(f"set_console_log_level({level!r}): use one of {', '.join(LOG_LEVELS)}")
        self.console_log_level = level.upper()
        logger = self.logger
        if self._console is None:
            self._console = _ConsoleHandler()
            self._console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(self._console)
        numeric = getattr(logging, self.console_log_level)
        self._console.setLevel(numeric)
        logger.setLevel(numeric)
