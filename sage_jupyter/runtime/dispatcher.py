"""The dispatcher owns one job: its services, its tasks, its state and its cleanup.

Services start first (setup, start), then tasks. When the last task ends, autostop (or a
stop, or a failure) cleans every service in reverse start order under the job's
`CleanupPolicy`, and only then is the terminal state published. Every ending path (finish,
failure, `stop()`, interrupt, interpreter exit) goes through `_finalize`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable

from . import registry
from .backend import JobRuntime, TaskBackend
from .context import RuntimeContext, make_logger
from .errors import PipelineError
from .executor import DaemonExecutor, join_all
from .extras import require_extra
from .graph import PipelineGraph, ServiceSpec
from .limits import SourceLimits
from .job import (CleanupReport, ErrorInfo, HookOutcome, JobState, JobStatus, ServiceCleanup, ServiceState,
                  StageInfo, StatusListener, TaskState)
from .peek import check_peek_args, merge_samples
from .plan import build_plan
from .policy import CleanupPolicy
from .threads import spawn
from .services import LocalServiceHost, ServiceCaller, ServiceHost, error_info

log = logging.getLogger("sage_jupyter.runtime")
_job_numbers = itertools.count(1)


def _thread_backend(config: dict[str, Any]) -> TaskBackend:
    from .thread_backend import ThreadBackend

    return ThreadBackend()


def _ray_backend(config: dict[str, Any]) -> TaskBackend:
    require_extra("ray", "backend='ray'")
    from .ray.backend import RayBackend

    return RayBackend(**config)


# Each backend is built by a lazy factory, so Ray is imported only by jobs that use it.
BACKEND_FACTORIES: dict[str, Callable[[dict[str, Any]], TaskBackend]] = {
    "thread": _thread_backend, "ray": _ray_backend}


def make_backend(name: str, config: dict[str, Any] | None = None) -> TaskBackend:
    factory = BACKEND_FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown backend {name!r}; use {' or '.join(map(repr, BACKEND_FACTORIES))}")
    return factory(config or {})


def make_service_host(spec: ServiceSpec, job_tag: str, config: dict[str, Any] | None = None) -> ServiceHost:
    if spec.remote:
        require_extra("ray", f"service {spec.name!r} (remote=True)")
        from .ray.services import RayServiceHost

        return RayServiceHost(spec, job_tag, **(config or {}))
    return LocalServiceHost(spec)


class Dispatcher:
    def __init__(self, name: str, graph: PipelineGraph, services: list[ServiceSpec], *,
                 backend: str = "thread", autostop: bool = False,
                 policy: CleanupPolicy | None = None, env_name: str | None = None,
                 output: Callable[[str, str], None] | None = None,
                 backend_config: dict[str, Any] | None = None, limits: SourceLimits | None = None) -> None:
        self.name = name
        self.env_name = env_name or name
        self.job_id = f"{name}-{next(_job_numbers)}"
        self.autostop = autostop
        self.policy = policy or CleanupPolicy()
        self.backend_name = backend
        self.limits = limits or SourceLimits()
        self.plan = build_plan(graph)
        self._stage_info = tuple(
            StageInfo(self.plan.labels[s.id], s.kind, s.parallelism,
                      tuple(self.plan.labels[u] for u in s.upstream))
            for s in graph.stages
        )
        self.backend = make_backend(backend, backend_config)
        self.hosts: dict[str, ServiceHost] = {s.name: make_service_host(s, self.job_id, backend_config)
                                              for s in services}
        self._started_hosts: list[ServiceHost] = []
        self._executor: DaemonExecutor | None = None
        self.services = ServiceCaller(self.hosts, self._call_pool)
        self._output = output

        self.state = JobState.CREATED
        self.error: ErrorInfo | None = None
        self.cleanup_report: CleanupReport | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None

        self._lock = threading.RLock()
        self._stop_requested = threading.Event()
        self._tasks_done = threading.Event()
        self._done = threading.Event()
        self._live_tasks = 0
        self._finalizing = False
        self._finalizer: threading.Thread | None = None
        self._listeners: list[StatusListener] = []
        self._helpers: list[threading.Thread] = []  # starter, watchdogs, stoppers

    # ---- start ----------------------------------------------------------------------

    def start(self) -> None:
        """Publish RUNNING and start services then tasks on a starter thread."""
        with self._lock:
            if self.state is not JobState.CREATED:
                raise RuntimeError(f"job {self.job_id} was already started")
            self.state = JobState.RUNNING
            self.started_at = time.time()
        registry.track(self)
        self._publish()
        self._spawn(self._start, "start")

    def _spawn(self, target: Callable[[], None], role: str) -> None:
        thread = spawn(target, f"sage:{self.name}:{role}", self._output, start=False, job=self.job_id)
        with self._lock:  # started under the lock: wait() never sees (and joins) an unstarted helper
            self._helpers.append(thread)
            thread.start()

    def _start(self) -> None:
        for host in self.hosts.values():
            if self._stop_requested.is_set():
                break
            try:
                self._started_hosts.append(host)
                host.start(self._context(f"service:{host.name}", 0, 1, task=False))
            except BaseException as exc:  # noqa: BLE001 - fails the job, reported to wait()
                host.error = error_info(f"service {host.name!r} setup", exc)
                host.state = ServiceState.FAILED  # stays FAILED through its cleanup
                self._fail(host.error)
                self._finalize()
                return
            self._publish()
        with self._lock:
            if self._finalizing:  # a stop gave up waiting for a slow setup() and cleaned up
                return
            ending = self._stop_requested.is_set() or self.error is not None
            if not ending:
                self._live_tasks = len(self.plan.instances())
        if ending:
            self._finalize()
            return
        runtime = JobRuntime(self.job_id, self.name, self.env_name, self._context, self._task_ended,
                             self._stop_requested, self.hosts, self._output, self.limits)
        try:
            self.backend.launch(self.plan, runtime)
        except BaseException as exc:  # noqa: BLE001 - fails the job, then the cleanup path runs
            self._fail(error_info(f"{self.backend_name} backend launch", exc))
            self.backend.abort()
            self._finalize()

    def _context(self, name: str, index: int, parallelism: int, task: bool = True) -> RuntimeContext:
        """A function instance's or service's context, with a caller of its own: a task's
        may call its services lock-free (see runtime/proxies.py)."""
        return RuntimeContext(name=name, job_name=self.name, env_name=self.env_name,
                              parallel_index=index, parallelism=parallelism,
                              services=self.services.for_caller(eligible=task), logger=make_logger(self.name, name))

    def _call_pool(self) -> DaemonExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = DaemonExecutor(8, f"sage:{self.name}:calls")
            return self._executor

    # ---- task signals -----------------------------------------------------------------

    def _task_ended(self, task: str, state: TaskState, error: ErrorInfo | None) -> None:
        """Called once by every task instance (`receive_node_stop_signal` upstream)."""
        if error is not None:
            self._fail(error)
        with self._lock:
            self._live_tasks -= 1
            last = self._live_tasks == 0
        self._publish()
        if last:
            self._tasks_done.set()
            if self.autostop or self._stop_requested.is_set() or self.error is not None:
                self._finalize()

    def _fail(self, error: ErrorInfo) -> None:
        with self._lock:
            first = self.error is None
            if first:
                self.error = error
                if not self.state.terminal:
                    self.state = JobState.STOPPING
        if first:
            log.info("job %s failed: %s", self.job_id, error)
            self._stop_requested.set()
            self.backend.abort()
            self._watchdog(0.0)

    # ---- stop -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Graceful stop: sources stop, records drain (graceful_timeout), then cleanup."""
        with self._lock:
            if self.state.terminal or self._stop_requested.is_set():
                return
            self._stop_requested.set()
            if self.state is JobState.RUNNING:
                self.state = JobState.STOPPING
            tasks_done = self._tasks_done.is_set()
            launched = self._live_tasks > 0 or tasks_done
        self._publish()
        if tasks_done:  # a finished job without autostop: only its services are left
            self._spawn(self._finalize, "stop")
        elif launched:
            self.backend.request_stop()
            self._watchdog(self.policy.graceful_timeout)
        else:  # services are starting: the starter finalizes when it sees the flag, unless
            self._watchdog(self.policy.graceful_timeout)  # a setup() hangs; then this does

    def _watchdog(self, graceful: float) -> None:
        """Escalate a stop that does not finish: abort after `graceful`, then give up on
        tasks stuck in user code after `kill_timeout` and clean services anyway."""

        def escalate() -> None:
            if self._tasks_done.wait(graceful):
                return
            self.backend.abort()
            if not self._tasks_done.wait(self.policy.kill_timeout):
                self._finalize()

        self._spawn(escalate, "watchdog")

    # ---- cleanup ----------------------------------------------------------------------

    def _finalize(self) -> None:
        with self._lock:
            if self._finalizing:
                return
            self._finalizing = True
            self._finalizer = threading.current_thread()
            if not self.state.terminal:
                self.state = JobState.STOPPING
        self._publish()
        t0 = time.perf_counter()
        left = self.backend.join(self.policy.kill_timeout)
        if self._executor is not None:  # timed-out and async service calls end before cleanup() runs
            self._executor.wait_idle(self.policy.graceful_timeout)
        reports: list[ServiceCleanup] = []
        for host in reversed(self._started_hosts):
            try:
                reports.append(host.stop_and_cleanup(self.policy))
            except BaseException as exc:  # noqa: BLE001 - a host bug must not stop the rest
                host.error = error_info(f"service {host.name!r} cleanup", exc)
                failed = HookOutcome("error", 0.0, f"{type(exc).__name__}: {exc}")
                reports.append(ServiceCleanup(host.name, host.kind, failed, failed))
            self._publish()
        calls_left = self._executor.shutdown(self.policy.kill_timeout) if self._executor is not None else []
        calls_left += [c for host in self._started_hosts for c in host.calls_left_running]  # in service actors
        if self.error is not None:
            final, reason = JobState.FAILED, "failed"
        elif self._stop_requested.is_set():
            final, reason = JobState.STOPPED, "stopped"
        else:
            final, reason = JobState.FINISHED, "finished"
        report = CleanupReport(tuple(reports), reason, tuple(left), time.perf_counter() - t0, tuple(calls_left))
        with self._lock:
            self.cleanup_report = report
            self.ended_at = time.time()
            self.state = final
        if not report.ok:
            log.warning("job %s cleanup incomplete: %s", self.job_id, report)
        registry.untrack(self)
        self._tasks_done.set()
        self._done.set()
        self._publish()

    # ---- waiting and observing --------------------------------------------------------

    def wait(self, timeout: float | None = None, raise_on_failure: bool = True,
             until_terminal: bool = False) -> JobState:
        deadline = None if timeout is None else time.monotonic() + timeout
        terminal_only = until_terminal or self.autostop or self._stop_requested.is_set()
        event = self._done if terminal_only else self._tasks_done  # _finalize sets both
        if not event.wait(timeout):
            raise self._timeout(timeout)
        if not terminal_only and not self._done.is_set() and self.error is not None:
            # a failure always runs cleanup: report after it, within what is left of the timeout
            if not self._done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                raise self._timeout(timeout)
        if self._done.is_set():  # helpers are returning: leave no thread behind
            with self._lock:
                helpers = [t for t in (self._finalizer, *self._helpers) if t is not None]
            join_all(helpers, self.policy.kill_timeout)
        if raise_on_failure and self.state is JobState.FAILED and self.error is not None:
            raise PipelineError(self.error, self.name)
        return self.state

    def _timeout(self, timeout: float | None) -> TimeoutError:
        return TimeoutError(f"job {self.name!r} did not end within {timeout:g} s (state {self.state.value})")

    def snapshot(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id, name=self.name, state=self.state, backend=self.backend_name,
            autostop=self.autostop, created_at=self.created_at, started_at=self.started_at,
            ended_at=self.ended_at, tasks=tuple(self.backend.task_statuses()),
            services=tuple(h.status() for h in self.hosts.values()), stages=self._stage_info,
            error=self.error, cleanup_report=self.cleanup_report,
        )

    def peek(self, stage: str | None, n: int) -> dict[str, list[str]]:
        """See `JobHandle.peek`."""
        labels = [s.name for s in self._stage_info]
        check_peek_args(stage, n, labels)
        return merge_samples(labels, self.backend.samples(), stage, n)

    def subscribe(self, listener: StatusListener) -> Callable[[], None]:
        """Register `listener`; it gets the current snapshot at once, then one per change."""
        with self._lock:
            self._listeners.append(listener)
        listener(self.snapshot())

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _publish(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        if not listeners:
            return
        snap = self.snapshot()
        for listener in listeners:
            try:
                listener(snap)
            except Exception:  # a view's bug must not break the job
                log.exception("status listener failed")
