"""RemoteEnvironment: the same builder API as LocalEnvironment, run by a JobManager daemon.

`submit()` ships the pipeline (notebook and `__main__` code by value) with its options,
autostop included; the daemon runs it with the same dispatcher and the same cleanup.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from ..jobmanager.protocol import DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_PORT, TOKEN_ENV, JobOptions, encode_submission
from ..jobmanager.remote_handle import RemoteJobHandle
from ..jobmanager.transport import JobManagerClient, default_output
from ..runtime.job import JobStatus, status_from_dict
from ..runtime.limits import check_limits
from ..runtime.policy import CleanupPolicy
from .environment import BACKENDS, BaseEnvironment

CONFIG_KEYS = ("cleanup", "timeout", "heartbeat_timeout", "forward_output")


class RemoteEnvironment(BaseEnvironment):
    """Declares a pipeline here and runs it on the JobManager at `host:port`.

    `token` defaults to `$SAGE_JOBMANAGER_TOKEN`. `config` may hold `cleanup` (a
    CleanupPolicy or dict), `timeout` (seconds per request, default 10),
    `heartbeat_timeout` (seconds without heartbeat before a `cancel_on_disconnect` job is
    stopped, default 5) and `forward_output` (print the job's output here, default True).
    Creating one connects to nothing; `submit()` does.
    """

    platform = "remote"  # upstream's attribute

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(name, config)
        unknown = sorted(set(self.config) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"RemoteEnvironment config: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(CONFIG_KEYS)}")
        _check_config(self.config)
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        self.host = host
        self.port = port
        self.jobmanager_host, self.jobmanager_port = host, port  # upstream's names
        self._client = JobManagerClient(host, port, token, timeout=self.config.get("timeout", 10.0))
        self._output: Callable[[str, str], None] | None = None  # set by the Jupyter layer

    @property
    def address(self) -> str:
        return self._client.address

    def submit(self, autostop: bool = False, block: bool | None = None,
               cleanup: CleanupPolicy | dict[str, Any] | None = None, backend: str = "thread",
               cancel_on_disconnect: bool = False, max_records: int | None = None,
               max_duration: float | None = None) -> RemoteJobHandle:
        """Ship the pipeline to the JobManager and start it there.

        With `autostop=True` every service is stopped and cleaned on the JobManager when
        the pipeline ends, and the call blocks until then unless `block=False`. A job
        submitted with `cancel_on_disconnect=True` is stopped and cleaned when this
        client goes away; any other job keeps running on the daemon. `max_records` and
        `max_duration` bound the sources as in `LocalEnvironment.submit`.

        Raises `PipelineError` (blocking) naming the remote stage that failed,
        `JobManagerConnectionError` (a `ConnectionError`) if the daemon cannot be reached
        or goes away, `JobManagerError` if it refuses the job.
        """
        limits = check_limits(max_records, max_duration)
        self._validate_for_submit()
        if backend not in BACKENDS:
            raise ValueError(f"submit(backend={backend!r}): use 'thread' or 'ray'")
        policy = self._policy(cleanup)
        services = list(self._services.values())
        if backend == "ray":  # every service is an actor when tasks are, as in LocalEnvironment
            services = [dataclasses.replace(s, remote=True) for s in services]
        options = JobOptions(
            name=self.name, autostop=bool(autostop), backend=backend, cleanup=dataclasses.asdict(policy),
            cancel_on_disconnect=bool(cancel_on_disconnect),
            heartbeat_timeout=float(self.config.get("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT_S)),
            max_records=limits.max_records, max_duration=limits.max_duration,
        )
        envelope = encode_submission(options, self._graph, services)
        reply = self._client.submit(envelope)
        sink = self._output
        if sink is None and self.config.get("forward_output", True):
            sink = default_output
        handle = RemoteJobHandle(self._client, reply["job_id"], self.name, reply=reply,
                                 cancel_on_disconnect=bool(cancel_on_disconnect),
                                 heartbeat_interval=min(1.0, options.heartbeat_timeout / 4), output=sink)
        self._job = handle
        if block is None:
            block = autostop
        if block:
            try:
                handle.wait()
            except KeyboardInterrupt:
                handle.stop(wait=True)
                raise
        return handle

    def list_jobs(self) -> list[JobStatus]:
        """Every job the JobManager knows (from any client), newest last."""
        return [dataclasses.replace(status_from_dict(r["status"]), location=self.address)
                for r in self._client.list_jobs()]

    def attach(self, job_id: str) -> RemoteJobHandle:
        """A handle on a job already on the JobManager, e.g. one submitted by another client."""
        return self._client.handle(job_id)

    def info(self) -> dict[str, Any]:
        """What the JobManager says about itself (version, pid, jobs)."""
        return self._client.info()

    def close(self) -> None:
        """Stop this environment's job (if any), then close the handle and connections."""
        try:
            self.stop()
        finally:
            if isinstance(self._job, RemoteJobHandle):
                self._job.close()
            self._client.close()

    def __repr__(self) -> str:
        return f"<RemoteEnvironment {self.name!r} on {self.address}>"


def _check_config(config: dict[str, Any]) -> None:
    def number(key: str, lo: float, hi: float) -> None:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not lo <= value <= hi):
            raise ValueError(f"RemoteEnvironment config[{key!r}] must be a number of seconds in "
                             f"[{lo:g}, {hi:g}], got {value!r}")

    number("timeout", 0.1, 3600)
    number("heartbeat_timeout", 0.5, 3600)
    if not isinstance(config.get("forward_output", True), bool):
        raise ValueError(f"RemoteEnvironment config['forward_output'] must be True or False, "
                         f"got {config['forward_output']!r}")
