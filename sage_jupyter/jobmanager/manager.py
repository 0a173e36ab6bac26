"""The JobManager's state, apart from HTTP: the token, the job table, the job history on
disk and each job's output buffer. Long-polls wait on a per-job `ChangeSignal` that the
dispatcher's status listener (any thread) fires on the event loop."""

from __future__ import annotations

import asyncio
import atexit
import hmac
import logging
import time
from typing import Any, Callable

from ..runtime import registry
from ..runtime.dispatcher import Dispatcher
from ..runtime.executor import DaemonExecutor
from ..runtime.job import JobState, JobStatus, TaskState
from ..runtime.limits import SourceLimits
from ..runtime.policy import CleanupPolicy
from . import protocol
from .history import JobHistory
from ..runtime.output import OutputBuffer
from .protocol import JobOptions, ProtocolError

log = logging.getLogger("sage_jupyter.jobmanager")

# SIGTERM must end the process within 5 s: jobs get a short drain, hooks a short budget.
SHUTDOWN_POLICY = CleanupPolicy(graceful_timeout=1.0, kill_timeout=0.5)
SHUTDOWN_BUDGET_S = 3.5
KEEP_ENDED_JOBS = 100  # in memory, with their output; older ones live on in the history only
ENDED_OUTPUT_CHARS = 16_000_000  # all ended jobs' output together; the oldest job's goes first
TASK_ENDED = (TaskState.FINISHED, TaskState.STOPPED)
WAIT_CONDITIONS = ("change", "settled", "terminal")


