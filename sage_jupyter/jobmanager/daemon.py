"""The JobManager daemon: runs submitted pipelines with the runtime's own `Dispatcher`.

An HTTP server on tornado. Every request is authenticated from its headers before a byte
of its body is read; the pipeline is unpickled only after the token, the size, the JSON
envelope and the options passed. Each job keeps its captured output; long-polls wait on a
per-job condition notified by the dispatcher's status listener. SIGTERM or SIGINT stop every
job, clean every service and return within about 4 s.
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import json
import logging
import os
import re
import signal
import time
from typing import Any, Callable

import tornado.locks
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.netutil import bind_sockets

from ..runtime import registry
from ..runtime.dispatcher import Dispatcher
from ..runtime.executor import DaemonExecutor
from ..runtime.job import JobState, TaskState
from ..runtime.policy import CleanupPolicy
from . import protocol
from .output import OutputBuffer, OutputCapture
from .protocol import API_PREFIX, JobOptions, ProtocolError

log = logging.getLogger("sage_jupyter.jobmanager")

# SIGTERM must end the process within 5 s: jobs get a short drain, hooks a short budget.
SHUTDOWN_POLICY = CleanupPolicy(graceful_timeout=1.0, kill_timeout=0.5)
SHUTDOWN_BUDGET_S = 3.5
KEEP_ENDED_JOBS = 100  # with up to 1 MB of output each
HEARTBEAT_CHECK_MS = 500
TASK_ENDED = (TaskState.FINISHED, TaskState.STOPPED)
WAIT_CONDITIONS = ("change", "settled", "terminal")


class JobRecord:
    """One submitted job on the daemon: its dispatcher, options, output and watchers."""

    def __init__(self, dispatcher: Dispatcher, options: JobOptions, output: OutputBuffer,
                 notify: Callable[["JobRecord"], None]) -> None:
        self.dispatcher = dispatcher
        self.options = options
        self.version = 0  # bumped on every status change the dispatcher publishes
        self.changed = tornado.locks.Condition()  # notified on the loop thread only
        self.last_heartbeat = time.monotonic()
        self.disconnected = False
        self._notify = notify
        self.output = output
        output.on_write = lambda: notify(self)

    @property
    def job_id(self) -> str:
        return self.dispatcher.job_id

    def on_status(self, _snapshot: Any) -> None:
        self.version += 1
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
    """The daemon's state: the token, the job table and the loop that serves them."""

    def __init__(self, token: str | None, max_body_bytes: int = protocol.DEFAULT_MAX_BODY_BYTES) -> None:
        if token is not None and not token:
            raise ValueError("the token must not be empty")
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.jobs: dict[str, JobRecord] = {}
        self.closing = False
        self.started_at = time.time()
        self._loop: IOLoop | None = None
        self._pool = DaemonExecutor(2, "jobmanager-submit")
        self._pending_notify: set[str] = set()
        self._shutdown: asyncio.Event | None = None

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
            raise ProtocolError(404, "unknown_job", f"no job {job_id!r} on this JobManager "
                                "(it was never submitted here, was forgotten, or the daemon restarted)")
        return rec

    def build_job(self, options: JobOptions, payload: bytes) -> tuple[Dispatcher, OutputBuffer]:
        """Unpickle and plan a submission (on a worker thread: imports may be slow)."""
        graph, services = protocol.load_pipeline(payload)
        output = OutputBuffer()  # the runtime's threads carry its write as their output sink
        try:
            dispatcher = Dispatcher(options.name, graph, services, backend=options.backend,
                                    autostop=options.autostop, policy=options.policy(), env_name=options.name,
                                    output=output.write)
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
        rec = JobRecord(dispatcher, options, output, self._schedule_notify)
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

    def _schedule_notify(self, rec: JobRecord) -> None:
        """From any thread: wake the long-polls of `rec` on the loop (coalesced)."""
        loop = self._loop
        if loop is None or rec.job_id in self._pending_notify:
            return
        self._pending_notify.add(rec.job_id)
        try:
            loop.add_callback(self._notify, rec)
        except RuntimeError:  # the loop is closing
            self._pending_notify.discard(rec.job_id)

    def _notify(self, rec: JobRecord) -> None:
        self._pending_notify.discard(rec.job_id)
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
            await rec.changed.wait(timeout=IOLoop.current().time() + left)

    # ---- serving ------------------------------------------------------------------

    def make_app(self) -> tornado.web.Application:
        args = {"manager": self}
        v = API_PREFIX
        return tornado.web.Application(
            [
                (rf"{v}/info", InfoHandler, args),
                (rf"{v}/jobs", JobsHandler, args),
                (rf"{v}/jobs/([^/]+)", JobHandler, args),
                (rf"{v}/jobs/([^/]+)/stop", StopHandler, args),
                (rf"{v}/jobs/([^/]+)/output", OutputHandler, args),
                (rf"{v}/jobs/([^/]+)/heartbeat", HeartbeatHandler, args),
            ],
            default_handler_class=UnknownEndpointHandler,
            default_handler_args=args,
            log_function=_log_request,
            compress_response=False,
        )

    async def serve(self, host: str, port: int, announce: Callable[[str, int], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT, then stop every job and return."""
        self._loop = IOLoop.current()
        self._shutdown = asyncio.Event()
        sockets = bind_sockets(port, address=host)
        # Tornado's own limit sits a little above ours so that our handler, not tornado, sees
        # an oversized chunked upload first and answers with a JSON 413.
        server = HTTPServer(self.make_app(), max_body_size=self.max_body_bytes + 2**16, body_timeout=30.0,
                            idle_connection_timeout=60.0, decompress_request=False)
        server.add_sockets(sockets)
        bound = sockets[0].getsockname()[1]
        aio = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            aio.add_signal_handler(sig, self.request_shutdown, sig)
        watchdog = PeriodicCallback(self.check_heartbeats, HEARTBEAT_CHECK_MS)
        watchdog.start()
        capture = OutputCapture()
        capture.install()
        try:
            if announce is not None:
                announce(host, bound)
            await self._shutdown.wait()
            t0 = time.monotonic()
            server.stop()
            watchdog.stop()
            await asyncio.wrap_future(self._pool.submit(self.stop_all_jobs))
            for rec in self.jobs.values():  # answer pending long-polls with the final states
                rec.changed.notify_all()
            await asyncio.sleep(0.05)
            try:
                await asyncio.wait_for(server.close_all_connections(), 0.5)
            except asyncio.TimeoutError:
                log.info("some connections did not close in time")
            log.info("shut down in %.2f s", time.monotonic() - t0)
        finally:
            capture.uninstall()
            self._pool.shutdown(0.5)
            for sig in (signal.SIGTERM, signal.SIGINT):
                aio.remove_signal_handler(sig)

    def request_shutdown(self, sig: int | None = None) -> None:
        if self.closing:  # a second signal: the operator wants out now
            log.warning("second signal: exiting at once")
            os._exit(1)
        name = signal.Signals(sig).name if sig else "request"
        live = sum(not r.dispatcher.state.terminal for r in self.jobs.values())
        log.info("%s: stopping %d job(s) and shutting down", name, live)
        self.closing = True
        if self._shutdown is not None:
            self._shutdown.set()

    def stop_all_jobs(self) -> None:
        registry.stop_all(SHUTDOWN_POLICY, timeout=SHUTDOWN_BUDGET_S)
        left = [r.job_id for r in self.jobs.values() if not r.dispatcher.state.terminal]
        if left:
            log.error("jobs still not ended at shutdown: %s", ", ".join(left))
        # Everything was stopped within the budget; the runtime's own exit hook would wait again.
        atexit.unregister(registry.stop_all_at_exit)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.WARNING if status in (401, 403) or status >= 500 else logging.DEBUG
    if log.isEnabledFor(level):  # polls are frequent: format nothing when nobody listens
        log.log(level, "%d %s %.1f ms", status, handler._request_summary(), 1000 * handler.request.request_time())


# ---- request handlers ---------------------------------------------------------------


def _already_answered(*_: Any, **__: Any) -> None:
    """Stands in for an endpoint whose request was already refused mid-upload."""


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """Base of every endpoint: token first, then size, then (streamed) body; JSON errors."""

    manager: JobManager

    def initialize(self, manager: JobManager) -> None:
        self.manager = manager
        self._body = bytearray()
        self._refused = False

    def prepare(self) -> None:
        # Runs after the headers and before any of the body was read.
        self.manager.check_token(self.request.headers.get("Authorization"))
        length = self.request.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > self.manager.max_body_bytes:
            raise ProtocolError(413, "too_large", f"request body of {int(length)} bytes exceeds the limit of "
                                f"{self.manager.max_body_bytes} bytes")

    def data_received(self, chunk: bytes) -> None:
        if self._refused:
            return
        self._body.extend(chunk)
        if len(self._body) > self.manager.max_body_bytes:  # chunked uploads have no length upfront
            self._refused = True
            # The rest of the upload is discarded; the endpoint must not run on half a body.
            setattr(self, self.request.method.lower(), _already_answered)
            self._send_error_json(ProtocolError(413, "too_large", "request body exceeds the limit of "
                                                f"{self.manager.max_body_bytes} bytes"))

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def _send_error_json(self, err: ProtocolError) -> None:
        self.clear()
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        if err.status == 413:
            self.set_header("Connection", "close")
        self.finish(json.dumps(err.to_dict()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ProtocolError):
            err = exc
        elif isinstance(exc, tornado.web.HTTPError):
            code = {405: "method_not_allowed", 400: "bad_request"}.get(status_code, "http_error")
            err = ProtocolError(status_code, code, exc.log_message or self._reason)
            if status_code == 405:
                err = ProtocolError(405, code, f"{self.request.method} is not allowed on {self.request.path}")
        else:
            err = ProtocolError(500, "internal_error", f"{type(exc).__name__}: {exc}" if exc else self._reason)
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(err.to_dict()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (ProtocolError, tornado.web.HTTPError)):
            log.debug("%s refused: %s", self._request_summary(), value)
        else:
            super().log_exception(typ, value, tb)

    def number(self, name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ProtocolError(400, "bad_request",
                                f"query parameter {name!r} must be a number, got {raw!r:.40}") from None
        if not lo <= value <= hi:
            raise ProtocolError(400, "bad_request",
                                f"query parameter {name!r} must be in [{lo}, {hi}], got {raw!r:.40}")
        return value

    def no_body(self) -> None:
        if self._body:
            raise ProtocolError(400, "bad_request", f"{self.request.method} {self.request.path} takes no body")


class InfoHandler(ApiHandler):
    def get(self) -> None:
        from .. import __version__

        self.reply({"server": "sage-jobmanager", "protocol": protocol.PROTOCOL_VERSION,
                    "supported_versions": list(protocol.SUPPORTED_VERSIONS), "sage_jupyter": __version__,
                    "python": protocol.client_info()["python"], "pid": os.getpid(),
                    "started_at": self.manager.started_at, "jobs": len(self.manager.jobs),
                    "max_body_bytes": self.manager.max_body_bytes, "backends": list(protocol.BACKENDS)})


class JobsHandler(ApiHandler):
    def get(self) -> None:
        self.no_body()
        self.reply({"jobs": [r.status_reply() for r in self.manager.jobs.values()]})

    async def post(self) -> None:
        manager = self.manager
        if manager.closing:
            raise ProtocolError(503, "shutting_down", "the JobManager is shutting down; no new jobs")
        options, payload = protocol.decode_submission(self.body)
        dispatcher, output = await asyncio.wrap_future(manager._pool.submit(manager.build_job, options, payload))
        rec = manager.start_job(dispatcher, output, options)
        self.reply({"job_id": rec.job_id, **rec.status_reply()}, status=201)


class JobHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        """Status; with `wait` a long-poll until `until` holds: "change" (the version
        passed the client's `after`), "settled" (what wait() waits for) or "terminal"."""
        self.no_body()
        wait = self.number("wait", 0.0, 0.0, 3600.0)
        after = self.number("after", -1, -1, 2**62, int)
        until = self.get_query_argument("until", "change")
        if until not in WAIT_CONDITIONS:
            raise ProtocolError(400, "bad_request", f"query parameter 'until' must be one of "
                                f"{', '.join(WAIT_CONDITIONS)}, got {until!r:.40}")
        rec = self.manager.record(job_id)
        ready = {
            "change": lambda: rec.version > after or rec.dispatcher.state.terminal,
            "settled": rec.settled,
            "terminal": lambda: rec.dispatcher.state.terminal,
        }[until]
        if wait > 0:
            await self.manager.wait_for(rec, ready, wait)
        self.reply(rec.status_reply())


class StopHandler(ApiHandler):
    def post(self, job_id: str) -> None:
        rec = self.manager.record(job_id)
        rec.dispatcher.request_stop()
        self.reply(rec.status_reply())


class HeartbeatHandler(ApiHandler):
    def post(self, job_id: str) -> None:
        rec = self.manager.record(job_id)
        rec.last_heartbeat = time.monotonic()
        self.reply({"job_id": job_id, "state": rec.dispatcher.state.value})


class OutputHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        """Captured output after `since`; with `wait`, a long-poll for new text."""
        self.no_body()
        since = self.number("since", 0, 0, 2**62, int)
        wait = self.number("wait", 0.0, 0.0, 3600.0)
        rec = self.manager.record(job_id)
        out = rec.output

        def ready() -> bool:
            return out.next_seq > since or rec.dispatcher.state.terminal

        if wait > 0:
            await self.manager.wait_for(rec, ready, wait)
        terminal = rec.dispatcher.state.terminal  # read first: text written before the end is included
        chunks, next_seq = out.since(since)
        self.reply({"chunks": [list(c) for c in chunks], "next": next_seq,
                    "dropped_chars": out.dropped_chars, "done": terminal, "state": rec.dispatcher.state.value})


class UnknownEndpointHandler(ApiHandler):
    def _refuse(self, *_: Any) -> None:
        version = re.match(r"/api/v([^/]*)(/|$)", self.request.path)
        if version and version.group(1) not in {str(v) for v in protocol.SUPPORTED_VERSIONS}:
            raise ProtocolError(400, "bad_version", f"API version {version.group(1)!r:.20} is not supported; this "
                                f"JobManager speaks {', '.join(f'v{v}' for v in protocol.SUPPORTED_VERSIONS)} "
                                f"(paths start with {API_PREFIX}/)")
        raise ProtocolError(404, "unknown_endpoint", f"no endpoint {self.request.method} {self.request.path}; "
                            f"known: GET {API_PREFIX}/info, GET|POST {API_PREFIX}/jobs, GET {API_PREFIX}/jobs/ID, "
                            f"POST {API_PREFIX}/jobs/ID/stop, GET {API_PREFIX}/jobs/ID/output, "
                            f"POST {API_PREFIX}/jobs/ID/heartbeat")

    get = post = put = delete = patch = head = _refuse
