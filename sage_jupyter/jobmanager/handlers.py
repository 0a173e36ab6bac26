"""The JobManager's HTTP endpoints (tornado): authentication from the headers before a byte
of the body is read, JSON replies and JSON errors with the right status for everything, and
a log that never shows a query string (it may carry a token)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import Any, Callable

import tornado.web

from . import protocol
from .manager import WAIT_CONDITIONS, JobManager, JobRecord
from ..runtime.output import PAGE_CHARS
from ..runtime.peek import check_peek_args, merge_samples
from .protocol import API_PREFIX, ProtocolError

log = logging.getLogger("sage_jupyter.jobmanager")


def make_app(manager: JobManager) -> tornado.web.Application:
    args = {"manager": manager}
    v = API_PREFIX
    return tornado.web.Application(
        [
            (rf"{v}/info", InfoHandler, args),
            (rf"{v}/jobs", JobsHandler, args),
            (rf"{v}/jobs/([^/]+)", JobHandler, args),
            (rf"{v}/jobs/([^/]+)/stop", StopHandler, args),
            (rf"{v}/jobs/([^/]+)/output", OutputHandler, args),
            (rf"{v}/jobs/([^/]+)/heartbeat", HeartbeatHandler, args),
            (rf"{v}/jobs/([^/]+)/peek", PeekHandler, args),
        ],
        default_handler_class=UnknownEndpointHandler,
        default_handler_args=args,
        log_function=_log_request,
        compress_response=False,
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    status = handler.get_status()
    level = logging.WARNING if status in (401, 403) or status >= 500 else logging.DEBUG
    if log.isEnabledFor(level):  # polls are frequent: format nothing when nobody listens
        log.log(level, "%d %s %.1f ms", status, redacted_summary(handler.request),
                1000 * handler.request.request_time())


def redacted_summary(request: Any) -> str:
    """`GET /api/v1/jobs?<redacted> (127.0.0.1)`: a query string may carry a token, so no log shows one."""
    query = "?<redacted>" if request.query else ""
    return f"{request.method} {request.path}{query} ({request.remote_ip})"


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
        if length is not None and not re.fullmatch(r"[0-9]{1,18}", length.strip()):
            raise ProtocolError(400, "bad_request",
                                f"Content-Length must be a whole number of bytes, got {length!r:.40}")
        if length is not None and int(length) > self.manager.max_body_bytes:
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

    def _request_summary(self) -> str:
        return redacted_summary(self.request)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (ProtocolError, tornado.web.HTTPError)):
            log.debug("%s refused: %s", self._request_summary(), value)
        else:  # not tornado's own: it would log the request's full URL
            log.error("uncaught exception in %s", self._request_summary(), exc_info=(typ, value, tb))

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
                    "max_connections": self.manager.max_connections,
                    "max_body_bytes": self.manager.max_body_bytes, "backends": list(protocol.BACKENDS)})


class JobsHandler(ApiHandler):
    def get(self) -> None:
        self.no_body()
        self.reply({"jobs": self.manager.list_replies()})

    async def post(self) -> None:
        manager = self.manager
        if manager.closing:
            raise ProtocolError(503, "shutting_down", "the JobManager is shutting down; no new jobs")
        options, payload = protocol.decode_submission(self.body)
        dispatcher, output = await asyncio.wrap_future(manager.pool.submit(manager.build_job, options, payload))
        rec = manager.start_job(dispatcher, output, options)
        self.reply({"job_id": rec.job_id, **rec.status_reply()}, status=201)


class JobHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        """Status; with `wait` a long-poll until `until` holds: "change" (the version
        passed the client's `after`), "settled" (what wait() waits for) or "terminal"."""
        self.no_body()
        wait = self.number("wait", 0.0, 0.0, 3600.0)
        after = self.number("after", -1, -1, 2**62, int)
        output_since = self.number("output_since", -1, -1, 2**62, int)
        until = self.get_query_argument("until", "change")
        if until not in WAIT_CONDITIONS:
            raise ProtocolError(400, "bad_request", f"query parameter 'until' must be one of "
                                f"{', '.join(WAIT_CONDITIONS)}, got {until!r:.40}")
        if job_id not in self.manager.jobs:  # an ended job known from the history: it changes no more
            past = dict(self.manager.status_reply(job_id))
            if output_since >= 0:
                past["output"] = {"chunks": [], "next": output_since, "more": False, "missed": 0,
                                  "dropped_chars": 0, "done": True, "state": past["status"]["state"]}
            self.reply(past)
            return
        rec = self.manager.record(job_id)
        condition: Callable[[], bool] = {
            "change": lambda: rec.version > after or rec.dispatcher.state.terminal,
            "settled": rec.settled,
            "terminal": lambda: rec.dispatcher.state.terminal,
        }[until]

        def ready() -> bool:
            return condition() or (output_since >= 0 and rec.output.next_seq > output_since)

        if wait > 0:
            await self.manager.wait_for(rec, ready, wait)
        page = output_page(rec, output_since) if output_since >= 0 else None
        reply = rec.status_reply()
        if page is not None:
            reply["output"] = page
        self.reply(reply)


class StopHandler(ApiHandler):
    def post(self, job_id: str) -> None:
        if job_id not in self.manager.jobs:  # ended before a restart: nothing to stop
            self.reply(self.manager.status_reply(job_id))
            return
        rec = self.manager.record(job_id)
        rec.dispatcher.request_stop()
        self.reply(rec.status_reply())


class HeartbeatHandler(ApiHandler):
    def post(self, job_id: str) -> None:
        rec = self.manager.record(job_id)
        rec.last_heartbeat = time.monotonic()
        self.reply({"job_id": job_id, "state": rec.dispatcher.state.value})


class PeekHandler(ApiHandler):
    def get(self, job_id: str) -> None:
        """The newest records of each stage (`JobHandle.peek`): `stage` picks one, `n` (default 5)
        how many."""
        self.no_body()
        n = self.number("n", 5, 0, 10_000, int)
        stage = self.get_query_argument("stage", None)
        try:
            if job_id in self.manager.jobs:
                peeked = self.manager.record(job_id).dispatcher.peek(stage, n)
            else:  # ended before the daemon restarted: its stages are known, its records are not
                labels = [s["name"] for s in self.manager.status_reply(job_id)["status"].get("stages", ())]
                check_peek_args(stage, n, labels)
                peeked = merge_samples(labels, [], stage, n)
        except KeyError as exc:
            raise ProtocolError(404, "unknown_stage", str(exc.args[0])) from None
        self.reply({"job_id": job_id, "peek": peeked})


class OutputHandler(ApiHandler):
    async def get(self, job_id: str) -> None:
        """A page of the captured output from `since`; with `wait`, a long-poll for new text.
        `more` says the next page is already there; `missed` counts chunks dropped unread."""
        self.no_body()
        since = self.number("since", 0, 0, 2**62, int)
        wait = self.number("wait", 0.0, 0.0, 3600.0)
        rec = self.manager.record(job_id)
        out = rec.output

        def ready() -> bool:
            return out.next_seq > since or rec.dispatcher.state.terminal

        if wait > 0:
            await self.manager.wait_for(rec, ready, wait)
        self.reply(output_page(rec, since))


def output_page(rec: JobRecord, since: int) -> dict[str, Any]:
    """One page (at most PAGE_CHARS) of a job's output from `since`: a reply that stays small,
    so serving a chatty job's whole output never holds up the other requests."""
    out = rec.output
    terminal = rec.dispatcher.state.terminal  # read first: text written before the end is included
    chunks, next_seq, missed = out.since(since, PAGE_CHARS)
    more = next_seq < out.next_seq
    return {"chunks": [list(c) for c in chunks], "next": next_seq, "more": more, "missed": missed,
            "dropped_chars": out.dropped_chars, "done": terminal and not more, "state": rec.dispatcher.state.value}


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
                            f"GET {API_PREFIX}/jobs/ID/peek, "
                            f"POST {API_PREFIX}/jobs/ID/heartbeat")

    get = post = put = delete = patch = head = _refuse