class ChangeSignal:
    """Wakes every coroutine waiting for a job's next change (used on the loop thread only)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify_all(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class JobRecord:
    """One submitted job on the daemon: its dispatcher, options, output and watchers."""

    def __init__(self, dispatcher: Dispatcher, options: JobOptions, output: OutputBuffer,
                 notify: Callable[[JobRecord], None], history: JobHistory) -> None:
        self.dispatcher = dispatcher
        self.options = options
        self.version = 0  # bumped on every status change the dispatcher publishes
        self.changed = ChangeSignal()
        self.last_heartbeat = time.monotonic()
        self.disconnected = False
        self._notify = notify
        self._history = history
        self._stored_state: JobState | None = None
        self.output = output
        output.on_write = lambda: notify(self)

    @property
    def job_id(self) -> str:
        return self.dispatcher.job_id

    def on_status(self, snapshot: JobStatus) -> None:
        self.version += 1
        if snapshot.state is not self._stored_state:  # the history is written on state changes only
            self._stored_state = snapshot.state
            try:
                self._history.save(snapshot, self.options)
            except Exception:
                log.exception("job %s: could not write the job history", self.job_id)
        self._notify(self)

    def settled(self) -> bool:
        """What `JobHandle.wait()` waits for: the terminal state, or for a job without
        autostop, the end of all its tasks (its services stay up until stop)."""
        d = self.dispatcher
        if d.state.terminal:
            return True
        if d.autostop or d.state is not JobState.RUNNING or d.error is not None:
            return False  # a failure always ends in cleanup and FAILED: wait for that
        tasks = d.backend.task_statuses()
        return bool(tasks) and all(t.state in TASK_ENDED for t in tasks)

    def status_reply(self) -> dict[str, Any]:
        return {"version": self.version, "settled": self.settled(),
                "status": protocol.to_wire(self.dispatcher.snapshot()),
                "cancel_on_disconnect": self.options.cancel_on_disconnect,
                "disconnected": self.disconnected}


class JobManager:
    """The daemon's state: the token, the job table, the history and the output buffers."""

    def __init__(self, token: str | None, max_body_bytes: int = protocol.DEFAULT_MAX_BODY_BYTES,
                 history: JobHistory | None = None) -> None:
        if token is not None and not token:
            raise ValueError("the token must not be empty")
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.jobs: dict[str, JobRecord] = {}
        self.history = history if history is not None else JobHistory(None)
        self.max_connections: int | None = None  # told by the server, shown in /info
        self.closing = False
        self.started_at = time.time()
        self.pool = DaemonExecutor(2, "jobmanager-submit")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_notify: set[str] = set()

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that serves requests; status listeners wake long-polls on it."""
        self._loop = loop

    # ---- authentication -----------------------------------------------------------

    def check_token(self, header: str | None) -> None:
        if self.token is None:
            return
        given = protocol.parse_auth_header(header)
        if given is None:
            raise ProtocolError(401, "missing_token",
                                "this JobManager needs a token: send the header 'Authorization: token <TOKEN>'")
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            raise ProtocolError(403, "bad_token", "the token does not match this JobManager's token")

    # ---- jobs ---------------------------------------------------------------------

    def record(self, job_id: str) -> JobRecord:
        rec = self.jobs.get(job_id)
        if rec is None:
            past = " (it ended before the daemon restarted: only its status is kept)" \
                if self.history.reply(job_id) is not None else \
                " (it was never submitted here, or was forgotten)"
            raise ProtocolError(404, "unknown_job", f"no running or recent job {job_id!r} on this JobManager{past}")
        return rec

    def status_reply(self, job_id: str) -> dict[str, Any]:
        """A job's status reply: live from its dispatcher, or from the history."""
        rec = self.jobs.get(job_id)
        if rec is not None:
            return rec.status_reply()
        past = self.history.reply(job_id)
        if past is None:
            self.record(job_id)  # raises the 404
        assert past is not None
        return past

    def list_replies(self) -> list[dict[str, Any]]:
        """Every job known: the history's older ones first, then the live table, newest last."""
        live = [r.status_reply() for r in self.jobs.values()]
        past = [r for r in self.history.replies() if r["status"]["job_id"] not in self.jobs]
        return past + live

    def build_job(self, options: JobOptions, payload: bytes) -> tuple[Dispatcher, OutputBuffer]:
        """Unpickle and plan a submission (on a worker thread: imports may be slow)."""
        graph, services = protocol.load_pipeline(payload)
        output = OutputBuffer()  # the runtime's threads carry its write as their output sink
        try:
            dispatcher = Dispatcher(options.name, graph, services, backend=options.backend,
                                    autostop=options.autostop, policy=options.policy(), env_name=options.name,
                                    output=output.write,
                                    limits=SourceLimits(options.max_records, options.max_duration))
        except ImportError as exc:
            raise ProtocolError(400, "backend_unavailable", f"backend {options.backend!r} is not available on "
                                f"this JobManager: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a graph the planner refuses
            raise ProtocolError(400, "bad_pipeline", f"the pipeline cannot run: {type(exc).__name__}: {exc}") from None
        return dispatcher, output

    def start_job(self, dispatcher: Dispatcher, output: OutputBuffer, options: JobOptions) -> JobRecord:
        """Register and start a built job (on the loop thread)."""
        if self.closing:
            raise ProtocolError(503, "shutting_down", "the JobManager is shutting down; no new jobs")
        rec = JobRecord(dispatcher, options, output, self._schedule_notify, self.history)
        self._forget_old_jobs()
        self.jobs[dispatcher.job_id] = rec
        dispatcher.subscribe(rec.on_status)
        dispatcher.start()
        log.info("job %s started (backend=%s autostop=%s cancel_on_disconnect=%s)", dispatcher.job_id,
                 options.backend, options.autostop, options.cancel_on_disconnect)
        return rec

    def _forget_old_jobs(self) -> None:
        ended = [r for r in self.jobs.values() if r.dispatcher.state.terminal]
        for rec in ended[: max(0, len(ended) - KEEP_ENDED_JOBS + 1)]:
            del self.jobs[rec.job_id]
        self.bound_ended_output()

    def bound_ended_output(self) -> None:
        """Keep the ended jobs' output under ENDED_OUTPUT_CHARS together, dropping the oldest job's first."""
        ended = [r for r in self.jobs.values() if r.dispatcher.state.terminal]
        total = sum(r.output.size for r in ended)
        for rec in ended:
            if total <= ENDED_OUTPUT_CHARS:
                return
            before = rec.output.size
            rec.output.clear(f"the JobManager keeps at most {ENDED_OUTPUT_CHARS:,} characters of ended jobs' output")
            total -= before - rec.output.size

    def _schedule_notify(self, rec: JobRecord) -> None:
        """From any thread: wake the long-polls of `rec` on the loop (coalesced)."""
        loop = self._loop
        if loop is None or rec.job_id in self._pending_notify:
            return
        self._pending_notify.add(rec.job_id)
        try:
            loop.call_soon_threadsafe(self._notify, rec)
        except RuntimeError:  # the loop is closing
            self._pending_notify.discard(rec.job_id)

    def _notify(self, rec: JobRecord) -> None:
        self._pending_notify.discard(rec.job_id)
        rec.changed.notify_all()
        if rec.dispatcher.state.terminal:
            self.bound_ended_output()

    def notify_everyone(self) -> None:
        """At shutdown: answer every pending long-poll with the final states."""
        for rec in self.jobs.values():
            rec.changed.notify_all()

    def check_heartbeats(self) -> None:
        """Stop `cancel_on_disconnect` jobs whose client stopped sending heartbeats."""
        now = time.monotonic()
        for rec in list(self.jobs.values()):
            if not rec.options.cancel_on_disconnect or rec.disconnected or rec.dispatcher.state.terminal:
                continue
            if now - rec.last_heartbeat > rec.options.heartbeat_timeout:
                rec.disconnected = True
                log.warning("job %s: no heartbeat from its client for %.1f s; stopping it (cancel_on_disconnect)",
                            rec.job_id, now - rec.last_heartbeat)
                rec.dispatcher.request_stop()

    async def wait_for(self, rec: JobRecord, ready: Callable[[], bool], wait: float) -> None:
        """Long-poll: return when `ready()` or after `wait` seconds."""
        # At shutdown too: waiters are woken once every job ended, with the final states.
        deadline = time.monotonic() + min(wait, protocol.LONG_POLL_MAX_S)
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await rec.changed.wait(left)

    def live_count(self) -> int:
        return sum(not r.dispatcher.state.terminal for r in self.jobs.values())

    def stop_all_jobs(self) -> None:
        registry.stop_all(SHUTDOWN_POLICY, timeout=SHUTDOWN_BUDGET_S)
        left = [r.job_id for r in self.jobs.values() if not r.dispatcher.state.terminal]
        if left:
            log.error("jobs still not ended at shutdown: %s", ", ".join(left))
        # Everything was stopped within the budget; the runtime's own exit hook would wait again.
        atexit.unregister(registry.stop_all_at_exit)
